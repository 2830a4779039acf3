"""Metric writers: JSONL + PNG always, clu's TensorBoard writer too when TensorFlow is installed."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import numpy as np
from PIL import Image

log = logging.getLogger("rdbm_jax")


class JsonlWriter:
    """Appends scalars to `workdir/metrics.jsonl` (one JSON object a line), logs them, writes PNGs."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.image_dir = os.path.join(workdir, "samples")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        log.info("step %d: %s", step, "  ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "step"))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """[0, 1] images → `samples/step_N.png` (key "grid") or `samples/<key>_step_N.png`."""
        os.makedirs(self.image_dir, exist_ok=True)
        for name, img in images.items():
            arr = np.asarray(img)
            arr = arr[0] if arr.ndim == 4 else arr
            stem = f"step_{int(step)}" if name == "grid" else f"{name}_step_{int(step)}"
            path = os.path.join(self.image_dir, stem + ".png")
            Image.fromarray(_to_uint8(arr)).save(path)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    """Fans every call out to several writers (same interface as clu's MetricWriter)."""

    def __init__(self, writers: list):
        self.writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for w in self.writers:
            w.write_images(step, images)

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


def create_writer(workdir: str, is_main: bool = True) -> MultiWriter:
    """JSONL/PNG writer, plus TensorBoard through clu when TensorFlow imports (process 0 only)."""
    if not is_main:
        return NullWriter()
    writers: list = [JsonlWriter(workdir)]
    try:  # clu.metric_writers imports TensorFlow at package import.
        from clu import metric_writers  # type: ignore
        writers.append(_ClipImages(metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))))
    except ImportError:
        log.info("TensorFlow not installed: metrics go to %s only (pip install .[tensorboard] for "
                 "TensorBoard)", os.path.join(workdir, "metrics.jsonl"))
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

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float (or uint8) → uint8."""
    if img.dtype == np.uint8:
        return img
    return np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
