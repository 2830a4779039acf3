"""Atomic file writes: a temporary file beside the target, then one rename (a kill never leaves a
half-written or empty file under the final name; the previous file survives until the rename)."""
from __future__ import annotations

import contextlib
import os
import re
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"
# `.<name>.<pid>.tmp`: the temporary files `temp_path` makes (found again by `remove_stale`).
_TMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")


def temp_path(path: str) -> str:
    """The temporary name `path` is written under before its rename (hidden, same folder)."""
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on any
    failure it is removed and `path` is left as it was."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open(path, mode)` whose content appears under `path` only when the block ends cleanly."""
    with replacing(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible


def write_bytes(path: str, blob: bytes) -> None:
    """Write `blob` to `path` atomically."""
    with open_atomic(path, "wb") as f:
        f.write(blob)


def write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with open_atomic(path, "w", encoding="utf-8") as f:
        f.write(text)


def remove_stale(folder: str) -> int:
    """Remove the temporary files that killed writers left under `folder` (recursive); returns how
    many. Only names `temp_path` makes are touched: a user's own `.tmp` files are not."""
    removed = 0
    for root, _, files in os.walk(folder):
        for f in files:
            if _TMP_NAME.match(f):
                os.remove(os.path.join(root, f))
                removed += 1
    return removed
