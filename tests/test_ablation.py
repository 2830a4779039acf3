"""experiments/ablation.py --tiny: the real training loop and sweep, table, plot and command.

The fast test trains one grid cell (π = residual, x0) with two seeds at the shapes of
configs/demo.py:tiny, so in a full test run it shares the compiled train step and samplers with the
other tests; the slow one adds the πε objective and π = 0.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from experiments import ablation
from tests.helpers import assert_line_plot


def _check_outputs(out: str, result: dict, cells: set[tuple[str, str]],
                   nfes: tuple[str, ...]) -> list[dict]:
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    assert {(r["pi"], r["objective"], r["seed"], r["nfe"]) for r in rows} == {
        (p, o, s, n) for p, o in cells for s in ("0", "1") for n in nfes}
    assert {"inpaint/psnr", "noise/ssim", "inpaint/psnr_baseline",
            "noise/ssim_input"} <= set(rows[0])
    for s in result["summary"]:  # mean ± half-range really over the two seeds' rows
        mine = [float(r["psnr"]) for r in rows if (r["pi"], r["objective"], int(r["nfe"]))
                == (s["pi"], s["objective"], s["nfe"])]
        assert s["seeds"] == 2 and s["psnr_mean"] == pytest.approx(np.mean(mine), abs=1e-9)
        assert s["psnr_spread"] == pytest.approx((max(mine) - min(mine)) / 2, abs=1e-9)
    md = open(os.path.join(out, "table.md")).read()
    assert all(f"| {p} | {o} |" in md for p, o in cells)
    assert f"NFE {nfes[-1]}" in md and "31.04" in md
    # 3 scopes × 2
    assert md.count("| classical baseline | — |") == md.count("| degraded input | — |") == 6
    assert "**PSNR, task inpaint**" in md
    # 10 × 3.8 in at 120 dpi, one line per cell in each panel
    assert_line_plot(os.path.join(out, "ablation.png"), size=(1200, 456), lines=len(cells))
    assert open(os.path.join(out, "command.txt")).read().startswith(
        "python -m experiments.ablation --out-dir " + out + " --tiny")
    return rows


@pytest.mark.slow  # trains 2 seeds × 2 tasks: ~40 s with a cold compilation cache (CI budget)
def test_tiny_ablation_writes_table_plot_and_command(tmp_path):
    out = str(tmp_path / "abl")
    argv = ["--out-dir", out, "--tiny", "--pi", "residual", "--objective", "x0", "--seeds", "0,1",
            "--nfe", "1,2"]
    result = ablation.main(argv)
    rows = _check_outputs(out, result, {("residual", "x0")}, ("1", "2"))
    assert rows[0]["psnr"] != rows[2]["psnr"]  # the seeds really differ (init, data)
    # resumable: a second run trains nothing new (every workdir holds its final checkpoint)
    again = ablation.main(argv)
    assert [r["psnr"] for r in again["rows"]] == [r["psnr"] for r in result["rows"]]
    md = open(os.path.join(out, "table.md")).read()
    assert "2 of 2 cells were trained by an earlier invocation" in md
    # both runs listed
    assert open(os.path.join(out, "command.txt")).read().count("trained 2 of 2 cells") == 1


def test_degenerate_cell_is_listed_as_refused(tmp_path):
    out = str(tmp_path / "abl")
    result = ablation.main(["--out-dir", out, "--tiny", "--pi", "zero", "--objective", "pi_eps"])
    assert result["refused"] == [("zero", "pi_eps")] and result["rows"] == []
    assert "π = zero with objective pi_eps: refused" in open(os.path.join(out, "table.md")).read()


@pytest.mark.slow
def test_tiny_ablation_over_pi_and_objectives(tmp_path):
    out = str(tmp_path / "abl")
    result = ablation.main(["--out-dir", out, "--tiny", "--pi", "residual,zero", "--objective",
                            "x0,pi_eps", "--seeds", "0,1", "--nfe", "1,2"])
    assert result["refused"] == [("zero", "pi_eps")]
    _check_outputs(out, result, {("residual", "x0"), ("residual", "pi_eps"), ("zero", "x0")},
                   ("1", "2"))


def test_t_sampling_names_the_cell_and_reaches_the_config():
    """--t-sampling is read by training: a non-default draw gets its own workdir and config key."""
    for flag, suffix in (("uniform", "one_precond_s0"), ("weighted", "one_precond_tweighted_s0")):
        args = ablation.parser().parse_args(["--out-dir", "x", "--t-sampling", flag])
        assert ablation.cell_name("one", "precond", 0, args) == suffix
        c = ablation.make_config("one", "precond", 0, [1, 2], 2, True)
        ablation.apply_options(c, args, "0.5")
        assert c.train.t_sampling == flag


def test_fuse_is_a_sampling_option_of_the_cell():
    """--fuse reaches sample.fuse and keeps the trained cell's workdir (fusion changes no
    training)."""
    args = ablation.parser().parse_args(["--out-dir", "x", "--fuse"])
    assert ablation.cell_name("one", "residual", 0, args) == "one_residual_s0"
    c = ablation.make_config("one", "residual", 0, [1, 2], 2, True)
    ablation.apply_options(c, args, "inpaint=0.6,noise=0.2")
    assert c.sample.fuse and c.bridge.sigma_data == "inpaint=0.6,noise=0.2"


@pytest.mark.slow  # trains one tiny cell, then the sweep and the per-step diagnostic
def test_tiny_fused_ablation_with_measured_error_and_per_step(tmp_path):
    """--fuse --fuse-sigma error --per-step: the cell's own x̂0 error per task reaches
    sample.fuse_sigma, and per_step.csv / table.md hold every (task, t) of the NFE-10 grid."""
    out = str(tmp_path / "abl")
    result = ablation.main(["--out-dir", out, "--tiny", "--pi", "one", "--objective", "residual",
                            "--seeds", "0", "--fuse", "--fuse-sigma", "error", "--per-step"])
    assert {r["objective"] for r in result["rows"]} == {"residual_fuse_err"}
    steps = list(csv.DictReader(open(os.path.join(out, "per_step.csv"))))
    assert {(r["task"], int(r["t"])) for r in steps} == {
        (task, t) for task in ("inpaint", "noise") for t in range(99, 0, -10)}
    md = open(os.path.join(out, "table.md")).read()
    assert "**Per-step diagnostic**" in md and "| one | residual_fuse_err | noise |" in md
    with open(os.path.join(out, "runs", "one_residual_s0", "config.json")) as f:
        assert json.load(f)["sample"]["fuse"] is True


def test_a_cell_is_the_demo_recipe():
    """make_config takes configs/demo.py's recipe (network, crops, optimiser, batch, the inpainting
    task) instead of restating it; only NOT_FROM_DEMO comes from configs/default.py."""
    from tests.helpers import config

    demo, default = config("demo", None), config("default", None)
    c = ablation.make_config("residual", "x0", 0, [1, 2], 1000, False)
    assert c.optim == demo.optim and c.model.size == demo.model.size
    assert (c.data.crop_size, c.train.batch_size) == (demo.data.crop_size, demo.train.batch_size)
    for key in ("degradation", "mask_min_ratio", "mask_max_ratio"):
        assert c.data.tasks.inpaint.train[key] == demo.data.tasks.main.train[key]
    for key in ablation.NOT_FROM_DEMO:
        section, name = key.split(".")
        if key != "bridge.parameterization":  # the cell's objective
            assert c[section][name] == default[section][name], key
