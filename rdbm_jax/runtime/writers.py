"""Metric writers: JSONL + PNG always; TensorBoard event files through tensorboardX (no TensorFlow)
or clu."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Mapping

import numpy as np

from rdbm_jax.runtime import paths, strict_json
from rdbm_jax.errors import ConfigError, TrainingError

log = logging.getLogger("rdbm_jax")

# train.tensorboard: event-file writer besides metrics.jsonl
WRITERS = ("tensorboardx", "clu", "none")


class JsonlWriter:
    """Appends scalars to `workdir/metrics.jsonl` (one JSON object a line), logs them, writes PNGs.

    `resume_step`: the step training restarts from; rows logged after it by an interrupted run are
    dropped first, so the file reads like an uninterrupted run's.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = paths.join(workdir, "metrics.jsonl")
        self.image_dir = paths.join(workdir, "samples")
        truncate_jsonl(self.path, resume_step)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        try:
            paths.append_text(self.path, strict_json.dumps(row) + "\n")
        except OSError as e:
            raise TrainingError(f"cannot write {self.path}: {e.strerror or e}") from None
        log.info("step %d: %s", step,
                 "  ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "step"))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """[0, 1] images → `samples/step_N.png` (key "grid") or `samples/<key>_step_N.png`."""
        for name, img in images.items():
            arr = np.asarray(img)
            arr = arr[0] if arr.ndim == 4 else arr
            stem = f"step_{int(step)}" if name == "grid" else f"{name}_step_{int(step)}"
            paths.save_png(paths.join(self.image_dir, stem + ".png"), _to_uint8(arr))

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Texts (the resolved config) go to TensorBoard only; config.json holds it here."""
        del step, texts

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    """Fans every call out to several writers: scalars, images, flush, close (the part of clu's
    MetricWriter interface the training loop uses)."""

    def __init__(self, writers: list):
        self.writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for w in self.writers:
            w.write_images(step, images)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for w in self.writers:
            w.write_texts(step, texts)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


class NullWriter(MultiWriter):
    """What processes other than 0 get: writes nothing."""

    def __init__(self):
        super().__init__([])


def truncate_jsonl(path: str, resume_step: int) -> None:
    """Keep only the rows of a JSONL log with step ≤ `resume_step` (atomic rewrite; torn lines
    dropped)."""
    if not paths.as_path(path).exists():
        return
    kept, dropped = [], 0
    for line in paths.as_path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            row = json.loads(line)
            keep = int(row["step"]) <= resume_step
        except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
            keep = False
        if keep:
            kept.append(line if line.endswith("\n") else line + "\n")
        else:
            dropped += 1
    if not dropped:
        return
    paths.write_text(path, "".join(kept))
    log.info("%s: dropped %d row(s) logged after step %d (resuming there)", path, dropped,
             resume_step)


def create_writer(workdir: str, is_main: bool = True, tensorboard: str = "tensorboardx",
                  resume_step: int = 0) -> MultiWriter:
    """JSONL/PNG writer plus TensorBoard event files in `workdir/tensorboard` (process 0 only).

    tensorboard: "tensorboardx" (no TensorFlow), "clu" (clu's TensorFlow writer; the `tensorboard`
    extra) or "none". `resume_step` is the step training (re)starts from: every writer drops what
    was logged after it (JSONL rows are cut; TensorBoard readers purge events from resume_step + 1).
    """
    if not is_main:
        return NullWriter()
    writers: list = [JsonlWriter(workdir, resume_step)]
    logdir = os.path.join(workdir, "tensorboard")
    purge_step = resume_step + 1 if resume_step else None
    if tensorboard == "tensorboardx":
        writers.append(TensorBoardXWriter(logdir, purge_step=purge_step))
    elif tensorboard == "clu":
        try:  # clu.metric_writers imports TensorFlow at package import.
            from clu import metric_writers  # type: ignore
        except ImportError:
            raise ConfigError(
                "train.tensorboard='clu' needs TensorFlow (pip install .[tensorboard]); "
                "'tensorboardx' needs none") from None
        if purge_step is not None and os.path.isdir(logdir):  # a resumed (or restarted) run
            write_purge_marker(logdir, purge_step)
        writers.append(_ClipImages(metric_writers.SummaryWriter(logdir)))
    return MultiWriter(writers)


class _ClipImages:
    """Adapts a clu writer: images as uint8 [N, H, W, C] as TensorBoard expects."""

    def __init__(self, writer: Any):
        self.writer = writer

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self.writer.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        self.writer.write_images(step, {k: _to_uint8(np.asarray(v))[None] if np.asarray(v).ndim == 3
                                        else _to_uint8(np.asarray(v)) for k, v in images.items()})

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self.writer.write_texts(step, texts)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_purge_marker(logdir: str, step: int) -> None:
    """An event file holding a SessionLog START at `step`: TensorBoard then drops the events of
    `logdir` at steps ≥ `step` from earlier files (the marker tensorboardX writes for
    `purge_step`)."""
    from tensorboard.compat.proto import event_pb2  # installed with TensorFlow
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(logdir)
    writer.add_event(
        event_pb2.Event(step=step, wall_time=time.time(),
                        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    writer.close()
    # Event files are read in name order, and names start with the creation second: let the files of
    # the resumed run sort after the marker.
    time.sleep(1.0 - time.time() % 1.0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float (or uint8) → uint8."""
    if img.dtype == np.uint8:
        return img
    return np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


class TensorBoardXWriter:
    """Writes TensorBoard event files with tensorboardX (no TensorFlow) into `logdir`.

    The interface MultiWriter fans out (scalars, images, flush, close): all the loop writes.

    `purge_step`: a run resumed from a checkpoint passes the first step it will write again;
    TensorBoard then discards the interrupted run's events at and after that step.

    An object-store `logdir` (gs://, s3://): tensorboardX reaches those only through its own
    clients (google-cloud-storage, boto3), outside the package's one path type, so events are
    written to a local staging folder and each changed event file is copied whole to `logdir`
    through `paths` on flush, on close and at writes `PUBLISH_SECS` after the last copy.
    """

    PUBLISH_SECS = 30.0  # how far an object-store copy may lag (tensorboardX's own flush_secs)

    def __init__(self, logdir: str, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        remote = paths.is_remote(logdir)
        self._staging = tempfile.mkdtemp(prefix="rdbm_tensorboard_") if remote else None
        self._published: dict[str, int] = {}  # staged file → size last copied
        self._last_publish = time.monotonic()
        # A nanosecond suffix: two writers opened within one second get distinct files, read in
        # order.
        self._writer = SummaryWriter(self._staging or logdir, purge_step=purge_step,
                                     flush_secs=30,
                                     filename_suffix=f".{time.time_ns()}")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, float(np.asarray(value)), global_step=int(step))
        self._publish_if_due()

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Images [N, H, W, C] or [H, W, C], float in [0, 1] or uint8."""
        for key, value in images.items():
            arr = _to_uint8(value)
            self._writer.add_images(key, arr[None] if arr.ndim == 3 else arr, global_step=int(step),
                                    dataformats="NHWC")
        self._publish_if_due()

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for key, text in texts.items():
            self._writer.add_text(key, text, global_step=int(step))
        self._publish_if_due()

    def flush(self) -> None:
        self._writer.flush()
        self._publish()

    def close(self) -> None:
        self._writer.close()
        self._publish()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def _publish_if_due(self) -> None:
        if self._staging is not None and time.monotonic() - self._last_publish >= self.PUBLISH_SECS:
            self.flush()

    def _publish(self) -> None:
        """Copy each staged event file that grew since its last copy to `logdir` (whole objects:
        object stores have no append; each writer's file name is its own, so none is overwritten
        but this writer's)."""
        if self._staging is None:
            return
        self._last_publish = time.monotonic()
        for folder, _, names in os.walk(self._staging):
            for name in sorted(names):
                local = os.path.join(folder, name)
                relative = os.path.relpath(local, self._staging)
                with open(local, "rb") as f:
                    data = f.read()
                if self._published.get(relative) == len(data):
                    continue
                target = paths.join(self.logdir, *relative.split(os.sep))
                try:
                    paths.write_bytes(target, data)
                except OSError as e:
                    raise TrainingError(f"cannot write {target}: {e.strerror or e}") from None
                self._published[relative] = len(data)
