"""The experiments' result tables: CSV files that grow one evaluated point at a time, each write
atomic (temp + rename), each read checked (header, numbers finite where a number is due)."""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

from rdbm_jax.runtime import atomic
from rdbm_jax.errors import DataError


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
