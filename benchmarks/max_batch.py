"""The largest batch that fits: free device memory, XLA's memory analysis, the doubling search."""
from __future__ import annotations

from typing import Any, Callable

import jax


def free_device_bytes() -> tuple[int | None, str]:
    """(bytes JAX may still allocate on the first device, where the figure comes from); None on
    CPU."""
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


def predict_max_batch(result: dict, free: int, fraction: float, floor: int,
                      cap: int) -> dict[str, Any]:
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
    return {
        "from_batch": batch, "free_bytes": free, "fraction": fraction, "per_image_bytes": per_image,
        "fixed_bytes": fixed, "predicted_fit": fits, "batch": chosen if fits >= floor else None
    }


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
    """Double the batch from `start` until `fn(batch)` fails with out-of-memory or `cap` is
    passed."""
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
    return {
        "largest": best,
        "first_failure": None if error is None else {"batch": batch, "error": error}
    }
