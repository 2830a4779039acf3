"""The experiments' result tables: CSV files that grow one evaluated point at a time, each write
atomic (temp + rename), each read checked (header, numbers finite where a number is due).

Two runs may write one table at once (say the study's configurations side by side): `add_rows`
re-reads the file under a lock before it appends, so neither run's rows are written over."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import math
import os
from typing import Any, Iterator, Sequence

import ml_collections

from rdbm_jax.runtime import atomic
from rdbm_jax.errors import DataError

log = logging.getLogger("rdbm_jax")


# Config sections no experiment reads (--mode=sweep's grid, --mode=app's page): left out of the
# settings hash, so changing their defaults does not orphan recorded results.
NOT_IN_SETTINGS = ("sweep", "app")


def what_matters(config: dict[str, Any]) -> dict[str, Any]:
    """A config's sections as a dict, bar NOT_IN_SETTINGS: what makes an experiment's numbers."""
    return {k: v for k, v in config.items() if k not in NOT_IN_SETTINGS}


def settings_hash(cfg: ml_collections.ConfigDict, *extra: Any) -> str:
    """A short hash of what makes a recorded row's numbers: the config (`what_matters`) and the
    experiment's own settings (`extra`: points, NFEs, sizes)."""
    settings = what_matters(json.loads(cfg.to_json_best_effort(sort_keys=True)))
    doc = json.dumps([settings, *extra], sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def read_rows(path: str, fields: Sequence[str], numeric: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a results CSV ([] when absent); `numeric` columns as floats (an empty cell is
    NaN: not measured). A file with other columns or a non-number is refused (DataError naming
    it), never overwritten."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if list(reader.fieldnames or []) != list(fields):
            raise DataError(f"{path}: not this experiment's results file (columns "
                            f"{reader.fieldnames} ≠ {list(fields)}); use another --out-dir")
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        for key in numeric:
            text = row[key]
            try:
                row[key] = float(text) if text != "" else math.nan
            except ValueError:
                raise DataError(f"{path}, line {i}: {key}={text!r} is not a number") from None
            if math.isinf(row[key]):
                raise DataError(f"{path}, line {i}: {key}={text!r} is not finite")
    return rows


def append_rows(path: str, fields: Sequence[str], old: list[dict[str, Any]],
                new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write `old` + `new` to `path` in one atomic replace; returns all rows. A NaN is written as
    an empty cell (not measured)."""
    rows = list(old) + list(new)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(fields), extrasaction="raise")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v
                    for k, v in ((k, row.get(k, math.nan)) for k in fields)})
    atomic.write_text(path, text.getvalue())
    return rows


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path`.lock while the table is re-read and replaced; the
    kernel drops it if the holder dies. Object stores have no locks: none is taken there."""
    if "://" in path:
        yield
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"{path}.lock: cannot create ({e.strerror or e})") from None
    try:
        # blocking: another writer holds it only for one read and one atomic replace
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def add_rows(path: str, fields: Sequence[str], numeric: Sequence[str],
             new: list[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """Append `new` to the table as it is on disk now (another run may have added rows since we
    read it); returns all rows. A new row whose `key` is already there is dropped with a warning:
    the first measurement of a point stands."""
    with _locked(path):
        rows = read_rows(path, fields, numeric)

        def point(row: dict[str, Any]) -> tuple:
            # as read back: numbers as floats (a new row may hold ints), the rest as text
            return tuple(float(row[k]) if k in numeric else str(row[k]) for k in key)

        have = {point(r) for r in rows}
        fresh = [r for r in new if point(r) not in have]
        if len(fresh) < len(new):
            log.warning("%s: %d row(s) already measured by another run were not added", path,
                        len(new) - len(fresh))
        return append_rows(path, fields, rows, fresh)
