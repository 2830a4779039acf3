"""experiments/prefills.py: the classical pre-fills scored on the folds' held-out photos."""
import csv
import math

import pytest

from experiments import prefills
from rdbm_jax import conditioning
from rdbm_jax.data import builtin
from rdbm_jax.errors import ConfigError


def test_tiny_fold_scores_every_prefill_beside_biharmonic_and_the_input(tmp_path):
    """Every PREFILLS entry is scored with the baseline and the input; the files land; a fill
    beats the white input inside the holes by far (the input is the hole colour, so a test that
    swapped the columns or scored the wrong image would fail)."""
    rows = prefills.main(["--out-dir", str(tmp_path), "--folds", "1", "--sizes", "32", "--tiny"])
    assert [(r["fold"], r["size"]) for r in rows] == [(1, 32)]
    row = rows[0]
    assert set(row) == {"fold", "size", "input", "biharmonic", *conditioning.PREFILLS}
    assert all(math.isfinite(row[k]) for k in prefills.COLUMNS)
    for name in ("biharmonic", *conditioning.PREFILLS):
        assert row[name] > row["input"] + 5.0, name
    with open(tmp_path / "prefills.csv") as f:
        saved = list(csv.DictReader(f))
    assert len(saved) == 1
    assert float(saved[0]["mu_mask_mixfill"]) == pytest.approx(row["mu_mask_mixfill"], abs=1e-4)
    text = (tmp_path / "summary.md").read_text()
    assert "## 32 px" in text and "mu_mask_mixfill" in text and "verdict" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_fold_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--folds: fold 9"):
        prefills.main(["--out-dir", str(tmp_path), "--folds", str(len(builtin.FOLDS) + 5),
                       "--sizes", "32", "--tiny"])
    with pytest.raises(ConfigError, match="--folds / --sizes"):
        prefills.main(["--out-dir", str(tmp_path), "--folds", "a", "--tiny"])
