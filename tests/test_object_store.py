"""A gs:// workdir end to end on a stand-in object store (tests/object_store.py, no network):
train, resume, eval, sweep, export, sample's checkpoint and the Python API."""
from __future__ import annotations

import json
import os
import time
import shutil

import numpy as np
import pytest

import rdbm_jax
from rdbm_jax.checkpointing import checkpoints
from rdbm_jax import evaluate, export, sweep, train
from tests.helpers import config, read_metrics
from tests.object_store import fake_gcs, local_of

STEPS = {
    "train.num_steps": 2, "train.checkpoint_every": 1, "train.log_every": 1, "train.eval_every": 2,
    "train.eval_num_images": 1, "train.tensorboard": "tensorboardx", "eval.max_images": 1,
    "sweep.nfe": "1", "sweep.eta": "0"
}


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
        assert any("tfevents" in f for f in os.listdir(os.path.join(local, "tensorboard")))
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
    shutil.copytree(trained_workdir, root / "bucket" / "run",
                    ignore=shutil.ignore_patterns("eval", "sweep"))
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

    from rdbm_jax.runtime import writers

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
        # tensorboardX's own thread writes queued events to the staged file (its flush does not
        # wait for it), so the copy may lag a write by a moment: later due writes publish it.
        deadline = time.monotonic() + 20.0
        while os.path.getsize(os.path.join(local, first)) <= size and time.monotonic() < deadline:
            time.sleep(0.05)
            tb._publish_if_due()
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


def _tree(root, rng) -> None:
    """Paired LQ/GT PNGs (one nested, one hidden), a gray JPEG and a mask, under `root`."""
    from PIL import Image

    for rel in ("lq/a.png", "lq/sub/b.png", "gt/a.png", "gt/sub/b.png", "lq/.hidden/c.png"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(path)
    Image.fromarray(rng.integers(0, 256, (20, 24), np.uint8)).save(root / "lq" / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 24), np.uint8)).save(root / "gt" / "gray.jpg")
    (root / "masks").mkdir()
    Image.fromarray(np.where(np.arange(24) < 12, 255, 0).astype(np.uint8)[None].repeat(20, 0)
                    ).save(root / "masks" / "a.png")


def test_gs_data_folders_list_and_read_as_local_ones(tmp_path, monkeypatch):
    """data.root and the sources' folders on gs://: listed and decoded through etils.epath (they
    were os.walk'ed and opened as local paths: nothing was found)."""
    from rdbm_jax import data
    from rdbm_jax.data import image_io, masks
    from rdbm_jax.data.spec import source_spec, task_spec
    from rdbm_jax.errors import DataError
    import ml_collections

    bucket = tmp_path / "bucket_root" / "bucket" / "data"
    _tree(bucket, np.random.default_rng(0))
    local = str(bucket)
    with fake_gcs(str(tmp_path / "bucket_root"), monkeypatch):
        url = "gs://bucket/data"
        found = image_io.list_images(url + "/lq", "k")
        assert found == [url + "/lq/a.png", url + "/lq/gray.jpg", url + "/lq/sub/b.png"]
        assert [image_io.relative_stem(p, url + "/lq") for p in found] == \
            [image_io.relative_stem(p, local + "/lq") for p in image_io.list_images(local + "/lq")]
        for name in ("a.png", "gray.jpg", "sub/b.png"):
            np.testing.assert_array_equal(image_io.decode_pixels(f"{url}/lq/{name}"),
                                          image_io.decode_pixels(f"{local}/lq/{name}"))
            assert image_io.probe_size(f"{url}/lq/{name}") == (20, 24)
        np.testing.assert_array_equal(  # a training crop's leading rows only, from a file object
            image_io.decode_pixels(url + "/lq/a.png", rows=lambda h, w: 5),
            image_io.decode_pixels(local + "/lq/a.png")[:5])
        assert image_io.is_gray_file(url + "/lq/gray.jpg")
        assert not image_io.is_gray_file(url + "/lq/a.png")
        np.testing.assert_array_equal(masks.load_mask(url + "/masks/a.png", 20, 24),
                                      masks.load_mask(local + "/masks/a.png", 20, 24))
        with pytest.raises(DataError, match=r"image folder not found: gs://bucket/data/nope \(k\)"):
            image_io.list_images(url + "/nope", "k")
        with pytest.raises(DataError, match=r"image file not found: gs://bucket/data/lq/x\.png"):
            image_io.decode_pixels(url + "/lq/x.png")
        # A restored image written to gs:// reads back as the local write does.
        img = np.linspace(-1, 1, 20 * 24 * 3, dtype=np.float32).reshape(20, 24, 3)
        image_io.save_image(url + "/out/r.png", img)
        image_io.save_image(str(tmp_path / "r.png"), img)
        np.testing.assert_array_equal(image_io.decode_pixels(url + "/out/r.png"),
                                      image_io.decode_pixels(str(tmp_path / "r.png")))

        def eval_pixels(root):
            spec = source_spec(kind="paired", lq_dir="lq", gt_dir="gt")
            cfg = ml_collections.ConfigDict(dict(
                tasks=ml_collections.ConfigDict({"t": task_spec(train=spec, eval=spec)}), root=root,
                crop_size=16, flip="both", num_workers=0, prefetch_buffer=2, skip_bad_files=False))
            (source,) = data.build_eval_sources(cfg).values()
            examples = (source[i] for i in range(len(source)))
            return [(ex["name"], ex["mu"], ex["x0"]) for ex in examples]

        remote, here = eval_pixels(url), eval_pixels(local)  # data.root on gs:// and local
        # A missing gs:// data folder is a config error before any run writes (it was skipped).
        from rdbm_jax.data import spec as data_spec
        from rdbm_jax.errors import ConfigError
        good, bad = (source_spec(kind="clean", dir=d, degradation="noise") for d in ("lq", "nope"))
        cfg = ml_collections.ConfigDict(dict(root=url, tasks=ml_collections.ConfigDict(
            {"t": task_spec(train=good, eval=bad)})))
        data_spec.check_folders(cfg, ("train",))
        with pytest.raises(ConfigError, match=r"gs://bucket/data/nope \(data\.tasks\.t\.eval\.dir"):
            data_spec.check_folders(cfg, ("train", "eval"))
        assert [r[0] for r in remote] == [h[0] for h in here] == ["a", "gray", "sub/b"]
        for r, h in zip(remote, here):
            np.testing.assert_array_equal(r[1], h[1])
            np.testing.assert_array_equal(r[2], h[2])
    assert not os.path.exists("gs:")


def test_gs_sample_folders_restore_like_local_ones(trained_workdir, tmp_path, monkeypatch):
    """sample.input_dir, sample.mask_dir and sample.output_dir on gs://: the same PNGs as a local
    run (the folders were refused as missing); an output folder inside the input refused."""
    from PIL import Image

    from rdbm_jax import restore_files
    from rdbm_jax.errors import ConfigError

    bucket = tmp_path / "bucket_root" / "bucket" / "data"
    _tree(bucket, np.random.default_rng(1))
    local_in, local_out = str(bucket / "lq"), str(tmp_path / "out")
    restore_files.run_restore_files(
        config(**{"sample.input_dir": local_in, "sample.output_dir": local_out,
                  "sample.batch_size": 4}),
        trained_workdir)
    with fake_gcs(str(tmp_path / "bucket_root"), monkeypatch):
        url_in, url_out = "gs://bucket/data/lq", "gs://bucket/restored"
        cfg = config(**{"sample.input_dir": url_in, "sample.output_dir": url_out,
                        "sample.batch_size": 4})
        assert restore_files.run_restore_files(cfg, trained_workdir)["restored"] == 3
        again = restore_files.run_restore_files(cfg, trained_workdir)
        assert again == {"restored": 0, "skipped": 3, "failed": []}
        for name in ("a.png", "gray.png", "sub/b.png"):
            mine = Image.open(local_of(f"{url_out}/{name}"))
            theirs = Image.open(os.path.join(local_out, name))
            assert mine.mode == theirs.mode  # gray in, gray out
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
        model = rdbm_jax.load(trained_workdir)  # the API restores a gs:// file as a local one
        np.testing.assert_array_equal(np.asarray(model.restore(url_in + "/a.png", num_steps=1)),
                                      np.asarray(model.restore(local_in + "/a.png", num_steps=1)))
        assert restore_files._mask_file("gs://bucket/data/masks", url_in, url_in + "/a.png") == \
            "gs://bucket/data/masks/a.png"
        with pytest.raises(ConfigError, match="is inside sample.input_dir"):
            restore_files.check_folders(url_in, url_in + "/restored")
        with pytest.raises(ConfigError, match="is the input folder"):
            restore_files.check_folders(url_in, url_in + "/")
        # a sibling whose name extends the input's
        restore_files.check_folders(url_in, url_in + "2")
        with pytest.raises(ConfigError, match="sample.input_dir: folder not found"):
            restore_files.run_restore_files(config(**{"sample.input_dir": "gs://bucket/none",
                                                      "sample.output_dir": url_out}),
                                            trained_workdir)
    assert not os.path.exists("gs:")


def test_gs_perceptual_files_read_and_write(tmp_path, monkeypatch):
    """eval.fid_ref_stats, the LPIPS/Inception weight files and the FID statistics CLI's --out on
    gs:// (they were os.path.isfile'd and open()ed as local paths)."""
    from rdbm_jax.errors import DataError
    from rdbm_jax.evaluation.perceptual import fid, weights

    rng = np.random.default_rng(0)
    mu, sigma = fid.compute_statistics(rng.normal(size=(10, 3)))
    with fake_gcs(str(tmp_path / "bucket_root"), monkeypatch):
        fid.save_stats("gs://bucket/stats/ref.npz", mu, sigma)
        got = fid.load_stats("gs://bucket/stats/ref.npz")
        np.testing.assert_array_equal(got[0], mu)
        np.testing.assert_array_equal(got[1], sigma)
        weights.save_npz("gs://bucket/w/lpips.npz", {"meta/kind": np.asarray("lpips"), "a": mu})
        assert set(weights.load_npz("gs://bucket/w/lpips.npz")) == {"meta/kind", "a"}
        with pytest.raises(DataError, match=r"gs://bucket/none\.npz \(eval\.fid_ref_stats\)"):
            fid.load_stats("gs://bucket/none.npz")
        with pytest.raises(DataError, match=r"weight file not found: gs://bucket/none\.npz \(k\)"):
            weights.load_npz("gs://bucket/none.npz", "k")
    assert os.path.isfile(local_of("gs://bucket/stats/ref.npz"))
    assert not os.path.exists("gs:")
