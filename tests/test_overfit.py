"""experiments/overfit.py: a network memorising one fixed batch must show it in the sampler's
restoration (the chain from the loss to the restored photo), and a misread output must not."""
from __future__ import annotations

import csv

from experiments import overfit
from tests.helpers import config

STEPS = 40
# 3 dB = half the squared error of the pre-fill inside the holes. A broken chain gains nothing
# (a sampler that drops the output stays at the pre-fill: +0) or loses (a misread output, below).
MEMORISED_DB = 3.0


def test_a_memorised_batch_shows_in_the_nfe1_restoration_and_is_written(tmp_path):
    cfg = config()
    cfg.train.num_steps = STEPS
    rows = overfit.train_on_batch(cfg, STEPS, STEPS)
    first, last = rows[0], rows[-1]
    assert [r["step"] for r in rows] == [0, STEPS]
    # zero-initialised output + residual parameterisation: x̂0 is the pre-fill, exactly
    assert first["model_raw"] == first["model_ema"] == first["prefill"]
    assert first["prefill"] > first["input"] and first["biharmonic"] > first["input"]
    assert last["model_raw"] >= last["prefill"] + MEMORISED_DB
    overfit.write(str(tmp_path), rows, "configs/demo.py:tiny", "a test machine")
    with open(tmp_path / "overfit.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert [int(r["step"]) for r in back] == [0, STEPS]
    assert abs(float(back[-1]["model_raw"]) - last["model_raw"]) < 1e-4
    text = (tmp_path / "summary.md").read_text()
    assert "a test machine" in text and f"| {STEPS} |" in text


def test_an_output_read_by_another_rule_does_not_restore_the_batch():
    # the negative control: the same training, the sampler reading the output as x̂0 itself
    cfg = config()
    cfg.train.num_steps = STEPS
    misread = config()
    misread.bridge.parameterization = "x0"
    rows = overfit.train_on_batch(cfg, STEPS, STEPS, sampler_cfg=misread)
    assert rows[-1]["model_raw"] < rows[-1]["prefill"]
