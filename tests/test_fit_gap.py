"""experiments/fit_gap.py: a fold's network scored on its held-out and its training photos."""
from __future__ import annotations

import json
import math

import pytest

from experiments import fit_gap, recipes, results_csv
from rdbm_jax.data import builtin
from rdbm_jax.errors import ConfigError


def _row(photos, fold, gain, size=128):
    prefill = 18.0 + fold
    return {"recipe": "mixfill", "photos": photos, "fold": fold, "steps": 1500, "size": size,
            "nfe": 1, "input": 4.0, "biharmonic": prefill - 0.5, "prefill": prefill,
            "model": prefill + gain, "settings": "s", "commit": "abc", "utc": f"u{fold}"}


def test_summary_pairs_trained_and_held_out_gains_by_fold():
    rows = [_row("held_out", f, 0.1 * f) for f in range(4)]
    rows += [_row("trained", f, 0.1 * f + 0.3) for f in range(4)]
    md = fit_gap.summary(rows, "a 2-core test box")
    # the folds' photos differ (pre-fill 18..21); the gains over the pre-fill are read per fold
    assert "| mixfill | 1500 | 1 | held_out | 4 | 19.65 ± 1.42 | 19.50 ± 1.29 |" in md
    assert "| mixfill | 1500 | 1 | trained | 4 | 19.95 ± 1.42 |" in md
    assert "| 0.15 ± 0.13 | 0.65 ± 0.13 |" in md  # held-out gain over pre-fill, over biharmonic
    assert "| mixfill | +0.30 +0.30 +0.30 +0.30 | 0.30 ± 0.00 |" in md
    assert "Measured on a 2-core test box, commit(s) abc; u0 – u3 UTC." in md
    assert "`mixfill`: the `mixfill_fold<i>` runs of experiments/recipes.py" in md
    assert "`model.condition='mu_mask_mixfill'`, trained on `fold<i>_train`." in md
    assert "nan" not in md and "## 128 px" in md and "Full size" not in md
    full = fit_gap.summary([_row("trained", 0, 0.2, size=0), _row("held_out", 0, 0.1, size=0)])
    assert "## Full size (the photos' scale in training)" in full
    crops = fit_gap.summary([_row("trained", 0, 0.2, size=64)], fit="crop")
    assert "## 64² centre crops at full scale (training's crops and holes)" in crops
    assert "| mixfill | +0.10 | 0.10 |" in full


def test_photos_are_the_folds_held_out_and_training_splits():
    for fold in range(len(builtin.FOLDS)):
        held = {n for n, _ in builtin.builtin_files(fit_gap.split_of("held_out", fold))}
        trained = {n for n, _ in builtin.builtin_files(fit_gap.split_of("trained", fold))}
        assert held == set(builtin.FOLDS[fold]) and not held & trained
        assert held | trained == set(builtin.TRAIN)


@pytest.mark.slow  # one tiny training and its scoring on 8 photos: ~25 s
def test_tiny_run_scored_on_both_sets_resumable_and_refusals(tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "out"
    recipes.main(["--out-dir", str(tmp_path / "rec"), "--runs-dir", str(runs), "--recipes",
                  "mixfill", "--folds", "1", "--tiny", "--steps", "2"])
    # a later change to a section no experiment reads (the sweep grid) does not orphan the run
    saved = json.loads((runs / "mixfill_fold1" / "config.json").read_text())
    saved["sweep"]["eta"] = "0,1"
    (runs / "mixfill_fold1" / "config.json").write_text(json.dumps(saved))
    argv = ["--runs-dir", str(runs), "--out-dir", str(out), "--recipes", "mixfill", "--folds",
            "1", "--tiny", "--steps", "2", "--sizes", "32"]
    text = fit_gap.main(argv)
    rows = results_csv.read_rows(str(out / fit_gap.CSV_NAME), fit_gap.FIELDS, fit_gap.NUMERIC)
    assert sorted(r["photos"] for r in rows) == ["held_out", "trained"]
    assert all(math.isfinite(r[k]) for r in rows for k in fit_gap.SCORES)
    assert all(r["input"] < r["biharmonic"] and int(r["steps"]) == 2 for r in rows)
    by = {r["photos"]: r for r in rows}
    assert by["held_out"]["biharmonic"] != by["trained"]["biharmonic"]  # other photos
    assert "Gain over the pre-fill, trained − held-out photos, per fold:" in text
    assert (out / "summary.md").read_text() == text
    before = (out / fit_gap.CSV_NAME).read_text()
    fit_gap.main(argv)  # measured: nothing scored again
    assert (out / fit_gap.CSV_NAME).read_text() == before
    with pytest.raises(ConfigError, match="measured with other settings"):
        fit_gap.main(argv[:-1] + ["32,64"])
    with pytest.raises(ConfigError, match="trained with another config"):  # other steps
        fit_gap.main(argv[:3] + [str(tmp_path / "out3")] + argv[4:10] + ["3"] + argv[11:])
    # a run killed before its last step: its newest checkpoint is not the recipe's network
    load = fit_gap.inference.load_trained
    monkeypatch.setattr(fit_gap.inference, "load_trained",
                        lambda *a, **k: load(*a, **k)._replace(step=1))
    with pytest.raises(ConfigError, match=r"newest checkpoint is step 1, the recipe trains 2"):
        fit_gap.main(argv[:3] + [str(tmp_path / "out3")] + argv[4:])
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"mixfill_fold0: no such run"):
        fit_gap.main(argv[:7] + ["0"] + argv[8:])
    # centre crops at full scale, holes drawn per crop (the training distribution): another table
    crop_argv = argv[:3] + [str(tmp_path / "crops")] + argv[4:-1] + ["16", "--fit", "crop"]
    assert "16² centre crops at full scale" in fit_gap.main(crop_argv)
    crops = results_csv.read_rows(str(tmp_path / "crops" / fit_gap.CSV_NAME), fit_gap.FIELDS,
                                  fit_gap.NUMERIC)
    assert len(crops) == 2 and all(math.isfinite(r["model"]) for r in crops)
    assert crops[0]["settings"] != rows[0]["settings"]
    saved["model"]["size"] = "S"  # a section that makes the numbers: refused
    (runs / "mixfill_fold1" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="trained with another config"):
        fit_gap.main(argv[:3] + [str(tmp_path / "out4")] + argv[4:])
