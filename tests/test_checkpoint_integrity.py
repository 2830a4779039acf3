"""A damaged checkpoint is never trusted (issue 30, item 5): checksums recorded at save and
checked at restore, a finite-values check for checkpoints without them, strict JSON in every
metrics file."""
from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
import tensorstore as ts

from rdbm_jax import api, evaluate, program, train
from rdbm_jax.checkpointing import checkpoint_integrity, checkpoints
from rdbm_jax.runtime import curves, distributed, strict_json, writers
from rdbm_jax.evaluation import reports
from rdbm_jax.errors import ConfigError
from tests.helpers import config

RUN = {"train.num_steps": 2, "train.checkpoint_every": 1, "train.eval_every": 0}



def _ema(workdir: str, step: int) -> list[np.ndarray]:
    cfg, mesh = config(**RUN), distributed.make_mesh()
    params = checkpoints.load_params(checkpoints.checkpoint_dir(workdir), step,
                                     program.abstract_params(cfg, mesh))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _silently_damaged(source: str, target: str, step: int = 2) -> None:
    """Copy `source` to `target` with one bit flipped in one saved EMA weight of `step`, written
    through tensorstore into orbax's own store: orbax reads it back WITHOUT an error, finite and
    different, so only a checksum can tell. (Flipping raw bytes of the zstd-compressed data files
    instead was not deterministic: whether a flip decodes silently depends on the saved values.)"""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    good = _ema(source, step)
    store = os.path.join(checkpoints.checkpoint_dir(target), str(step), "state")
    array = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{store}",
                                                   "path": "ema_params.conv_in.bias/"}}).result()
    values = np.array(array.read().result())
    # the lowest mantissa bit of one finite float32: finite, and a different value for certain
    values.view(np.uint32)[0] ^= 1
    array.write(values).result()
    with pytest.MonkeyPatch.context() as mp:  # orbax's own read, unchecked
        mp.setattr(checkpoint_integrity, "require", lambda *a: None)
        read = _ema(target, step)
    assert sum(int((a != b).sum()) for a, b in zip(read, good)) == 1  # exactly that weight
    assert all(np.isfinite(a).all() for a in read)


def test_every_saved_step_records_checksums_that_verify(two_checkpoint_run):
    directory = checkpoints.checkpoint_dir(two_checkpoint_run)
    for step in (1, 2):
        doc = json.load(open(os.path.join(directory, str(step), checkpoint_integrity.FILE)))
        assert doc["algorithm"] == "sha256"
        assert any(k.startswith("ema_params/") for k in doc["leaves"])
    assert len(_ema(two_checkpoint_run, 2)) > 10  # verified on the way


def test_flipped_bytes_are_refused_by_the_api_and_eval(two_checkpoint_run, tmp_path):
    workdir = str(tmp_path / "run")
    _silently_damaged(two_checkpoint_run, workdir)
    where = os.path.join(checkpoints.checkpoint_dir(workdir), "2")
    with pytest.raises(ConfigError) as e:
        api.load(workdir)
    assert where in str(e.value) and "damaged" in str(e.value) and "\n" not in str(e.value)
    assert "step=" in str(e.value)  # the API's own hint
    with pytest.raises(ConfigError, match=f"checkpoint {where} is damaged"):
        evaluate.run_eval(config(**RUN), workdir)
    assert not os.path.exists(os.path.join(workdir, "eval", "metrics.json"))


def test_train_sets_the_damaged_step_aside_and_resumes_from_the_previous(two_checkpoint_run,
                                                                         tmp_path, caplog):
    workdir = str(tmp_path / "run")
    _silently_damaged(two_checkpoint_run, workdir)
    with caplog.at_level(logging.INFO, logger="rdbm_jax"):
        train.train_and_evaluate(config(**{**RUN, "train.num_steps": 3}), workdir)
    where = os.path.join(checkpoints.checkpoint_dir(workdir), "2")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith(f"checkpoint {where} is damaged") for w in warnings), warnings
    assert "at step 1" in caplog.text  # resumed from the previous good checkpoint
    assert os.path.isdir(os.path.join(workdir, checkpoints.SET_ASIDE, "2"))  # kept, not deleted
    for step in (2, 3):  # the new checkpoints are whole and verify
        assert all(np.isfinite(a).all() for a in _ema(workdir, step))


def test_a_checkpoint_without_checksums_gets_the_finite_check(two_checkpoint_run, tmp_path):
    """An older checkpoint (no checksums.json) holding NaN EMA weights is refused too."""
    workdir = str(tmp_path / "run")
    shutil.copytree(two_checkpoint_run, workdir, ignore=shutil.ignore_patterns(".lock"))
    cfg, mesh = config(**RUN), distributed.make_mesh()
    ckpt = checkpoints.Checkpointer(workdir)
    step, state = ckpt.restore_latest(program.program(cfg, mesh).abstract)
    leaves, treedef = jax.tree_util.tree_flatten(state.ema_params)
    leaves[0] = leaves[0] * np.nan
    ckpt.save(3, state.replace(ema_params=jax.tree_util.tree_unflatten(treedef, leaves)), None,
              json.load(open(os.path.join(workdir, "config.json"))))
    ckpt.close()
    directory = checkpoints.checkpoint_dir(workdir)
    with pytest.raises(ConfigError, match="NaN or infinite"):  # with its checksums
        _ema(workdir, 3)
    os.remove(os.path.join(directory, "3", checkpoint_integrity.FILE))
    with pytest.raises(ConfigError, match=f"checkpoint {directory}/3 is damaged: .*NaN"):
        _ema(workdir, 3)
    os.remove(os.path.join(directory, "2", checkpoint_integrity.FILE))
    assert len(_ema(workdir, 2)) > 10  # a whole old checkpoint still loads


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_metrics_files_hold_strict_json(tmp_path):
    assert strict_json.dumps({"a": float("nan"), "b": [np.float32("inf"), 1.5],
                              "c": np.float64(-np.inf), "d": np.int64(3)}) == (
        '{"a": null, "b": [null, 1.5], "c": null, "d": 3}')
    writer = writers.JsonlWriter(str(tmp_path))
    writer.write_scalars(4, {"val/psnr": float("nan"), "train/loss": 0.5})
    rows = [_strict(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [{"step": 4, "val/psnr": None, "train/loss": 0.5}]
    assert curves.read_series(str(tmp_path / "metrics.jsonl"), ["val/psnr"])["val/psnr"][0] == [4]
    scores = {"psnr": float("nan")}
    reports.write_report(str(tmp_path / "eval"), [], {"main": scores, "overall": scores},
                         {"step": 1})
    report = _strict(open(tmp_path / "eval" / "metrics.json").read())
    assert report["tasks"]["main"]["psnr"] is None
