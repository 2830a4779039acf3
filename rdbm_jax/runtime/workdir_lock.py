"""One training run per workdir: an exclusive `flock` on `workdir/.lock` naming its holder.

The kernel releases the lock when its holder dies (even on `kill -9`), so a lock file still naming
a holder that we could lock anyway belonged to a dead run: it is taken over with a notice.
Local and NFS-like filesystems only; object stores (gs://…) have no locks, so none is taken there.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import time

from rdbm_jax.errors import TrainingError

log = logging.getLogger("rdbm_jax")

LOCK_NAME = ".lock"


def _describe(holder: dict) -> str:
    """'host H, pid P, since T' of a lock file's contents."""
    since = holder.get("since")
    when = (datetime.datetime.fromtimestamp(since).astimezone().isoformat(timespec="seconds")
            if isinstance(since, (int, float)) else "an unknown time")
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {when}"


class WorkdirLock:
    """Context manager: hold `workdir/.lock` for the duration of a training run."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def _read_holder(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096).decode("utf-8", "replace").strip()
        try:
            holder = json.loads(raw) if raw else {}
        except ValueError:
            holder = {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        """Take the lock, or raise a one-line TrainingError naming the run that holds it."""
        if "://" in self.workdir:
            log.info(
                "workdir %s is on an object store: no lock is taken (do not start two runs on it)",
                self.workdir)
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TrainingError(
                f"cannot create the workdir lock {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = {}
            for _ in range(20):  # the holder writes its name right after locking
                holder = self._read_holder(fd)
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise TrainingError(f"workdir {self.workdir} is in use by another training run "
                                f"({_describe(holder)}; lock file {self.path})") from None
        stale = self._read_holder(fd)
        if stale:
            log.warning("taking over the lock %s of a run that ended without releasing it (%s)",
                        self.path, _describe(stale))
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empty the lock file (a clean exit leaves no holder behind) and unlock it."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
