"""Workarounds for how orbax-checkpoint 0.12.8 reports failures: one-line reasons, quiet logs."""
# Workarounds for orbax-checkpoint 0.12.8 (the tested version; setup.py bounds it below 0.13).
# All concern how orbax *reports* a failed save or read, never what is saved or restored: orbax
# logs background-save errors instead of raising them, prints multi-line error logs from its
# threads, and leaves coroutines and reader threads behind after a failure. Re-check each one
# when raising the bound; delete it once orbax behaves. (rdbm_jax.main drops one more symptom,
# "Event loop is closed" from reader threads, for the whole command-line process.)
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import sys
import threading
import time
import warnings
from typing import Iterator

import orbax.checkpoint as ocp


def reason(e: BaseException) -> str:
    """A short one-line description of an exception: the OS error and the file where one is known
    (an OSError, or tensorstore's "…local file "F"… [os_error_code='N']" messages)."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"{seen.strerror}" + (f": {seen.filename}" if seen.filename else "")
        seen = seen.__cause__ or seen.__context__
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    files = re.findall(r'(?:Failed writing:|local file) "([^"]+)"', text)
    code = re.search(r"os_error_code='(\d+)'", text)
    status = re.match(r"([A-Z][A-Z_]{3,}): ", text)  # a tensorstore status such as DATA_LOSS
    if code:
        what = os.strerror(int(code.group(1)))
    elif status and status.group(1) == "RESOURCE_EXHAUSTED":
        what = "out of disk space or quota (RESOURCE_EXHAUSTED)"
    elif status and files:
        what = f"{status.group(1)}"
    else:
        return f"{type(e).__name__}: {text}"[:300]
    return what + (f": {files[-1]}" if files else "")


class Manager(ocp.CheckpointManager):
    """orbax's manager, keeping the error of a failed background save (orbax only logs it)."""

    # Why: an async save that fails in orbax's thread reaches check_for_errors(), which logs and
    # re-raises inside orbax's own machinery; the exception is kept here so that save() can report
    # the real cause (disk full, permission) in one line instead of a generic failure.

    save_error: BaseException | None = None

    def check_for_errors(self):
        try:
            super().check_for_errors()
        except Exception as e:  # noqa: BLE001 — kept and reported by Checkpointer.save
            self.save_error = e
            raise


class QuietOrbaxErrors(logging.Filter):
    """Drops orbax's multi-line error logs while a save runs: a failure is reported in one line."""

    # Why: orbax logs a failure through absl (with its traceback) from several threads, and the
    # standard says bad input or a fault is one line; the records are kept, because a save whose
    # only sign of failure is such a log record must still fail.

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        if record.levelno >= logging.ERROR:
            self.records.append(record)
            return False
        # The save is waited for on purpose (see Checkpointer.save); its time is logged once.
        return "Waiting for previous save" not in record.getMessage()


@contextlib.contextmanager
def quiet_orbax() -> Iterator[QuietOrbaxErrors]:
    """Hide orbax's multi-line error logs in this block (the caller reports the failure in one
    line)."""
    quiet = QuietOrbaxErrors()
    logging.getLogger("absl").addFilter(quiet)
    try:
        yield quiet
    finally:
        logging.getLogger("absl").removeFilter(quiet)


def retrieve_abandoned_errors() -> int:
    """Retrieve the exceptions of finished asyncio futures whose event loop is closed; how many."""
    # Why: orbax runs each save's writes in a fresh event loop (`loop.run_until_complete`, then
    # `close`). When one write fails, the loop stops at once, and the writes that fail in that last
    # iteration never reach the `gather` awaiting them: their exceptions (the same disk-full error
    # already reported in one line) stay unretrieved, and asyncio logs "Task exception was never
    # retrieved" with a traceback per write whenever the garbage collector happens to free them,
    # often after our message. Nothing can await a future of a closed loop any more, so reading
    # its exception here handles it for good.
    retrieved = 0
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Future) and obj.done() and not obj.cancelled() and \
                obj.get_loop().is_closed():
            obj.exception()
            retrieved += 1
    return retrieved


def collect_leftovers() -> None:
    """Collect what a failed orbax call left behind (un-awaited coroutines, callbacks on a closed
    event loop, unretrieved exceptions of its writes) now and silently."""
    # Why: after a failed save or read, orbax's coroutines are only garbage-collected at some later
    # point, where they print "coroutine was never awaited" warnings and unraisable errors after
    # our one-line message; collecting them here, with both channels muted, keeps the output clean.
    def drop(unraisable):
        del unraisable

    old_hook = sys.unraisablehook
    sys.unraisablehook = drop
    try:
        retrieve_abandoned_errors()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()
    finally:
        sys.unraisablehook = old_hook


def join_new_threads(before: set, timeout: float) -> None:
    """Wait (at most `timeout` s in all) for the threads started since `before` was taken.

    `threading.enumerate()` also lists threads whose start() has not reached their run loop yet;
    joining one of those raises RuntimeError, so it is retried until it runs (or the time is up).
    """
    # Why: when orbax's save raises, its writer threads can still be writing the failed step's
    # files; removing the partial folders before they stop would race with them.
    deadline = time.time() + timeout
    for t in set(threading.enumerate()) - before:
        while t is not threading.current_thread():
            try:
                t.join(max(0.0, deadline - time.time()))
                break
            except RuntimeError:  # "cannot join thread before it is started": still starting
                if time.time() >= deadline:
                    break
                time.sleep(0.01)


