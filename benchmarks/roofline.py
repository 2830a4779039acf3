"""Shared measurement helpers: environment, timing windows, XLA cost analysis, measured peaks, roofline
fractions, the out-of-memory batch search and JSON output.

Roofline model used here: a step cannot take less than max(FLOPs / peak matrix rate, bytes / peak
copy bandwidth); `frac_roofline` is that bound divided by the measured time (1.0 = at the limit).
Both peaks are measured in the same process (`measure_peak`), not taken from a data sheet.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Mapping

# JAX must not grab 75% of a GPU when the PyTorch twin shares the process (set before jax import).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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
    """Device (jax device_kind, platform, count; torch device), versions and UTC date of this run."""
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


def normalize_cost(raw: Any) -> dict[str, float | None]:
    """FLOPs / bytes accessed / transcendentals from a cost_analysis() result (dict, [dict] or None)."""
    if isinstance(raw, (list, tuple)):
        raw = raw[0] if raw else None
    if not isinstance(raw, Mapping):
        raw = {}

    def get(key: str) -> float | None:
        value = raw.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if np.isfinite(value) and value >= 0 else None

    return {"flops": get("flops"), "bytes_accessed": get("bytes accessed"),
            "transcendentals": get("transcendentals")}


def cost_of(compiled: Any) -> dict[str, float | None]:
    """XLA's cost analysis of a compiled executable (`jitted.lower(...).compile()`); None where absent."""
    try:
        raw = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 — some backends do not implement it
        raw = None
    return normalize_cost(raw)


def loop_scaled(cost: Mapping[str, float | None], trips: int,
                analytic_flops: float) -> tuple[float, float | None, str]:
    """(FLOPs, bytes, source) of an executable whose work is a loop of `trips` equal iterations.

    XLA's cost analysis may count a while-loop (lax.scan) body once or `trips` times, depending on
    the backend and version; whichever reading lies closer to the independent MAC count is used.
    Without XLA FLOPs the analytic count is returned (and no bytes). Where XLA counts under half of
    the MAC count (XLA:GPU leaves cuDNN convolutions, library calls, out of its counts) the analytic
    FLOPs replace XLA's, and XLA's bytes, which miss those calls' traffic too, are a lower bound.
    """
    flops, bytes_ = cost.get("flops"), cost.get("bytes_accessed")
    if not flops or analytic_flops <= 0:
        return analytic_flops, None, "analytic (MAC count)"
    source = "xla"
    if trips > 1 and abs(np.log(flops * trips / analytic_flops)) < abs(np.log(flops / analytic_flops)):
        flops, bytes_, source = flops * trips, bytes_ * trips if bytes_ else None, \
            f"xla × {trips} (loop body counted once)"
    if flops < 0.5 * analytic_flops:
        return analytic_flops, bytes_, (f"analytic FLOPs (XLA counted {flops / analytic_flops:.0%}: library "
                                        f"calls left out); bytes: {source}, a lower bound")
    return flops, bytes_, source


def time_windows(run: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int, steps: int,
                 window: int) -> dict[str, Any]:
    """Seconds per call: `warmup` calls, then windows of `window` calls, each window between two syncs.

    The window's time / `window` is one sample; the median over ⌈steps / window⌉ windows is reported.
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


def measure_peak(dtype: str = "bfloat16", matmul_n: int = 8192, copy_mib: int = 1024,
                 calls: int = 20, window: int = 5) -> dict[str, Any]:
    """Measured peak matrix rate (n×n×n matmul, FLOP/s) and copy bandwidth (x + 1, bytes read + written)."""
    if dtype not in DTYPES:
        raise ValueError(f"measure_peak: dtype {dtype!r} not in {sorted(DTYPES)}")
    dt = DTYPES[dtype]
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (matmul_n, matmul_n), dt)
    b = jax.random.normal(kb, (matmul_n, matmul_n), dt)
    matmul = jax.jit(lambda x, y: x @ y)
    jax_sync(matmul(a, b))
    mm = time_windows(lambda: matmul(a, b), jax_sync, warmup=2, steps=calls, window=window)
    n_copy = max(1, copy_mib * 2 ** 20 // 4)
    x = jnp.zeros((n_copy,), jnp.float32)
    copy = jax.jit(lambda v: v + 1.0)
    jax_sync(copy(x))
    cp = time_windows(lambda: copy(x), jax_sync, warmup=2, steps=calls, window=window)
    flops, moved = 2.0 * matmul_n ** 3, 2.0 * n_copy * 4
    return {"matmul_flops_per_s": flops / mm["median_s"], "matmul_n": matmul_n, "matmul_dtype": dtype,
            "copy_bytes_per_s": moved / cp["median_s"], "copy_bytes": moved,
            "method": f"median of {mm['windows']} windows × {window} calls; matmul {matmul_n}³ {dtype} "
                      f"(2n³ FLOPs); copy v+1 over {n_copy * 4 / 2 ** 20:.0f} MiB float32 "
                      "(bytes read + written)"}


def roofline(flops: float | None, bytes_moved: float | None, seconds: float,
             peak: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Achieved FLOP/s and bytes/s, their fractions of the measured peaks, and the roofline fraction."""
    out: dict[str, float | None] = {"achieved_flops_per_s": None, "frac_peak_matmul": None,
                                    "achieved_bytes_per_s": None, "frac_peak_bandwidth": None,
                                    "frac_roofline": None, "bound": None}
    if seconds <= 0:
        return out
    peak = peak or {}
    pf, pb = peak.get("matmul_flops_per_s"), peak.get("copy_bytes_per_s")
    if flops:
        out["achieved_flops_per_s"] = flops / seconds
        out["frac_peak_matmul"] = flops / seconds / pf if pf else None
    if bytes_moved:
        out["achieved_bytes_per_s"] = bytes_moved / seconds
        out["frac_peak_bandwidth"] = bytes_moved / seconds / pb if pb else None
    t_compute = flops / pf if flops and pf else 0.0
    t_memory = bytes_moved / pb if bytes_moved and pb else 0.0
    if t_compute or t_memory:
        out["frac_roofline"] = max(t_compute, t_memory) / seconds
        out["bound"] = "compute" if t_compute >= t_memory else "memory"
    return out


def memory_of(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis of an executable (argument, output, alias, temp bytes), None if absent."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 — some backends do not implement it
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
             "temp_size_in_bytes", "generated_code_size_in_bytes")
    out = {n: int(getattr(m, n)) for n in names if isinstance(getattr(m, n, None), int)}
    return out or None


def free_device_bytes() -> tuple[int | None, str]:
    """(bytes JAX may still allocate on the first device, where the figure comes from); None on CPU."""
    free_torch_memory()  # also collects the states of earlier configurations
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), "jax memory_stats"
    try:
        import torch
        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0]), "torch.cuda.mem_get_info"
    except ImportError:
        pass
    return None, "no device memory figure"


def predict_max_batch(result: dict, free: int, fraction: float, floor: int, cap: int) -> dict[str, Any]:
    """Largest power-of-two batch in [floor, cap] whose predicted footprint ≤ fraction × free.

    Footprint(batch) = fixed + batch × per-image, both from XLA's memory analysis of one executable:
    per-image = (temp + the batch's input bytes) / batch; fixed = the rest of arguments + outputs
    not aliased to arguments (the donated state).
    """
    mem, batch = result.get("memory") or {}, result["batch"]
    if "temp_size_in_bytes" not in mem or "argument_size_in_bytes" not in mem:
        raise ValueError("no XLA memory analysis for this executable")
    inputs = 2 * batch * result["resolution"] ** 2 * 3 * 4 * result.get("steps_per_dispatch", 1)
    per_image = (mem["temp_size_in_bytes"] + inputs) / batch
    fixed = (mem["argument_size_in_bytes"] - inputs + mem.get("output_size_in_bytes", 0)
             - mem.get("alias_size_in_bytes", 0))
    fits = int((fraction * free - fixed) // per_image)
    chosen = floor
    while chosen * 2 <= min(fits, cap):
        chosen *= 2
    return {"from_batch": batch, "free_bytes": free, "fraction": fraction, "per_image_bytes": per_image, "fixed_bytes": fixed,
            "predicted_fit": fits, "batch": chosen if fits >= floor else None}


def free_torch_memory() -> None:
    """Hand the twin's cached CUDA memory back (call after its tensors went out of scope)."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def find_max_batch(fn: Callable[[int], dict], start: int, cap: int,
                   cleanup: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Double the batch from `start` until `fn(batch)` fails with out-of-memory or `cap` is passed."""
    best, batch, error = None, start, None
    while batch <= cap:
        try:
            best = fn(batch)
        except Exception as e:  # noqa: BLE001 — only out-of-memory ends the search quietly
            text = str(e)
            if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
                raise
            error = text.splitlines()[0][:200]
            break
        finally:
            cleanup()
        batch *= 2
    return {"largest": best, "first_failure": None if error is None else {"batch": batch, "error": error}}


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


def add_common_args(p: "argparse.ArgumentParser", tiny: Mapping[str, Any], what: str) -> None:
    """The options every benchmark shares: device label, peak measurement, deadline, --tiny, --out."""
    p.add_argument("--device-name", default=None, help="label for the device (default: device_kind)")
    p.add_argument("--matmul-n", type=int, default=8192, help="peak measurement matmul size")
    p.add_argument("--copy-mib", type=int, default=1024, help="peak measurement copy size")
    p.add_argument("--no-peak", action="store_true", help="skip the peak measurement")
    p.add_argument("--deadline", type=float, default=0.0, help=f"epoch s: skip {what}s started later")
    p.add_argument("--keep-going", action="store_true",
                   help=f"record a failing {what} in `errors` and go on with the next")
    p.add_argument("--tiny", action="store_true", help="CPU smoke preset: " + json.dumps(dict(tiny)))
    p.add_argument("--out", default="", help="write the raw results here (JSON)")


def parse_with_preset(p: "argparse.ArgumentParser", argv: list[str] | None, tiny: Mapping[str, Any],
                      positive: tuple[str, ...]) -> "argparse.Namespace":
    """Parse; --tiny replaces every default the command line does not set; check ≥ 1 / ≥ 0 options."""
    opts = p.parse_args(argv)
    if opts.tiny:
        p.set_defaults(**tiny)
        opts = p.parse_args(argv)
    for name in positive:
        if getattr(opts, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if opts.warmup < 0:
        p.error("--warmup must be ≥ 0")
    return opts


def write_json(path: str, data: Any) -> None:
    """Write `data` as indented JSON (folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)


def fmt(value: float | None, scale: float = 1.0, digits: int = 1, pct: bool = False) -> str:
    """A table cell: value/scale with `digits` decimals (or a percentage); "–" for missing values."""
    if value is None:
        return "–"
    if pct:
        return f"{100.0 * value:.{digits}f}%"
    return f"{value / scale:.{digits}f}"
