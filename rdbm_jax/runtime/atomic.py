"""Atomic file writes: a temporary file beside the target, then one rename (a kill never leaves a
half-written or empty file under the final name; the previous file survives until the rename)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"
# `.~rdbm-<host>-<pid>-<token>.tmp`: the temporary files `temp_path` makes. A prefix of our own
# (a user's `.notes.2024.tmp` never matches it), the writer's host and pid (so that `remove_stale`
# can tell a killed writer's file from a live one's) and a random token (threads and processes
# never share a name); short whatever the target's name (a 250-byte name stays under 255 bytes).
_PREFIX = ".~rdbm-"
_TMP_NAME = re.compile(r"^\.~rdbm-([0-9a-f]{8})-(\d+)-[0-9a-f]{12}\.tmp$")


def _host() -> str:
    """8 hex digits naming this host (pids are only meaningful on the host that made them)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_path(path: str) -> str:
    """The temporary name `path` is written under before its rename (hidden, same folder, short)."""
    parent = os.path.dirname(os.path.abspath(path))
    return os.path.join(parent,
                        f"{_PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(6)}{TMP_SUFFIX}")


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but not ours, or not askable: never treated as dead
    return True


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on any
    failure it is removed and `path` is left as it was."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename not in (None, tmp):
            raise
        # A write error (a full disk: ENOSPC) names no file, or only our temporary name: name the
        # file being written instead, so that the one-line error says which file it was.
        raise OSError(e.errno, e.strerror or str(e), path) from e
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
    many. Only names `temp_path` makes whose writer is provably gone (made on this host by a pid
    that no longer runs) are removed: a user's own `.tmp` files, a live run's file in flight and
    files another host wrote (its pids are not ours to ask) are left alone."""
    removed, here = 0, _host()
    for root, _, files in os.walk(folder):
        for f in files:
            match = _TMP_NAME.match(f)
            if not match or match.group(1) != here or int(match.group(2)) == os.getpid():
                continue
            if _alive(int(match.group(2))):
                continue
            try:
                os.remove(os.path.join(root, f))
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
            removed += 1
    return removed
