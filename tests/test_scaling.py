"""experiments/scaling.py (issue 28): the fit, plot, report and resume logic on synthetic rows
(fast), and the whole pipeline on configs/demo.py:tiny shapes with tiny budgets (the real loop)."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import report, results_csv, scaling, scaling_fit
from experiments.scaling_study import FIELDS, NUMERIC, STUDY
from rdbm_jax.errors import ConfigError, DataError, TrainingError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(conf: str, steps: list[int], gain_bih, gain_fill, sizes=(128, 256), crop=64,
          prefill=True, nfes=(1, 10)) -> list[dict]:
    """Synthetic result rows: biharmonic 20 dB, the model `gain_bih(log2 images)` above it."""
    out = []
    for s in steps:
        x = math.log2(s * 8)
        for size in sizes:
            model = 20.0 + gain_bih(x) + 0.1 * (size == 256)
            row = {k: math.nan for k in NUMERIC}
            row.update(config=conf, steps=s, budget=s / steps[0], images_seen=s * 8,
                       pixels_seen=s * 8 * crop ** 2, train_cpu_s=s * 0.5, eval_cpu_s=10.0,
                       size=size, input=3.5, biharmonic=20.0 + 0.1 * (size == 256),
                       prefill=(model - gain_fill(x)) if prefill else math.nan,
                       settings="abc", commit="c0ffee", machine="2-core x86_64 CPU",
                       utc="2026-12-06 20:00")
            for n in nfes:
                row[f"model_nfe{n}"] = model - 0.05 * (n == 1)
            out.append(row)
    return out


def test_line_fit_matches_scipy_and_the_budget_solves_the_line():
    rng = np.random.default_rng(0)
    x = np.log2([12000, 24000, 48000, 96000, 192000])
    y = -0.4 + 0.09 * x + rng.normal(0, 0.03, x.size)
    f = scaling_fit.line_fit(x, y)
    ref = stats.linregress(x, y)  # an independent implementation of OLS and the slope's SE
    assert f["b"] == pytest.approx(ref.slope, rel=1e-9)
    assert f["a"] == pytest.approx(ref.intercept, rel=1e-9)
    assert f["se_b"] == pytest.approx(ref.stderr, rel=1e-9)
    assert f["cov"][0, 0] == pytest.approx(ref.intercept_stderr ** 2, rel=1e-9)
    need, se = scaling_fit.budget_for(f)
    assert f["a"] + f["b"] * need == pytest.approx(1.0, abs=1e-9)
    # the delta-method SE against a finite-difference gradient of (1 − a)/b
    h = 1e-6
    g = np.array([((1 - f["a"] - h) / f["b"] - (1 - f["a"] + h) / f["b"]) / (2 * h),
                  ((1 - f["a"]) / (f["b"] + h) - (1 - f["a"]) / (f["b"] - h)) / (2 * h)])
    assert se == pytest.approx(math.sqrt(g @ f["cov"] @ g), rel=1e-5)
    value, value_se = scaling_fit.predict(f, 23.0)
    assert value == pytest.approx(ref.intercept + ref.slope * 23.0, rel=1e-9)
    n, xm = x.size, x.mean()  # the textbook SE of the mean response
    s = math.sqrt(np.sum((y - ref.intercept - ref.slope * x) ** 2) / (n - 2))
    assert value_se == pytest.approx(
        s * math.sqrt(1 / n + (23.0 - xm) ** 2 / np.sum((x - xm) ** 2)), rel=1e-9)


def test_line_fit_edge_cases():
    two = scaling_fit.line_fit(np.array([1.0, 2.0]), np.array([0.1, 0.3]))
    assert two["b"] == pytest.approx(0.2) and math.isnan(two["se_b"])  # no residual dof
    flat = scaling_fit.line_fit(np.array([1.0, 2.0, 3.0]), np.array([0.3, 0.2, 0.1]))
    assert scaling_fit.budget_for(flat)[0] == math.inf  # falling: never reaches +1 dB
    assert math.isnan(scaling_fit.line_fit(np.array([1.0]), np.array([1.0]))["b"])


def test_fits_per_configuration_size_and_reference():
    rows = (_rows("T64", [1500, 3000, 6000, 12000], lambda x: -1.0 + 0.1 * x, lambda x: 0.05 * x)
            + _rows("paper_pi1", [1000, 2000, 4000], lambda x: -3 + 0.2 * x, lambda x: 0,
                    prefill=False, nfes=(1, 2, 10)))
    fitted = scaling_fit.fits(rows)
    keys = {(f["config"], f["size"], f["reference"], f["nfe"]) for f in fitted}
    # no pre-fill, no fit against it; NFE 1 and the largest NFE each
    assert keys == {("T64", s, r, n) for s in (128, 256) for r in ("biharmonic", "prefill")
                    for n in (1, 10)} | {("paper_pi1", s, "biharmonic", n) for s in (128, 256)
                                         for n in (1, 10)}
    one = {(f["config"], f["size"], f["reference"]): f for f in fitted if f["nfe"] == 1}
    assert one[("T64", 128, "biharmonic")]["intercept_db"] == pytest.approx(-1.05)  # 0.05 lower
    t = {(f["config"], f["size"], f["reference"]): f for f in fitted if f["nfe"] == 10}
    f = t[("T64", 128, "biharmonic")]
    assert f["slope_db_per_doubling"] == pytest.approx(0.1) and f["nfe"] == 10
    assert f["points"] == 4 and f["slope_se"] == pytest.approx(0.0, abs=1e-9)
    assert f["log2_images_for_1db"] == pytest.approx(20.0)  # −1 + 0.1 x = 1
    # the paper's images (10⁷) and its pixels (10⁷ × (256/64)² crops of 64²)
    assert f["gain_at_paper_images"] == pytest.approx(-1 + 0.1 * math.log2(1e7))
    assert f["gain_at_paper_pixels"] == pytest.approx(-1 + 0.1 * math.log2(1.6e8))
    assert t[("T64", 256, "prefill")]["slope_db_per_doubling"] == pytest.approx(0.05)


def test_plot_has_a_line_per_configuration_in_every_panel(tmp_path):
    rows = (_rows("T64", [1500, 3000], lambda x: 0.1 * x, lambda x: 0.1)
            + _rows("paper_pi1", [1000, 2000], lambda x: 0.1, lambda x: 0, prefill=False))
    fig = scaling_fit.figure(rows)
    axes = fig.axes
    assert len(axes) == 4  # 2 references × 2 sizes
    # minus the zero line: per configuration NFE 10 (solid) and NFE 1 (dashed)
    assert [len(ax.get_lines()) - 1 for ax in axes] == [4, 4, 2, 2]
    styles = {line.get_label(): line.get_linestyle() for line in axes[0].get_lines()
              if "NFE" in line.get_label()}
    assert styles == {"T64 (NFE 10)": "-", "T64 (NFE 1)": "--", "paper_pi1 (NFE 10)": "-",
                      "paper_pi1 (NFE 1)": "--"}
    assert all(ax.get_xscale() == "log" for ax in axes)
    scaling_fit.plot(rows, str(tmp_path / "p.png"))
    assert open(tmp_path / "p.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_results_csv_round_trip_and_refusals(tmp_path):
    path = str(tmp_path / "s.csv")
    rows = _rows("T64", [1500], lambda x: 0.1, lambda x: 0.1, sizes=(128,))
    results_csv.append_rows(path, FIELDS, [], rows)
    back = results_csv.read_rows(path, FIELDS, NUMERIC)
    assert back[0]["model_nfe10"] == pytest.approx(rows[0]["model_nfe10"])
    assert math.isnan(back[0]["model_nfe2"])  # not measured: an empty cell, read back as NaN
    text = open(path).read()
    open(path, "w").write(text.replace(",3.5,", ",x,"))
    with pytest.raises(DataError, match=r"s\.csv, line 2: input='x'"):
        results_csv.read_rows(path, FIELDS, NUMERIC)
    open(path, "w").write("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"s\.csv: not this experiment's"):
        results_csv.read_rows(path, FIELDS, NUMERIC)
    assert open(path).read() == "a,b\n1,2\n"  # a foreign file is never rewritten


def test_schedule_runs_the_cheapest_points_first():
    order = scaling.schedule(list(STUDY), tiny=False)
    cost = [c.cpu_per_step * p for c, p in order]
    assert cost == sorted(cost) and len(order) == sum(len(c.points) for c in STUDY)
    names = [c.name for c, _ in order]
    # every paper-faithful point comes before the first of T128 (the dearest per step)
    paper = [i for i, n in enumerate(names) if n.startswith("paper")]
    assert len(paper) == 6 and max(paper) < names.index("T128")
    assert names[-1] == "T128"  # its 4× point costs the most of all


def test_rerun_refuses_results_of_other_settings_and_a_bad_cpu_file(tmp_path):
    out = tmp_path / "out"
    rows = _rows("T64", [2], lambda x: 0.1, lambda x: 0.1, sizes=(32,))  # settings "abc"
    results_csv.append_rows(str(out / "scaling.csv"), FIELDS, [], rows)
    args = scaling.parser().parse_args(["--out-dir", str(out), "--tiny", "--configs", "T64"])
    with pytest.raises(ConfigError, match="T64 was measured with other settings"):
        scaling.run_study(args)
    with pytest.raises(ConfigError, match="--configs: unknown"):
        scaling.run_study(scaling.parser().parse_args(["--out-dir", str(out), "--configs", "X"]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / scaling.CPU_FILE).write_text('{"500": "nan"}')
    with pytest.raises(DataError, match="study_cpu.json"):
        scaling.read_cpu(str(tmp_path / "run"))
    (tmp_path / "run" / "config.json").write_text("{")
    with pytest.raises(DataError, match=r"run/config\.json: unreadable"):
        scaling.check_workdir(scaling.make_config(STUDY[2], tiny=True), str(tmp_path / "run"))
    (tmp_path / "run" / "config.json").write_text('{"model": {"size": "B"}}')
    with pytest.raises(ConfigError, match="trained with another config"):
        scaling.check_workdir(scaling.make_config(STUDY[2], tiny=True), str(tmp_path / "run"))
    # the command line: one line, exit 2, nothing written
    proc = subprocess.run([sys.executable, "-m", "experiments.scaling", "--out-dir", str(out),
                           "--tiny", "--configs", "T64"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "other settings" in proc.stderr and not (out / "runs").exists()


def test_report_has_the_method_and_every_point(tmp_path):
    empty = report.markdown([], [])
    assert "## Method" in empty and "No point measured yet." in empty
    assert all(f"| {c.name} |" in empty for c in STUDY)
    rows = _rows("T64", [1500, 3000, 6000], lambda x: -1 + 0.1 * x, lambda x: 0.05 * x)
    md = report.markdown(rows, scaling_fit.fits(rows))
    assert md.count("| T64 | 1500 |") == 2 and "### Fitted trends" in md
    assert "+0.100 ± 0.000" in md and "2^20.0" in md


def test_tiny_study_end_to_end_resumes_and_fits(tmp_path):
    """configs/demo.py:tiny shapes, points at steps 2 and 4, 32 px: the real loop and sampler."""
    out, runs = str(tmp_path / "out"), str(tmp_path / "runs")
    argv = ["--out-dir", out, "--runs-dir", runs, "--tiny", "--configs", "T64"]
    first = scaling.main(argv + ["--max-points", "1"])
    assert first == {"evaluated": [("T64", 2)], "trained": [("T64", 2)]}
    assert scaling.latest_step(os.path.join(runs, "T64")) == 2  # paused at the point
    os.remove(os.path.join(out, "scaling.csv"))  # the row lost, the checkpoint kept
    again = scaling.main(argv + ["--max-points", "1"])
    assert again == {"evaluated": [("T64", 2)], "trained": []}  # re-scored, not retrained
    rest = scaling.main(argv)
    assert rest == {"evaluated": [("T64", 4)], "trained": [("T64", 4)]}  # resumed from step 2
    assert scaling.main(argv) == {"evaluated": [], "trained": []}  # all done: nothing runs
    rows = results_csv.read_rows(os.path.join(out, "scaling.csv"), FIELDS, NUMERIC)
    assert [(r["steps"], r["size"]) for r in rows] == [(2, 32), (4, 32)]
    assert 0 < rows[0]["train_cpu_s"] < rows[1]["train_cpu_s"]  # counted across processes
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("input", "biharmonic", "prefill", "model_nfe1",
                                                 "model_nfe10"))
        assert r["input"] < r["biharmonic"] and r["images_seen"] == r["steps"] * 2
    docs = str(tmp_path / "docs" / "scaling.md")
    os.makedirs(os.path.dirname(docs))
    fit = scaling.main(["--out-dir", out, "--fit", "--docs", docs])
    assert {(f["config"], f["reference"]) for f in fit["fits"]} == {("T64", "biharmonic"),
                                                                     ("T64", "prefill")}
    assert os.path.exists(os.path.join(out, "fit.csv"))
    assert os.path.exists(os.path.join(out, "scaling.png"))
    assert os.path.exists(os.path.join(tmp_path, "docs", "scaling.png"))
    assert "| T64 | 4 |" in open(docs).read()


def test_holes_cli_scores_a_trained_workdir_beside_its_prefill(trained_run, capsys):
    """`python -m experiments.holes` on a real (tiny) checkpoint: one row per size, the model at
    each NFE beside its own pre-fill, biharmonic and the input, the differences consistent."""
    from experiments import holes

    text = holes.main(["--config", "configs/demo.py:tiny", "--workdir", trained_run,
                       "--sizes", "32,48", "--nfes", "1,2"])
    assert text in capsys.readouterr().out
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [r[0] for r in rows] == ["| 32 px", "| 48 px"]
    for r in rows:
        nfe2, prefill, bih, inp = (float(v) for v in r[2:6])
        assert inp < bih and inp < prefill  # filling the holes beats leaving them white
        assert float(r[6]) == pytest.approx(nfe2 - prefill, abs=0.011)  # rounded to 0.01 each
        assert float(r[7].rstrip(" |")) == pytest.approx(nfe2 - bih, abs=0.011)


def test_holes_cli_reads_the_saved_config_and_scores_with_a_sampling_setting(trained_run, capsys):
    """Without --config the run's own saved config is scored; --set changes a sampling setting
    (the NFE-1 column is the same network's, so it is unchanged by an η that only acts from the
    second step); a key outside sample.* or without '=' is refused in one line."""
    from experiments import holes

    args = ["--workdir", trained_run, "--sizes", "32", "--nfes", "1"]
    plain = holes.main(args)
    fused_off = holes.main(args + ["--set", "sample.fuse=False"])
    out = capsys.readouterr().out
    assert f"its saved config at {trained_run}:" in out
    assert f"its saved config at {trained_run}, sample.fuse=False:" in out
    assert plain.splitlines()[2] == fused_off.splitlines()[2]  # NFE 1: x̂0 of x_T = μ, fused or not
    assert holes.parse_setting("sample.eta=0.5") == ("sample.eta", 0.5)
    assert holes.parse_setting("sample.fuse_sigma=") == ("sample.fuse_sigma", "")
    with pytest.raises(ConfigError, match="--set train.num_steps: only sample"):
        holes.main(args + ["--set", "train.num_steps=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        holes.parse_setting("sample.eta")


def test_cpu_time_is_counted_at_a_last_step_off_the_checkpoint_cadence(tmp_path):
    """A run whose last step is not a multiple of train.checkpoint_every (an equal-cost recipe:
    825 steps, checkpoints every 500) still gets its CPU time at that step."""
    from experiments import recipes
    cfg = recipes.fold_config("demo", 0, 3, tiny=True)
    cfg.train.checkpoint_every = 2  # checkpoints at 2 and, the last step, 3
    cpu, ran = scaling.train_to(cfg, str(tmp_path), 3)
    assert ran and math.isfinite(cpu) and cpu > 0
    assert sorted(scaling.read_cpu(str(tmp_path))) == [2, 3]
    assert scaling.train_to(cfg, str(tmp_path), 3) == (cpu, False)  # done: nothing trains


def test_cpu_time_is_counted_at_a_checkpoint_a_stop_signal_saved(tmp_path, monkeypatch):
    """SIGTERM saves a checkpoint at the step it lands on, off the cadence and after the hooks
    ran: its CPU time is recorded too, so a resumed run counts on from it; a checkpoint with no
    count leaves the points after it without CPU time (NaN), never with a partial count."""
    import signal

    from experiments import recipes
    cfg = recipes.fold_config("demo", 0, 4, tiny=True)
    cfg.train.checkpoint_every = 4
    real = scaling.train.train_and_evaluate

    def stopped_at_step_1(cfg, workdir, hooks=()):
        def stop(step, state):
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # the trainer saves step 1 and returns
        return real(cfg, workdir, hooks=[*hooks, stop])

    monkeypatch.setattr(scaling.train, "train_and_evaluate", stopped_at_step_1)
    with pytest.raises(TrainingError, match="stopped at step 1 before the point 4"):
        scaling.train_to(cfg, str(tmp_path / "a"), 4)
    monkeypatch.undo()
    first = scaling.read_cpu(str(tmp_path / "a"))
    assert list(first) == [1] and first[1] > 0
    cpu, ran = scaling.train_to(cfg, str(tmp_path / "a"), 4)
    assert ran and cpu > first[1]  # counted on from step 1's count
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.remove(tmp_path / "b" / scaling.CPU_FILE)
    cfg.train.num_steps = 6  # a longer schedule, resumed from step 4 whose count is gone
    cfg.train.checkpoint_every = 2
    cpu, ran = scaling.train_to(cfg, str(tmp_path / "b"), 6)
    assert ran and math.isnan(cpu) and scaling.read_cpu(str(tmp_path / "b")) == {}


def test_settings_hash_ignores_only_the_sections_no_experiment_reads():
    """A recorded row's settings hash moves with every key that makes its numbers and with the
    experiment's own settings, not with --mode=sweep's or --mode=app's defaults."""
    from rdbm_jax import config as config_lib
    from tests.helpers import config

    base = results_csv.settings_hash(config(), (128,), 10)
    assert results_csv.settings_hash(config(), (128,), 10) == base
    for key, value in (("sweep.eta", "0,0.5"), ("sweep.nfe", "3"), ("app.port", 8000)):
        assert results_csv.settings_hash(config_lib.put(config(), {key: value}), (128,), 10) == base
    for key, value in (("sample.num_steps", 3), ("model.condition", "mu_mask_fill"),
                       ("train.num_steps", 7), ("data.crop_size", 48)):
        assert results_csv.settings_hash(config_lib.put(config(), {key: value}), (128,), 10) != base
    assert results_csv.settings_hash(config(), (256,), 10) != base
    assert results_csv.settings_hash(config(), (128,), 1) != base
