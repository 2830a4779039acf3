"""experiments/recipe_costs.py: per-step training cost of recipes through the real loop."""
from __future__ import annotations

import json
import math

import pytest

from experiments import recipe_costs
from rdbm_jax.errors import ConfigError, TrainingError


def test_costs_of_two_tiny_recipes_are_measured_and_written(tmp_path):
    out = tmp_path / "costs.json"
    doc = recipe_costs.main(["--out", str(out), "--recipes", "demo,nofuse", "--tiny",
                             "--steps", "4", "--skip", "2"])
    assert json.loads(out.read_text()) == doc
    assert doc["reference"] == "demo" and doc["steps"] == 4
    for cost in doc["recipes"].values():
        assert cost["cpu_s_per_step"] > 0 and cost["wall_s_per_step"] > 0
        assert math.isfinite(cost["share"]) and cost["share"] > 0
    assert doc["recipes"]["demo"]["share"] == 1.0


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="--skip"):
        recipe_costs.main(["--out", str(tmp_path / "c.json"), "--steps", "4", "--skip", "4"])
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe_costs.main(["--out", str(tmp_path / "c.json"), "--recipes", "nope", "--tiny"])
    assert not (tmp_path / "c.json").exists()


def test_a_run_stopped_early_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch):
    """A stop signal makes the trainer save and return before the window ends."""
    def stopped(cfg, workdir, hooks):
        for hook in hooks:
            hook(2, None)  # the window's start, then the signal: no step 4

    monkeypatch.setattr(recipe_costs.train, "train_and_evaluate", stopped)
    out = tmp_path / "c.json"
    with pytest.raises(TrainingError, match="demo: training stopped before step 4"):
        recipe_costs.main(["--out", str(out), "--recipes", "demo", "--tiny", "--steps", "4",
                           "--skip", "2"])
    assert not out.exists()
