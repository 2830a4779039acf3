"""A gs:// workdir end to end on a stand-in object store (tests/object_store.py, no network):
train, resume, eval, sweep, export, sample's checkpoint and the Python API."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import rdbm_jax
from rdbm_jax import checkpoints, evaluate, export, sweep, train
from tests.helpers import config, read_metrics
from tests.object_store import fake_gcs, local_of

STEPS = {"train.num_steps": 2, "train.checkpoint_every": 1, "train.log_every": 1, "train.eval_every": 2,
         "train.eval_num_images": 1, "train.tensorboard": "none", "eval.max_images": 1,
         "sweep.nfe": "1", "sweep.eta": "0"}


@pytest.mark.slow  # ~2 min on 2 shared cores: two training runs, eval, sweep, export, the API
def test_gs_workdir_trains_resumes_evaluates_exports_and_loads(tmp_path, monkeypatch):
    with fake_gcs(str(tmp_path / "bucket_root"), monkeypatch):
        url = "gs://bucket/run"
        train.train_and_evaluate(config(**STEPS), url)
        local = local_of(url)
        assert not os.path.exists("gs:")  # nothing went to a local folder named like the URL
        assert checkpoints.complete_steps(checkpoints.checkpoint_dir(url)) == [2, 1]
        assert json.load(open(os.path.join(local, "config.json")))["train"]["num_steps"] == 2
        assert [r["step"] for r in read_metrics(local) if "train/loss" in r] == [1, 2]
        assert os.path.exists(os.path.join(local, "curves.png"))
        # Resume: two more steps continue from the gs:// checkpoint of step 2.
        more = train.train_and_evaluate(config(**{**STEPS, "train.num_steps": 4}), url)
        assert "train/loss" in more
        assert checkpoints.Checkpointer(url).latest_step() == 4
        per_task = evaluate.run_eval(config(**STEPS), url)
        assert json.load(open(os.path.join(local, "eval", "metrics.json")))["overall"]["psnr"] == \
            per_task["overall"]["psnr"]
        assert os.path.exists(os.path.join(local, "eval", "per_image.csv"))
        sweep.run_sweep(config(**STEPS), url)
        assert os.path.exists(os.path.join(local, "sweep", "results.png"))
        artifact = export.run_export(config(**STEPS), url)
        assert artifact.startswith("gs://") and os.path.getsize(local_of(artifact)) > 0
        # sample.checkpoint naming a gs:// step folder, and the Python API.
        directory, step = checkpoints.resolve(url, f"{url}/checkpoints/2")
        assert (directory, step) == (f"{url}/checkpoints", 2)
        model = rdbm_jax.load(url)
        assert model.step == 4
        out = model.restore(np.zeros((16, 16, 3), np.uint8), num_steps=1)
        assert out.shape == (16, 16, 3)


def test_gs_checkpoint_loads_in_the_api_sample_and_eval(trained_workdir, tmp_path, monkeypatch):
    """rdbm_jax.load used os.path.isdir and checkpoints.resolve made the URL a local path."""
    root = tmp_path / "bucket_root"
    shutil.copytree(trained_workdir, root / "bucket" / "run", ignore=shutil.ignore_patterns("eval", "sweep"))
    with fake_gcs(str(root), monkeypatch):
        url = "gs://bucket/run"
        assert checkpoints.resolve(url, f"{url}/checkpoints/2") == (f"{url}/checkpoints", 2)
        assert rdbm_jax.load(url).step == 2
        evaluate.run_eval(config(**{"eval.max_images": 1}), url)
        assert os.path.exists(os.path.join(local_of(url), "eval", "metrics.json"))


def test_tensorboard_events_reach_a_gs_workdir(tmp_path, monkeypatch):
    """tensorboardX writes gs:// only through google-cloud-storage's own client (no stand-in,
    no epath): events are staged locally and copied through `paths` on flush, on close and at
    writes PUBLISH_SECS apart; a resumed run's file sits beside the first, none overwritten."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rdbm_jax import writers

    with fake_gcs(str(tmp_path / "bucket_root"), monkeypatch):
        url = "gs://bucket/run"
        w = writers.create_writer(url, tensorboard="tensorboardx")
        tb = w.writers[1]
        w.write_scalars(1, {"train/loss": 0.5})
        w.flush()
        local = local_of(url + "/tensorboard")
        (first,) = os.listdir(local)
        monkeypatch.setattr(writers.TensorBoardXWriter, "PUBLISH_SECS", 0.0)  # every write is due
        size = os.path.getsize(os.path.join(local, first))
        w.write_images(1, {"grid": np.zeros((4, 6, 3), np.float32)})
        assert os.path.getsize(os.path.join(local, first)) > size  # published without a flush
        staging = tb._staging
        w.close()
        assert not os.path.exists(staging)  # the staging folder goes with the writer
        resumed = writers.create_writer(url, tensorboard="tensorboardx", resume_step=1)
        resumed.write_scalars(2, {"train/loss": 0.25})
        resumed.close()
        assert len(os.listdir(local)) == 2 and first in os.listdir(local)
        assert not os.path.exists("gs:")  # nothing went to a local folder named like the URL
        acc = EventAccumulator(local, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
        assert [e.step for e in acc.Images("grid")] == [1]
