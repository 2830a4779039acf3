"""How benchmark runs are timed and recorded: environment, timing windows, JSON, table cells."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import jax

from rdbm_jax.runtime import atomic


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001 — not installed (or no metadata): report None
        return None


def torch_device_name() -> str | None:
    """The CUDA device name PyTorch sees, "cpu" without CUDA, None without torch."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def environment(device_name: str | None = None) -> dict[str, Any]:
    """Device (jax device_kind, platform, count; torch device), versions and UTC date of this
    run."""
    dev = jax.devices()[0]
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_name": device_name or dev.device_kind,
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "torch_device": torch_device_name(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in
                     ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "numpy")},
    }


def time_windows(run: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int, steps: int,
                 window: int) -> dict[str, Any]:
    """Seconds per call: `warmup` calls, then windows of `window` calls, each window between two
    syncs.

    The window's time / `window` is one sample; the median over ⌈steps / window⌉ windows is
    reported.
    """
    if warmup < 0 or steps < 1 or window < 1:
        raise ValueError(f"time_windows: warmup={warmup}, steps={steps}, window={window}: need "
                         "warmup ≥ 0, steps ≥ 1, window ≥ 1")
    out = None
    for _ in range(warmup):
        out = run()
    sync(out)
    samples = []
    for _ in range(max(1, -(-steps // window))):
        t0 = time.perf_counter()
        for _ in range(window):
            out = run()
        sync(out)
        samples.append((time.perf_counter() - t0) / window)
    return {"median_s": statistics.median(samples), "min_s": min(samples),
            "mean_s": statistics.fmean(samples), "windows": len(samples), "window": window,
            "calls": len(samples) * window}


def jax_sync(x: Any) -> Any:
    """Block until every array in `x` is computed."""
    return jax.block_until_ready(x)


def guarded(keep_going: bool, errors: list[str], label: str, fn: Callable[[], Any]) -> Any:
    """fn(); with keep_going an exception is printed and recorded in `errors` (→ None) instead."""
    if not keep_going:
        return fn()
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 — one failed configuration must not lose the others
        traceback.print_exc()
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        errors.append(f"{label}: {type(e).__name__}: {first}")
        return None


def write_json(path: str, data: Any) -> None:
    """Write `data` as indented JSON, atomically (folders created)."""
    atomic.write_text(path, json.dumps(data, indent=2, default=str))


def fmt(value: float | None, scale: float = 1.0, digits: int = 1, pct: bool = False) -> str:
    """A table cell: value/scale with `digits` decimals (or a percentage); "–" for missing
    values."""
    if value is None:
        return "–"
    if pct:
        return f"{100.0 * value:.{digits}f}%"
    return f"{value / scale:.{digits}f}"
