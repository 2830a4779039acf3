"""Workdir files of every mode and the API through one path type, etils.epath (as orbax): local
folders and object stores (gs://, s3://) alike.

Every write lands whole: a local file is written beside its final name and renamed; an object
store publishes an object only when its upload completes, so a plain write is all-or-nothing.
"""
from __future__ import annotations

import io
import os

import numpy as np
from etils import epath
from PIL import Image

from rdbm_jax import atomic


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is an object-store URL (gs://…, s3://…) rather than a local path."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path (local paths made absolute)."""
    text = os.fspath(path)
    return epath.Path(text if is_remote(text) else os.path.abspath(text))


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base`/`parts`… as a string, for local paths and URLs alike."""
    return os.fspath(as_path(base).joinpath(*parts))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` whole (parents created; see the module docstring)."""
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        target.write_bytes(data)
        return
    atomic.write_bytes(os.fspath(target), data)  # temp file + rename


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` whole."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` to a log file. Object stores have no append: the object is rewritten whole
    (metrics logs hold a few hundred bytes per logged step)."""
    target = as_path(path)
    if not is_remote(path):
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = target.read_text(encoding="utf-8") if target.exists() else ""
    target.write_text(old + text, encoding="utf-8")


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """A uint8 image [H, W(, 3)] as a PNG file, written whole."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
