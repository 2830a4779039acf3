"""TensorBoard event files without TensorFlow (read back with TensorBoard's own reader), and
curves.png."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from rdbm_jax import config as config_lib
from rdbm_jax.runtime import curves, writers
from rdbm_jax.errors import ConfigError
from tests.helpers import config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(logdir: str):
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboardx_writer_reads_back(tmp_path):
    # the default: tensorboardX, no TensorFlow
    w = writers.create_writer(str(tmp_path), is_main=True)
    w.write_scalars(5, {"train/loss": np.float32(0.25), "val/psnr": 21.5})
    w.write_images(5, {"grid": np.linspace(0, 1, 8 * 12 * 3, dtype=np.float32).reshape(8, 12, 3)})
    w.close()
    assert [type(x) for x in w.writers] == [writers.JsonlWriter, writers.TensorBoardXWriter]
    acc = read_events(str(tmp_path / "tensorboard"))
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("train/loss")] == [(5, 0.25)]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("val/psnr")] == [(5, 21.5)]
    (img,) = acc.Images("grid")
    assert (img.step, img.width, img.height) == (5, 12, 8)
    decoded = np.asarray(Image.open(__import__("io").BytesIO(img.encoded_image_string)))
    expected = np.rint(np.linspace(0, 1, 8 * 12 * 3).reshape(8, 12, 3) * 255).astype(np.uint8)
    np.testing.assert_array_equal(decoded, expected)


def test_purge_step_makes_a_resumed_history_read_once(tmp_path):
    logdir = str(tmp_path)
    first = writers.TensorBoardXWriter(logdir)
    for step in range(10, 51, 10):
        first.write_scalars(step, {"loss": 1.0, "grad_norm": 1.0})
    first.close()
    # resumed from a checkpoint at step 30
    resumed = writers.TensorBoardXWriter(logdir, purge_step=30)
    for step in range(30, 51, 10):
        resumed.write_scalars(step, {"loss": 2.0})  # e.g. no longer logs grad_norm
    resumed.close()
    assert len([f for f in os.listdir(logdir) if "tfevents" in f]) == 2
    acc = read_events(logdir)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(10, 1.0), (20, 1.0), (30, 2.0),
                                                                (40, 2.0), (50, 2.0)]
    assert [e.step for e in acc.Scalars("grad_norm")] == [10, 20]  # stale 30–50 gone too


def test_bad_backend_and_gating(tmp_path):
    with pytest.raises(ConfigError, match="train.tensorboard"):
        config_lib.validate(config(**{"train.tensorboard": "tensorflow"}))
    silent = writers.create_writer(str(tmp_path / "x"), is_main=False)
    silent.write_scalars(1, {"a": 1.0})
    assert not os.path.exists(tmp_path / "x")
    only_jsonl = writers.create_writer(str(tmp_path), tensorboard="none")
    only_jsonl.write_scalars(1, {"a": 1.0})
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


def test_training_writes_events_and_curves_and_resume_reads_once(trained_run, tmp_path):
    """Training on from a 2-step run with validation writes scalars + grids to TensorBoard and
    curves.png; after a crash past its last checkpoint, the resumed history reads each step once."""
    from rdbm_jax import train

    workdir = str(tmp_path / "run")
    shutil.copytree(trained_run, workdir)  # checkpoint and events of steps 1–2
    cfg = config(**{"train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 2})
    train.train_and_evaluate(cfg, workdir)
    acc = read_events(os.path.join(workdir, "tensorboard"))
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/psnr")] == [4]
    assert [e.step for e in acc.Images("grid")] == [4]
    assert "config/text_summary" in acc.Tags()["tensors"]  # the resolved config, as text
    (text,) = acc.Tensors("config/text_summary")
    assert '"num_steps": 2' in text.tensor_proto.string_val[0].decode()  # the fixture run's config
    curves_png = np.asarray(Image.open(os.path.join(workdir, "curves.png")))
    assert curves_png.shape[0] > 300 and curves_png.shape[1] > 800
    assert curves_png[..., :3].std() > 10  # something drawn, not a blank canvas

    # crash after logging 3–4, before saving 4
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    cfg.train.eval_every = 0  # the resumed run validates no more: its history has no val/psnr at 4
    train.train_and_evaluate(cfg, workdir)  # resumes from step 2 again
    acc = read_events(os.path.join(workdir, "tensorboard"))
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/psnr")] == []


def test_curves_add_a_panel_inside_the_holes_when_logged(tmp_path):
    rows = [{"step": s, "train/loss": 1.0 / s, "val/psnr": 25.0, "val/psnr_masked": 20 + s / 10,
             "val/psnr_masked_baseline": 21.0, "val/psnr_masked_input": 3.5} for s in (10, 20)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fig = curves.figure(curves.read_series(str(path), ["train/loss", *curves.PSNR_SERIES,
                                                        *curves.MASKED_SERIES]))
    assert len(fig.axes) == 3 and "inside the holes" in fig.axes[2].get_title()
    assert [line.get_label() for line in fig.axes[2].get_lines()] == ["model (EMA)", "baseline",
                                                                     "degraded input"]
    assert list(fig.axes[2].get_lines()[0].get_ydata()) == [21.0, 22.0]
    assert curves.refresh(str(tmp_path)) and Image.open(tmp_path / "curves.png").size[0] > 1200


def test_curves_plot_every_psnr_series_present(tmp_path):
    rows = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 41)]
    rows += [{
        "step": s, "val/psnr": 20 + s / 10, "val/psnr_baseline": 19 + s / 20, "val/psnr_input": 10.0
    } for s in (10, 20, 30, 40)]
    rows += [{"step": 40, "val/psnr": 30.0}]  # a step logged twice (resume): the last row counts
    path = tmp_path / "metrics.jsonl"
    # cut-short line
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 41, \"tra")
    series = curves.read_series(str(path), ["train/loss", *curves.PSNR_SERIES])
    assert series["val/psnr"] == ([10, 20, 30, 40], [21.0, 22.0, 23.0, 30.0])
    assert set(series) == {"train/loss", "val/psnr", "val/psnr_baseline", "val/psnr_input"}
    assert curves.refresh(str(tmp_path))
    assert Image.open(tmp_path / "curves.png").size[0] > 800
    assert [ax.get_title()
            for ax in curves.figure(series).axes] == ["training loss", "validation PSNR"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not curves.refresh(str(empty)) and not os.path.exists(empty / "curves.png")
