"""Reading a workdir while training rotates its checkpoints (issue 30, item 12): a newest step that
vanishes between listing and reading is replaced by the newest that exists now."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from rdbm_jax import api, inference
from rdbm_jax.checkpointing import checkpoint_rotation, checkpoints
from rdbm_jax.runtime import distributed
from rdbm_jax.errors import ConfigError
from tests.helpers import config

RUN = {"train.num_steps": 2, "train.checkpoint_every": 1, "train.eval_every": 0}



def _rotate_on_first_read(monkeypatch, workdir: str) -> list[int]:
    """The first read of a checkpoint's config deletes that step first, as a training run's
    rotation (max_to_keep) would between the listing and the read; returns the steps read."""
    real = checkpoints.read_config
    read = []

    def read_config(directory, step):
        if not read:
            shutil.rmtree(os.path.join(directory, str(step)))
        read.append(step)
        return real(directory, step)

    monkeypatch.setattr(checkpoints, "read_config", read_config)
    return read


@pytest.mark.parametrize("reader", ["load_trained", "api"])
def test_a_step_deleted_while_it_is_read_is_replaced_by_the_newest(two_checkpoint_run, tmp_path,
                                                                   monkeypatch, caplog, reader):
    workdir = str(tmp_path / "run")
    shutil.copytree(two_checkpoint_run, workdir, ignore=shutil.ignore_patterns(".lock"))
    read = _rotate_on_first_read(monkeypatch, workdir)
    with caplog.at_level(logging.INFO, logger="rdbm_jax"):
        if reader == "api":
            step = api.load(workdir).step
        else:
            step = inference.load_trained(config(**RUN), workdir, distributed.make_mesh()).step
    assert read == [2, 1] and step == 1
    assert "removed while it was read" in caplog.text


def test_a_named_step_that_vanishes_is_still_an_error(two_checkpoint_run, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    shutil.copytree(two_checkpoint_run, workdir, ignore=shutil.ignore_patterns(".lock"))
    _rotate_on_first_read(monkeypatch, workdir)
    named = os.path.join(checkpoints.checkpoint_dir(workdir), "2")
    with pytest.raises(ConfigError, match="2"):
        inference.load_trained(config(**RUN), workdir, distributed.make_mesh(), checkpoint=named)


def test_retries_are_bounded(tmp_path, monkeypatch):
    """A workdir whose newest step vanishes on every read gives up after RETRIES reads."""
    calls = []
    directory = str(tmp_path / "checkpoints")
    monkeypatch.setattr(checkpoints, "resolve", lambda workdir: (directory, 7))

    def read(directory, step):
        calls.append(step)
        raise ConfigError(f"checkpoint {directory}/{step} not found")

    with pytest.raises(ConfigError, match="not found"):
        checkpoint_rotation.read_newest(str(tmp_path), read)
    assert len(calls) == checkpoint_rotation.RETRIES + 1


def test_a_damaged_newest_step_is_not_retried(tmp_path, monkeypatch):
    directory = str(tmp_path / "checkpoints")
    monkeypatch.setattr(checkpoints, "resolve", lambda workdir: (directory, 7))
    monkeypatch.setattr(checkpoints, "is_complete", lambda step_dir: True)  # still there
    calls = []

    def read(directory, step):
        calls.append(step)
        raise ConfigError("damaged")

    with pytest.raises(ConfigError, match="damaged"):
        checkpoint_rotation.read_newest(str(tmp_path), read)
    assert calls == [7]


# slow: a real rotating training run read 6 times: ~25 s; the deterministic deletion tests stay fast
@pytest.mark.slow
@pytest.mark.integration
def test_reading_while_a_real_training_run_rotates_every_step(two_checkpoint_run, tmp_path):
    """A child `train` saving every step with max_to_keep=1 deletes the step before each new one;
    the API and load_trained read the workdir meanwhile, and every read succeeds."""
    import subprocess
    import time

    from tests.helpers import REPO, train_argv

    workdir = str(tmp_path / "run")
    shutil.copytree(two_checkpoint_run, workdir, ignore=shutil.ignore_patterns(".lock"))
    overrides = {**RUN, "train.num_steps": 400, "train.max_to_keep": 1, "train.log_every": 50}
    child = subprocess.Popen(train_argv(workdir, overrides, "def hook(step, state): pass"),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    directory = checkpoints.checkpoint_dir(workdir)
    try:
        deadline = time.time() + 300
        while not any(s > 2 for s in checkpoints.complete_steps(directory)):
            assert child.poll() is None and time.time() < deadline, child.stderr.read()
            time.sleep(0.2)
        steps = []
        for _ in range(3):
            steps.append(api.load(workdir).step)
            steps.append(inference.load_trained(config(**RUN), workdir,
                                              distributed.make_mesh()).step)
        assert child.poll() is None, "the training ended before the reads did"
    finally:
        child.terminate()  # SIGTERM: it saves and exits 0
        child.wait(timeout=300)
    assert len(steps) == 6 and steps == sorted(steps) and steps[0] > 2
