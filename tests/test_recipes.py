"""experiments/recipes.py (issue 28, item 2): the decision rule, the fold configs (no validation
photo), the summary, and a tiny 2-recipe × 2-fold run through the real training loop."""
from __future__ import annotations

import math
import os

import pytest

from experiments import recipes, results_csv
from rdbm_jax.data import build_eval_sources, builtin
from rdbm_jax.errors import ConfigError


def test_verdict_needs_every_fold_and_the_paired_t():
    assert recipes.verdict([0.3, 0.25, 0.35, 0.3])[0] == "win"
    assert recipes.verdict([-0.3, -0.25, -0.35, -0.3])[0] == "loss"
    # a mean carried by one large fold: the signs disagree
    assert recipes.verdict([2.0, -0.1, 0.1, 0.1])[0] == "no verdict"
    # every fold positive but the spread too large for the t test (t = 1.9 < 2.35)
    word, t, crit = recipes.verdict([0.01, 0.02, 0.9, 0.03])
    assert word == "no verdict" and t < crit == pytest.approx(2.3534, abs=1e-4)
    assert recipes.verdict([0.1, 0.1, 0.1, 0.1])[0] == "win"  # no spread: the sign decides
    assert recipes.verdict([0.0, 0.0])[0] == "no verdict"
    assert recipes.verdict([0.5])[0] == "no verdict"  # one fold is no evidence


def test_fold_configs_train_and_score_on_training_photos_only():
    val = {n for n, _ in builtin.builtin_files("val")}
    for fold in range(len(builtin.FOLDS)):
        cfg = recipes.fold_config("harmonic", fold, 4, tiny=True)
        assert cfg.model.condition == "mu_mask_fill"
        train = {n for n, _ in builtin.builtin_files(cfg.data.tasks.main.train.split)}
        names = [ex["name"] for src in build_eval_sources(cfg.data).values()
                 for ex in (src[i] for i in range(len(src)))]
        assert sorted(names) == sorted(builtin.FOLDS[fold])
        assert not (train | set(names)) & val and not train & set(names)
    rescale = recipes.fold_config("rescale", 0, 4, tiny=False)
    assert (rescale.data.scale_min, rescale.data.scale_max) == (0.2, 1.0)
    assert (rescale.data.crop_size, rescale.data.crop_sizes) == (64, "")  # the demo's crops
    with pytest.raises(ConfigError, match="--recipes: unknown recipe 'x'"):
        recipes.fold_config("x", 0, 4, tiny=True)
    with pytest.raises(ConfigError, match="--folds: fold 4"):
        recipes.fold_config("demo", 4, 4, tiny=True)


def test_equal_cost_recipes_train_their_share_of_the_steps():
    """S_eq & co. (and the longer demo) train STEP_SHARE × --steps (multiples of 25), checkpoint at
    their last step, and are not taken for the full-steps recipe of the same overrides."""
    assert recipes.steps_of("demo", 1500) == 1500 and recipes.steps_of("S", 1500) == 1500
    assert recipes.steps_of("S_eq", 1500) == 825  # 1500 × 0.544 = 816 → 825
    assert recipes.steps_of("crop128_eq", 1500) == 425
    assert recipes.steps_of("multiscale_eq", 1500) == 650
    assert recipes.steps_of("S_eq", 12000) == 6525
    assert recipes.steps_of("S_eq", 4) == 4  # a tiny smoke run keeps its steps
    for name, share in recipes.STEP_SHARE.items():
        assert name in recipes.RECIPES and (0 < share < 1) == name.endswith("_eq")
        # "S" has the same overrides as "S_eq", not the steps; "long_nfe1" samples "long"'s runs
        assert recipes.trained_as(name) == name.removesuffix("_nfe1")
        cfg = recipes.fold_config(name, 0, 1500, tiny=False)
        assert cfg.train.num_steps == recipes.steps_of(name, 1500)
        # the run's last step is a checkpoint and its CPU time is counted there
        assert cfg.train.checkpoint_every <= 500
    # the longer demo is the demo's config at 8× the steps: its runs are the demo's at --steps 12000
    long, demo = recipes.fold_config("long", 1, 1500, False), recipes.fold_config("demo", 1, 12000,
                                                                                   False)
    assert long.to_dict() == demo.to_dict() and long.train.num_steps == 12000
    assert recipes.nfe_of("long_nfe1", 10) == 1 and recipes.trained_as("demo") == "demo"
    # the demo's fold configs are the ones its committed rows were measured with
    assert recipes.fold_config("demo", 0, 1500, tiny=False).train.checkpoint_every == 500


def _row(recipe, fold, model, size=128):
    return {"recipe": recipe, "fold": fold, "steps": 2, "size": size, "nfe": 10, "input": 3.5,
            "biharmonic": 20.0 + fold, "prefill": 19.9 + fold, "model": model + fold,
            "train_cpu_s": 1.0, "settings": "s", "commit": "abc", "utc": "u"}


def test_summary_reports_spread_and_paired_differences():
    rows = [_row("demo", f, 20.1) for f in range(4)] + [
        _row("nofuse", f, 20.4 + 0.02 * f) for f in range(4)]
    md = recipes.summary(rows, ["demo", "nofuse"])
    # the folds' photos differ (biharmonic 20..23), the paired differences do not
    assert "| demo | 4 | 21.60 ± 1.29 | 0.10 ± 0.00 | 0.20 ± 0.00 |" in md
    assert "| nofuse | +0.30 | +0.32 | +0.34 | +0.36 | 0.33 ± 0.03 |" in md
    assert "**win**" in md
    assert "| nofuse | `sample.fuse=False` | demo | 2 |" in md  # the protocol names what was run
    assert "commit(s) abc" in md


def test_summary_of_a_recipe_measured_on_one_fold_so_far():
    """A recipe still in progress (one fold) is listed with its difference, no t and no verdict."""
    rows = [_row("demo", f, 20.1) for f in range(4)] + [_row("long", 0, 20.5)]
    md = recipes.summary(rows, ["demo", "long"])
    assert "| long | +0.40 | — | — | — | 0.40 | — (1 fold) | **no verdict** |" in md
    assert "nan" not in md


def test_report_mode_writes_the_summary_from_the_csv_alone(tmp_path):
    rows = [_row("demo", f, 20.1) for f in range(4)] + [
        _row("nofuse", f, 20.4 + 0.02 * f) for f in range(4)]
    results_csv.append_rows(str(tmp_path / recipes.CSV_NAME), recipes.FIELDS, [], rows)
    out = recipes.main(["--out-dir", str(tmp_path), "--recipes", "demo,nofuse", "--report"])
    assert out["evaluated"] == [] and not (tmp_path / "runs").exists()  # nothing trained
    assert (tmp_path / "summary.md").read_text() == out["summary"]
    assert "**win**" in out["summary"]
    assert "Measured from commit(s)" in out["summary"]  # no machine named: none claimed
    named = recipes.main(["--out-dir", str(tmp_path), "--recipes", "demo,nofuse", "--report",
                          "--machine", "a 2-core test box"])
    assert "Measured on a 2-core test box from commit(s)" in named["summary"]


def test_sampling_only_recipes_reuse_the_trained_networks(monkeypatch):
    assert recipes.trained_as("nofuse") == "demo"  # only sample.fuse differs
    assert recipes.trained_as("nfe1") == "demo"
    assert recipes.nfe_of("nfe1", 10) == 1 and recipes.nfe_of("demo", 10) == 10
    assert recipes.trained_as("demo") == "demo"
    assert recipes.trained_as("multiscale") == "multiscale"
    monkeypatch.setitem(recipes.RECIPES, "S_nofuse", {"model.size": "S", "sample.fuse": False})
    assert recipes.trained_as("S_nofuse") == "S"
    monkeypatch.setitem(recipes.RECIPES, "eta", {"sample.eta": 1.0, "data.crop_size": 96})
    assert recipes.trained_as("eta") == "eta"  # no recipe trains data.crop_size=96 alone
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipes.trained_as("nope")


@pytest.mark.slow  # two tiny trainings: ~35 s; the verdict rule and summary tests stay fast
def test_tiny_two_recipes_two_folds_resumable(tmp_path):
    argv = ["--out-dir", str(tmp_path), "--recipes", "demo,nofuse", "--folds", "0,1", "--tiny"]
    first = recipes.main(argv)
    assert first["evaluated"] == [("demo", 0), ("demo", 1), ("nofuse", 0), ("nofuse", 1)]
    rows = results_csv.read_rows(str(tmp_path / recipes.CSV_NAME), recipes.FIELDS,
                                 recipes.NUMERIC)
    assert len(rows) == 4 and all(math.isfinite(r["model"]) for r in rows)
    assert all(r["input"] < r["biharmonic"] for r in rows)
    by = {(r["recipe"], int(r["fold"])): r for r in rows}
    # the same held-out photos and masks for both recipes: identical references
    assert by[("demo", 0)]["biharmonic"] == by[("nofuse", 0)]["biharmonic"]
    assert by[("demo", 0)]["biharmonic"] != by[("demo", 1)]["biharmonic"]
    # nofuse only samples differently: scored on demo's networks, no run of its own
    assert sorted(os.listdir(tmp_path / "runs")) == ["demo_fold0", "demo_fold1"]
    assert by[("demo", 0)]["train_cpu_s"] == by[("nofuse", 0)]["train_cpu_s"]
    assert recipes.main(argv)["evaluated"] == []  # all there: nothing trained or scored
    assert "Against `demo`" in open(os.path.join(tmp_path, "summary.md")).read()


# slow: a tiny multi-scale training: ~14 s; test_data_pipeline's multi-scale tests stay fast
@pytest.mark.slow
def test_tiny_multiscale_recipe_trains_on_mixed_crop_sizes(tmp_path):
    """The multi-scale recipe through the real loop: batches of two shapes, one compiled step
    each."""
    cfg = recipes.fold_config("multiscale", 3, 4, tiny=True)
    assert (cfg.data.scale_min, cfg.data.crop_sizes) == (0.5, "16,32")
    out = recipes.main(["--out-dir", str(tmp_path), "--recipes", "multiscale", "--folds", "3",
                        "--tiny", "--steps", "4"])
    assert out["evaluated"] == [("multiscale", 3)]
    rows = results_csv.read_rows(str(tmp_path / recipes.CSV_NAME), recipes.FIELDS,
                                 recipes.NUMERIC)
    assert math.isfinite(rows[0]["model"]) and math.isfinite(rows[0]["prefill"])


def test_a_recipe_is_also_judged_against_the_recipe_it_extends():
    """mixfill_lr3 changes one choice of mixfill: besides the first listed (demo), the summary
    judges it against mixfill. A recipe trained for other steps is no parent (multiscale_eq
    extends crop128_eq's overrides at other steps; long_nfe1's parent is long, at long's steps)."""
    listed = ["demo", "mixfill", "mixfill_lr3", "mixfill_l2"]
    assert recipes.reference_of("mixfill_lr3", listed) == "mixfill"
    assert recipes.reference_of("mixfill", listed) == "demo"
    assert recipes.reference_of("mixfill_lr3", ["demo", "mixfill_lr3"]) == "demo"
    assert recipes.reference_of("multiscale_eq", ["demo", "crop128_eq", "multiscale_eq"]) == "demo"
    assert recipes.reference_of("long_nfe1", ["demo", "long", "long_nfe1"]) == "long"
    rows = [_row("demo", f, 20.1) for f in range(4)] + [_row("mixfill", f, 20.6) for f in range(4)]
    rows += [_row("mixfill_lr3", f, 20.6 + 0.05 * (f + 1)) for f in range(4)]
    md = recipes.summary(rows, ["demo", "mixfill", "mixfill_lr3"])
    assert md.count("Against `demo`") == 1 and md.count("Against `mixfill`") == 1
    assert "| mixfill_lr3 | +0.55 | +0.60 | +0.65 | +0.70 |" in md  # against demo
    assert "| mixfill_lr3 | +0.05 | +0.10 | +0.15 | +0.20 |" in md  # against mixfill
