"""JSON as every file we write holds it: strict (RFC 8259), so NaN and ±Infinity, which Python's
json writes as bare tokens other readers refuse, are written as null ("not a number")."""
from __future__ import annotations

import json
import math
from typing import Any


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (Python or numpy) replaced by None, containers
    copied."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):  # numpy float64 is a float too
        return None
    if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # numpy/jax scalars
        item = value.item()
        return None if isinstance(item, float) and not math.isfinite(item) else item
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps with NaN/Infinity written as null and allow_nan=False (nothing non-strict
    slips through)."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)
