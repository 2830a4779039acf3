"""A checkpoint saved by an older rdbm_jax version stays readable: `older_runs.upgrade` fills every
key added since the first release (e120d70) as those runs behaved, and `config.check_saved` accepts
it. The fixture is the config the first release saved with each checkpoint (its configs/default.py),
so adding a key to configs/default.py without an `OLDER_RUNS` entry fails here, not in a user's
evaluation of an old run."""
from __future__ import annotations

import json
import os

import ml_collections
import pytest

from rdbm_jax import config as config_lib
from rdbm_jax import older_runs
from rdbm_jax.config_files import load
from rdbm_jax.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
FIRST_RELEASE = os.path.join(HERE, "data", "saved_config_e120d70.json")


def _keys(d: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a config dict (the per-task source specs apart: data_spec validates them)."""
    out = set()
    for k, v in d.items():
        if isinstance(v, dict) and k != "tasks":
            out |= _keys(v, f"{prefix}{k}.")
        elif k != "tasks":
            out.add(prefix + k)
    return out


def _first_release() -> dict:
    with open(FIRST_RELEASE, encoding="utf-8") as f:
        return json.load(f)


def test_the_first_releases_saved_config_is_accepted_with_every_key_of_today():
    cfg = config_lib.check_saved(_first_release(), "checkpoints/1/config")
    today = _keys(load("configs/default.py").to_dict())
    assert today <= _keys(cfg.to_dict()), sorted(today - _keys(cfg.to_dict()))
    # the keys whose meaning changed: random_flip=True flipped both ways; quantize=True rounded
    assert cfg.data.flip == "both" and cfg.eval.quantize == "round"
    assert cfg.model.condition == "mu" and not cfg.sample.fuse  # the paper's, as it was


def test_renamed_and_retyped_keys_keep_their_old_meaning():
    old = _first_release()
    old["data"]["random_flip"] = False
    old["eval"]["quantize"] = False
    cfg = config_lib.check_saved(old, "c")
    assert cfg.data.flip == "none" and cfg.eval.quantize == "none"


def test_a_current_config_is_not_changed_by_the_upgrade():
    cfg = load("configs/demo.py:tiny")
    assert older_runs.upgrade(cfg) is cfg
    assert config_lib.check_saved(cfg.to_dict(), "c").to_dict() == cfg.to_dict()


def test_a_key_no_version_lacked_is_still_refused_in_one_line():
    old = _first_release()
    del old["model"]["size"]
    with pytest.raises(ConfigError) as e:
        config_lib.check_saved(old, "checkpoints/7/config")
    assert "checkpoints/7/config: no key" in str(e.value) and "size" in str(e.value)
    assert "\n" not in str(e.value)  # ml_collections' "Did you mean" is not appended


def test_upgrade_fills_a_section_added_later():
    old = ml_collections.ConfigDict(_first_release())
    assert "app" not in old
    assert older_runs.upgrade(old).app.port == older_runs.OLDER_RUNS["app.port"]
