"""experiments/overfit.py: a network memorising one fixed batch must show it in the sampler's
restoration (the chain from the loss to the restored photo), and a misread output must not."""
from __future__ import annotations

import csv

import pytest

from experiments import overfit
from rdbm_jax.errors import ConfigError
from tests.helpers import CONFIGS, config

STEPS = 50  # the tiny config gains ~7 dB on its batch by here (EPYC, 40 steps: +5.5)
# 3 dB = half the squared error of the pre-fill inside the holes, under half the gain a working
# chain makes. A broken chain gains nothing (a sampler that drops the output stays at the
# pre-fill: +0) or loses (a misread output, below: the control below).
MEMORISED_DB = 3.0


def _tiny():
    cfg = config()
    cfg.train.num_steps = STEPS
    return cfg


def test_a_memorised_batch_shows_in_the_nfe1_restoration_and_in_its_loss_and_is_written(
        tmp_path):
    cfg = _tiny()
    last_t = cfg.bridge.num_timesteps - 1
    rows = overfit.train_on_pool(cfg, STEPS, STEPS, pool=1, held_out=1, loss_ts=(0, last_t))
    first, last = rows[0], rows[-1]
    # a zero output restores the pre-fill whatever x_t shows: the same loss at every t, the L1
    # error of the pre-fill (x_t meets only the zero kernel of the output conv)
    assert first["loss_t0"] == first[f"loss_t{last_t}"] > 0
    # one memorised batch: its loss falls at both ends (at t = T − 1 from its condition alone)
    assert last["loss_t0"] < first["loss_t0"] and last[f"loss_t{last_t}"] < first["loss_t0"]
    assert [r["step"] for r in rows] == [0, STEPS]
    for name in overfit.SETS:
        # zero-initialised output + residual parameterisation: x̂0 is the pre-fill, exactly
        assert first[f"{name}_raw"] == first[f"{name}_ema"] == first[f"{name}_prefill"]
        assert min(first[f"{name}_prefill"], first[f"{name}_biharmonic"]) > first[f"{name}_input"]
    # the held-out batch is other crops than the pool's
    assert first["held_prefill"] != first["pool_prefill"]
    assert last["pool_raw"] >= last["pool_prefill"] + MEMORISED_DB
    overfit.write(str(tmp_path), rows, "about: a test machine")
    with open(tmp_path / "overfit.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == list(overfit.columns((0, last_t)))
    assert [int(r["step"]) for r in back] == [0, STEPS]
    assert abs(float(back[-1]["pool_raw"]) - last["pool_raw"]) < 1e-4
    assert abs(float(back[-1]["loss_t0"]) - last["loss_t0"]) < 1e-4
    text = (tmp_path / "summary.md").read_text()
    assert "about: a test machine" in text and f"| {STEPS} |" in text
    assert f"loss at t = {last_t}" in text


def test_an_output_read_by_another_rule_does_not_restore_the_batch():
    # the negative control: the same training, the sampler reading the output as x̂0 itself
    misread = config()
    misread.bridge.parameterization = "x0"
    rows = overfit.train_on_pool(_tiny(), STEPS, STEPS, pool=1, held_out=1, sampler_cfg=misread)
    assert rows[-1]["pool_raw"] < rows[-1]["pool_prefill"]


def test_a_pool_is_cycled_and_bad_arguments_are_one_line():
    batches = overfit.fixed_batches(_tiny(), 3)
    assert len(batches) == 3 and not (batches[0]["x0"] == batches[1]["x0"]).all()
    assert overfit.joined(batches)["x0"].shape[0] == 3 * batches[0]["x0"].shape[0]
    with pytest.raises(ConfigError, match="--pool"):
        overfit.train_on_pool(_tiny(), 1, 1, pool=0)
    unfilled = _tiny()
    unfilled.model.condition = "mu_mask"
    with pytest.raises(ConfigError, match="model.condition"):
        overfit.train_on_pool(unfilled, 1, 1)


def test_the_command_line_refuses_a_bad_setting_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    for bad in (["--set", "train.no_such_key=1"], ["--set", "train.t_sampling=sideways"],
                ["--steps", "0"]):
        with pytest.raises(ConfigError) as e:
            overfit.main(["--out-dir", str(out), "--config", f"{CONFIGS}/demo.py:tiny", *bad])
        assert "\n" not in str(e.value)
    assert not out.exists()


def test_bad_fixed_steps_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    for bad, says in (("0,x", "--loss-at-t"), ("0,99,100", "bridge.num_timesteps")):
        with pytest.raises(ConfigError, match=says) as e:
            overfit.main(["--out-dir", str(out), "--config", f"{CONFIGS}/demo.py:tiny",
                          "--loss-at-t", bad])
        assert "\n" not in str(e.value)
    assert not out.exists()
