"""Our train step built and timed: the config's real program on synthetic device batches."""
from __future__ import annotations

import argparse
import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from benchmarks import measure, roofline as rl
from benchmarks.programs import DEFAULT_CONFIG, program_from_config
from rdbm_jax import models
from rdbm_jax.runtime import distributed

STEP_IMPL = "rdbm_jax.program.program"  # recorded with every result


class Built(NamedTuple):
    """A ready-to-time train step: step(state, batches, key) → (state, metrics, finite)."""

    step: Callable
    state: Any
    batches: dict
    key: jax.Array
    model: Any
    schedule: Any
    impl: str


def synthetic_batches(k: int, batch: int, resolution: int, seed: int = 0) -> dict[str, np.ndarray]:
    """K stacked batches: x0 uniform in [-1, 1], μ = x0 with a 50 % box masked white
    (inpainting-like), and that box as the degradation mask (read only by mask-conditioned
    configs)."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (k, batch, resolution, resolution, 3)).astype(np.float32)
    mu = x0.copy()
    mask = np.zeros(x0.shape[:-1] + (1,), np.float32)
    h = resolution // 2
    mu[:, :, h // 2:h // 2 + h, :] = 1.0
    mask[:, :, h // 2:h // 2 + h, :] = 1.0
    return {"x0": x0, "mu": mu, "mask": mask}


def build(size: str, dtype: str, batch: int, resolution: int, k: int, config: str = DEFAULT_CONFIG,
          overrides: dict[str, str] | None = None) -> Built:
    """Our train step (the config's program with size, dtype, batch, K and overrides), initial state
    and device batches."""
    mesh = distributed.make_mesh()
    if batch % mesh.size:
        raise ValueError(f"--batch {batch} is not divisible by the {mesh.size} devices")
    prog, init_key, key = program_from_config(config, size, dtype, batch, k, mesh, overrides or {})
    batches = distributed.global_batch(mesh, synthetic_batches(k, batch, resolution), leading=1)
    return Built(prog.step, prog.init(init_key), batches, key, prog.model, prog.schedule, STEP_IMPL)


@functools.cache
def _macs(model: Any, resolution: int) -> int:
    return models.count_macs(model, resolution, resolution)


def analytic_train_flops(model: Any, resolution: int, batch: int) -> float:
    """≈ 3 × forward FLOPs (2 per MAC, convolutions and matmuls; backward ≈ 2 × forward) per
    step."""
    return 6.0 * _macs(model, resolution) * batch


def bench_ours(size: str, dtype: str, batch: int, resolution: int, k: int, opts: argparse.Namespace,
               peak: dict | None, k1_cost: dict | None = None, variant: str = "base",
               overrides: dict[str, str] | None = None,
               scale_steps: bool = False) -> dict[str, Any]:
    """Compile, warm up and time our step; FLOPs/bytes from XLA's cost analysis of the executable.

    scale_steps: time ~opts.steps × opts.batch / batch steps (large batches: same images, not
    steps).
    """
    t0 = time.perf_counter()
    b = build(size, dtype, batch, resolution, k, opts.config, overrides)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = b.step.lower(b.state, b.batches, b.key).compile()
    t_compile = time.perf_counter() - t0
    cost, memory = rl.cost_of(compiled), rl.memory_of(compiled)
    holder = {"state": b.state}
    losses = []

    def run():
        holder["state"], metrics, finite = compiled(holder["state"], b.batches, b.key)
        return metrics, finite

    t0 = time.perf_counter()
    metrics, finite = run()
    measure.jax_sync(finite)
    t_first = time.perf_counter() - t0
    losses.append(_loss(metrics))
    shrink = max(1, batch // opts.batch) if scale_steps else 1
    steps, window = max(4, opts.steps // shrink), max(1, opts.window // shrink)
    window = max(1, window // k)
    timing = measure.time_windows(run, measure.jax_sync,
                                  warmup=max(0, -(-opts.warmup // (k * shrink)) - 1),
                                  steps=max(1, steps // k), window=window)
    metrics, finite = run()
    losses.append(_loss(metrics))
    all_finite = bool(np.asarray(jax.device_get(finite)).all())
    step_s = timing["median_s"] / k
    n_params = models.count_params(holder["state"].params)
    analytic = analytic_train_flops(b.model, resolution, batch)
    # the K = 1 executable of this run: exact per step
    if k > 1 and k1_cost and k1_cost.get("flops"):
        flops, bytes_, source = rl.loop_scaled(k1_cost, 1, analytic)
        source = f"{source} (K = 1 executable)"
    else:
        flops, bytes_, source = rl.loop_scaled(cost, k, analytic * k)
        flops, bytes_ = flops / k, bytes_ / k if bytes_ else None
    roof = rl.roofline(flops, bytes_, step_s, peak)
    return {"impl": "ours", "variant": variant, "overrides": overrides or {}, "step_impl": b.impl,
            "size": size, "params": n_params, "batch": batch,
            "resolution": resolution, "dtype": dtype, "steps_per_dispatch": k, "memory": memory,
            "build_s": t_build, "compile_s": t_compile, "first_call_s": t_first,
            "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * timing["min_s"] / k,
            "images_per_s": batch / step_s, "timed_steps": timing["calls"] * k,
            "xla_cost_per_dispatch": cost, "flops_per_step": flops, "bytes_per_step": bytes_,
            "flops_per_step_analytic": analytic, "cost_source": source,
            "loss_first": losses[0], "loss_last": losses[-1], "finite": all_finite, **roof}


def _loss(metrics: Any) -> float:
    if hasattr(metrics, "compute"):
        return float(metrics.compute()["loss"])
    return float(np.mean(jax.device_get(metrics["loss"])))
