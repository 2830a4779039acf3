"""XLA cost analysis and the roofline: measured peaks, FLOPs/bytes of a compiled step, fractions.

Roofline model used here: a step cannot take less than max(FLOPs / peak matrix rate, bytes / peak
copy bandwidth); `frac_roofline` is that bound divided by the measured time (1.0 = at the limit).
Both peaks are measured in the same process (`measure_peak`), not taken from a data sheet.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.measure import jax_sync, time_windows

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def normalize_cost(raw: Any) -> dict[str, float | None]:
    """FLOPs / bytes accessed / transcendentals from a cost_analysis() result (dict, [dict] or
    None)."""
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
    """XLA's cost analysis of a compiled executable (`jitted.lower(...).compile()`); None where
    absent."""
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
    if trips > 1 and abs(np.log(flops * trips / analytic_flops)) < abs(
            np.log(flops / analytic_flops)):
        flops, bytes_, source = flops * trips, bytes_ * trips if bytes_ else None, \
            f"xla × {trips} (loop body counted once)"
    if flops < 0.5 * analytic_flops:
        return analytic_flops, bytes_, (
            f"analytic FLOPs (XLA counted {flops / analytic_flops:.0%}: library "
            f"calls left out); bytes: {source}, a lower bound")
    return flops, bytes_, source


def measure_peak(dtype: str = "bfloat16", matmul_n: int = 8192, copy_mib: int = 1024,
                 calls: int = 20, window: int = 5) -> dict[str, Any]:
    """Measured peak matrix rate (n×n×n matmul, FLOP/s) and copy bandwidth (x + 1, bytes read +
    written)."""
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
    return {
        "matmul_flops_per_s": flops / mm["median_s"], "matmul_n": matmul_n, "matmul_dtype": dtype,
        "copy_bytes_per_s": moved / cp["median_s"], "copy_bytes": moved,
        "method": f"median of {mm['windows']} windows × {window} calls; matmul {matmul_n}³ {dtype} "
        f"(2n³ FLOPs); copy v+1 over {n_copy * 4 / 2 ** 20:.0f} MiB float32 "
        "(bytes read + written)"
    }


def roofline(flops: float | None, bytes_moved: float | None, seconds: float,
             peak: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Achieved FLOP/s and bytes/s, their fractions of the measured peaks, and the roofline
    fraction."""
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
    """XLA's memory analysis of an executable (argument, output, alias, temp bytes), None if
    absent."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 — some backends do not implement it
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
             "temp_size_in_bytes", "generated_code_size_in_bytes")
    out = {n: int(getattr(m, n)) for n in names if isinstance(getattr(m, n, None), int)}
    return out or None
