"""A config that does not match the saved run: resuming with a key outside `resume.RESUMABLE` that
differs from the checkpoint's config is refused in one line, exit 2, and nothing in the workdir
changes (issue 30, item 1); every key that builds the network or the bridge is checked against the
checkpoint."""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from rdbm_jax.checkpointing import checkpoints, resume
from rdbm_jax import config as config_lib, inference, program, train
from rdbm_jax.errors import ConfigError
from tests.helpers import REPO, config, run_cli

TINY = {"train.num_steps": 2, "train.checkpoint_every": 2, "train.eval_every": 0}


def _snapshot(workdir: str) -> dict[str, str]:
    """sha256 of every file under `workdir` (the lock file aside), by relative path."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            if name != ".lock":
                out[os.path.relpath(path, workdir)] = hashlib.sha256(
                    open(path, "rb").read()).hexdigest()
    return out


@pytest.mark.parametrize("override,key", [
    ({"optim.grad_clip": 1.0}, "optim.grad_clip"),
    ({"bridge.theta_schedule": "linear"}, "bridge.theta_schedule"),  # the θ schedule: the bridge
])
def test_a_changed_key_is_refused_and_nothing_in_the_workdir_changes(trained_workdir, override,
                                                                      key):
    before = _snapshot(trained_workdir)
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(config(**{**TINY, "train.num_steps": 4, **override}),
                                 trained_workdir)
    msg = str(e.value)
    saved = json.load(open(os.path.join(trained_workdir, "config.json")))
    section, name = key.split(".")
    assert "\n" not in msg and key in msg and "new --workdir" in msg
    assert f"saved {json.dumps(saved[section][name])}, now {json.dumps(override[key])}" in msg
    assert f"--config.{key}=" in msg  # the first way on: the saved value
    assert _snapshot(trained_workdir) == before  # nothing moved, dropped or overwritten
    assert not os.path.exists(os.path.join(trained_workdir, checkpoints.SET_ASIDE))


def test_resumable_keys_resume(trained_workdir):
    """num_steps, cadences, max_to_keep and sample/eval settings may change: training goes on."""
    cfg = config(**{**TINY, "train.num_steps": 3, "train.log_every": 3, "train.max_to_keep": 2,
                    "sample.num_steps": 3, "eval.max_images": 1})
    train.train_and_evaluate(cfg, trained_workdir)
    assert checkpoints.complete_steps(checkpoints.checkpoint_dir(trained_workdir))[0] == 3
    assert not os.path.exists(os.path.join(trained_workdir, checkpoints.SET_ASIDE))


def test_differences_name_every_kind_of_change():
    saved = json.loads(config().to_json_best_effort())
    new = json.loads(config(**{"model.size": "S", "optim.optimizer": "adamw",
                               "model.attention": False, "model.condition": "mu",
                               "train.num_steps": 99, "seed": 3}).to_json_best_effort())
    new["data"]["tasks"]["extra"] = new["data"]["tasks"]["main"]  # a task added
    del saved["train"]["t_sampling"]  # a key an older version did not write: not compared
    new["train"]["t_sampling"] = "weighted"
    keys = [k for k, _, _ in resume.differences(saved, new) if not resume.resumable(k)]
    assert keys == ["data.tasks.extra", "model.attention", "model.condition", "model.size",
                    "optim.optimizer", "seed"]
    with pytest.raises(ConfigError, match="rerun with the config it was trained with"):
        resume.check(saved, new, "ck/2", "wd")
    assert resume.resumable("data.tasks.main.eval.dir")
    assert not resume.resumable("data.tasks.main.train.dir")


def test_the_docs_list_exactly_the_resumable_keys():
    page = open(os.path.join(REPO, "docs", "faults.md"), encoding="utf-8").read()
    section = page.split("## Resuming with another config", 1)[1].split("\n#", 1)[0]
    may = section.split("May change:", 1)[1].split("\n\n", 1)[0]
    assert tuple(re.findall(r"`([^`]+)`", may)) == resume.RESUMABLE


def test_cli_refuses_a_changed_config_with_exit_2_and_one_line(trained_workdir):
    before = _snapshot(trained_workdir)
    r = run_cli("--mode=train", f"--workdir={trained_workdir}",
                f"--config={os.path.join(REPO, 'configs', 'demo.py')}:tiny",
                "--config.train.num_steps=4", "--config.model.size=S")
    err = r.stderr.strip()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(err.splitlines()) == 1 and "model.size: saved" in err, err
    assert _snapshot(trained_workdir) == before


def test_an_input_pipeline_that_cannot_take_the_saved_position_is_refused_not_set_aside(
        trained_workdir, monkeypatch):
    """data.num_workers=-1 resolves per host: a sound checkpoint saved with in-process loading,
    resumed where it resolves to a worker process, fails grain's restore. That is no damage: one
    line, nothing moved (before, every checkpoint was set aside and training restarted at 0)."""
    from rdbm_jax.data import pipeline

    before = _snapshot(trained_workdir)
    monkeypatch.setattr(pipeline, "num_workers", lambda data_cfg, accelerator: 1)
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(config(**{**TINY, "train.num_steps": 4}), trained_workdir)
    msg = str(e.value)
    where = os.path.join(checkpoints.checkpoint_dir(trained_workdir), "2")
    assert msg.startswith(f"checkpoint {where} is sound") and "data.num_workers" in msg
    assert "\n" not in msg
    assert _snapshot(trained_workdir) == before
    assert not os.path.exists(os.path.join(trained_workdir, checkpoints.SET_ASIDE))


# --- the checkpoint check covers every key that builds the network --------------------------------

def _other(key: str, value):
    """A valid value of `key` different from `value`."""
    if key in config_lib.CHOICES:
        return next(v for v in config_lib.CHOICES[key] if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return value + "x"


def test_every_network_key_is_checked_against_the_checkpoint():
    saved = config().to_dict()
    spec = program.network_spec(config())
    keys = [f"{section}.{name}" for section in spec for name in spec[section]]
    assert "model.attention" in inference.must_match(config())  # the key once missed
    for key in keys:
        ours = config(**{key: _other(key, config()[key.split(".")[0]][key.split(".")[1]])})
        if key == "bridge.sigma_data":  # ρ is read by the precond parameterisation only
            inference.check_compatible(ours, saved, "ckpt/2")
            precond = {"bridge.parameterization": "precond"}
            with pytest.raises(ConfigError, match=rf"^{key}=.*different bridge is refused"):
                inference.check_compatible(config(**precond, **{key: "2.5"}),
                                         config(**precond).to_dict(), "ckpt/2")
            continue
        if key in inference.INFERENCE_ONLY:
            inference.check_compatible(ours, saved, "ckpt/2")  # same weights, computed another way
            continue
        what = "bridge" if key.startswith("bridge.") else "network"
        refused = rf"^{key}=.*restoring with a different {what} is refused"
        with pytest.raises(ConfigError, match=refused):
            inference.check_compatible(ours, saved, "ckpt/2")


def test_an_older_versions_checkpoint_is_compared_as_it_behaved(trained_workdir, monkeypatch):
    """A checkpoint saved before model.condition existed trained on μ alone: resuming it with a mask
    condition is refused naming the key; with μ it resumes the comparison cleanly."""
    directory = checkpoints.checkpoint_dir(trained_workdir)
    saved = checkpoints.read_config(directory, 2)
    del saved["model"]["condition"]  # as the first release saved it (tests/data has one)
    monkeypatch.setattr(checkpoints, "read_config", lambda d, s: json.loads(json.dumps(saved)))
    new = json.loads(config(**TINY).to_json_best_effort())
    assert new["model"]["condition"] != "mu"  # configs/demo.py:tiny sees mask and pre-fill
    with pytest.raises(ConfigError, match='model.condition: saved "mu", now "mu_mask_mixfill"'):
        train.check_resume_config(trained_workdir, new)
    new["model"]["condition"] = "mu"
    train.check_resume_config(trained_workdir, new)  # the same network: nothing refused
