"""Train-step throughput: our compiled RDBM step vs the PyTorch twin (eager AMP and torch.compile).

    python -m benchmarks.bench_train --size B,L --steps-per-dispatch 1,4 --out train.json   # GPU
    python -m benchmarks.bench_train --tiny                                                # CPU
    smoke

Ours is `rdbm_jax.program.program(cfg, mesh).step`, the step the training loop runs (on a GPU image
without ml_collections/clu/grain, install them first: docs/performance.md). Every step reuses one
batch already on the device: the input pipeline is not timed, on either side.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

_T_START = time.time()

from benchmarks import cli, max_batch, measure, roofline as rl  # noqa: E402

import jax  # noqa: E402

# REPO and program_from_config: run_all and the tests read them from here.
from benchmarks.programs import (DEFAULT_CONFIG, REPO, parse_overrides,  # noqa: E402,F401
                                 program_from_config)
from benchmarks.train_step import bench_ours, build  # noqa: E402
from benchmarks.train_twin import bench_twin, twin_unavailable  # noqa: E402
from rdbm_jax import models  # noqa: E402

# CPU smoke preset. configs/demo.py:tiny is the program the training tests compile too (T, 32²,
# batch 2, float32, K = 1): with the test session's persistent cache it is compiled once.
TINY = dict(size="T", resolution=32, batch=2, steps=4, warmup=1, window=2, steps_per_dispatch="1",
            dtype="float32", matmul_n=256, copy_mib=16, config="configs/demo.py:tiny")


def _split(text: str, cast: Callable = str) -> list:
    return [cast(v.strip()) for v in str(text).split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    """The command line (GPU defaults; --tiny: the CPU smoke preset)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="B,L", help="UNet sizes, comma-separated (T,S,B,L)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=60, help="timed train steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps after the first call")
    p.add_argument("--window", type=int, default=10, help="steps between two device syncs")
    p.add_argument("--steps-per-dispatch", default="1,4",
                   help="K values of train.steps_per_dispatch")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(rl.DTYPES), help="compute dtype")
    p.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help="config file[:arg] of the real step (model.size/dtype, batch, K overridden)")
    p.add_argument("--twin", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--twin-compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile variant (auto: only on CUDA)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="also time our step (first K) with these config overrides, e.g. "
                   "cudnn:model.attention_impl=cudnn (repeatable)")
    p.add_argument("--find-max-batch", action="store_true", help="also double the batch until OOM")
    p.add_argument(
        "--max-batch-model", action="store_true",
        help="also time ours and the eager twin at the largest power-of-two batch that the "
        "first K's XLA memory analysis predicts to fit in the free device memory")
    p.add_argument("--max-batch-variant", default="best",
                   help="variant timed at that batch (best: the fastest at --batch)")
    p.add_argument(
        "--max-batch-only", action="store_true",
        help="only the --max-batch-model runs (run_all: from the rows of an earlier stage)")
    p.add_argument(
        "--skip-base", action="store_true",
        help="time only the --variant steps (no base step, no twin), e.g. in a later stage")
    p.add_argument("--max-batch-fraction", type=float, default=0.8,
                   help="share of the free device memory the predicted batch may use")
    p.add_argument("--free-memory-gb", type=float, default=0.0,
                   help="free device memory for --max-batch-model (default: asked from the device)")
    p.add_argument("--max-batch-cap", type=int, default=1024)
    cli.add_common_args(p, TINY, "configuration")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parsed options; --tiny replaces every default that the command line does not set."""
    p = parser()
    opts = cli.parse_with_preset(p, argv, TINY,
                                 ("batch", "resolution", "steps", "window", "matmul_n", "copy_mib"))
    sizes = _split(opts.size)
    bad = [s for s in sizes if s not in models.SIZES]
    if not sizes or bad:
        p.error(f"--size {opts.size!r}: expected sizes from {sorted(models.SIZES)}")
    try:
        ks = _split(opts.steps_per_dispatch, int)
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        p.error(f"--steps-per-dispatch {opts.steps_per_dispatch!r}: expected positive integers")
    factor = max(models.downsample_factor({"size": s}) for s in sizes)
    if opts.resolution % factor:
        p.error(f"--resolution {opts.resolution} must be a multiple of {factor}")
    variants = {}
    for text in opts.variant:
        name, colon, spec = text.partition(":")
        try:
            if not colon or not name or name == "base":
                raise ValueError("expected NAME:KEY=VALUE[,KEY=VALUE] with a NAME other than base")
            variants[name] = parse_overrides(spec)
        except ValueError as e:
            p.error(f"--variant {text!r}: {e}")
    if opts.max_batch_variant not in ("base", "best", *variants):
        p.error(f"--max-batch-variant {opts.max_batch_variant!r}: not base or a --variant name")
    opts.sizes, opts.ks, opts.variants = sizes, ks, variants
    return opts


def run(
    opts: argparse.Namespace, peak: dict | None = None, env: dict | None = None,
    on_result: Callable[[dict], None] | None = None, measured: list[dict] = ()) -> dict[str, Any]:
    """Every configuration of `opts`; returns {"environment", "peak", "results", "skipped"}.

    on_result(data so far) is called after every configuration (a run cut short keeps its results).
    With --max-batch-only, the batch-`opts.batch` rows come from `measured` (an earlier run's
    results).
    """
    env = env or measure.environment(opts.device_name)
    on_gpu = env["platform"] == "gpu"
    if peak is None and not opts.no_peak:
        peak = rl.measure_peak(opts.dtype, opts.matmul_n, opts.copy_mib)
    twin_off = "--twin off" if opts.twin == "off" else twin_unavailable(on_gpu)
    if opts.twin == "on" and twin_off:
        raise RuntimeError(f"--twin on: {twin_off}")
    compile_on = opts.twin_compile == "on" or (opts.twin_compile == "auto" and env["torch_device"]
                                               not in (None, "cpu"))
    results, skipped, errors = [], [], []
    data = {
        "environment": env, "peak": peak, "results": results, "skipped": skipped, "errors": errors
    }

    def attempt(label: str, fn: Callable[[], dict]) -> dict | None:
        r = measure.guarded(opts.keep_going, errors, label, fn)
        if r is not None:
            results.append(r)
            print(_line(r), flush=True)
        if on_result is not None:
            on_result(data)
        return r

    def due(what: str) -> bool:
        if opts.deadline and time.time() > opts.deadline:
            skipped.append(f"{what}: past the run's time budget")
            return False
        return True

    for size in opts.sizes:
        k1, first = None, {}
        if opts.max_batch_only:
            first = {r["variant"]: r for r in measured if r["impl"] == "ours" and r["size"] == size
                     and r["batch"] == opts.batch and r["steps_per_dispatch"] == opts.ks[0]}
            if due(f"max batch (memory model) {size}"):
                max_batch_model(size, first, opts, peak, twin_off, attempt, skipped)
            continue
        for k in () if opts.skip_base else opts.ks:
            if due(f"ours {size} K={k}"):
                got = attempt(f"ours {size} K={k}", lambda s=size, k=k, k1=k1: bench_ours(
                    s, opts.dtype, opts.batch, opts.resolution, k, opts, peak, k1))
                if got and k == opts.ks[0]:
                    first["base"] = got
                if got and k == 1:
                    k1 = got["xla_cost_per_dispatch"]
        for name, overrides in opts.variants.items():
            k = opts.ks[0]
            if due(f"ours {size} {name}"):
                first[name] = attempt(
                    f"ours {size} K={k} {name}",
                    lambda s=size, k=k, n=name, o=overrides: bench_ours(
                        s, opts.dtype, opts.batch, opts.resolution, k, opts, peak, k1
                        if k > 1 else None, n, o))
        if opts.skip_base:
            continue
        if twin_off:
            skipped.append(f"twin {size}: {twin_off}")
            continue
        for compile_ in (False, True):
            if compile_ and not compile_on:
                skipped.append(
                    f"twin_compiled {size}: torch.compile variant off "
                    f"(--twin-compile {opts.twin_compile}, torch device {env['torch_device']})")
                continue
            label = f"twin_{'compiled' if compile_ else 'eager'} {size}"
            if due(label):
                attempt(
                    label,
                    lambda s=size, c=compile_: bench_twin(s, opts.batch, opts.resolution, c, opts))
                max_batch.free_torch_memory()
        if opts.max_batch_model and due(f"max batch (memory model) {size}"):
            max_batch_model(size, first, opts, peak, twin_off, attempt, skipped)
        if opts.find_max_batch and due(f"max batch {size}"):
            cleanup = max_batch.free_torch_memory
            ours = lambda bs, s=size: bench_ours(s, opts.dtype, bs, opts.resolution, 1, opts, peak)
            twin = lambda bs, s=size: bench_twin(s, bs, opts.resolution, False, opts)
            for impl, fn in (("ours_max_batch", ours), ("twin_eager_max_batch", twin)):
                if impl.startswith("twin") and twin_off:
                    continue
                attempt(
                    f"{impl} {size}", lambda i=impl, f=fn, s=size: {
                        "impl": i, "size": s, **max_batch.find_max_batch(
                            f, 2 * opts.batch, opts.max_batch_cap, cleanup)
                    })
    return data


def max_batch_model(size: str, first: dict[str, dict | None], opts: argparse.Namespace,
                    peak: dict | None, twin_off: str | None, attempt: Callable,
                    skipped: list[str]) -> None:
    """Ours (--max-batch-variant; best: the fastest measured) and the eager twin at the largest
    power-of-two batch `max_batch.predict_max_batch` expects to fit, from the batch-`opts.batch`
    run."""
    label = f"max batch (memory model) {size}"
    first = {name: r for name, r in first.items() if r}
    if opts.max_batch_variant == "best" and first:
        name = max(first, key=lambda n: first[n]["images_per_s"])
    else:
        name = opts.max_batch_variant
    measured = first.get(name)
    if measured is None:
        skipped.append(f"{label}: variant {name} was not measured at batch {opts.batch}")
        return
    free, source = ((int(opts.free_memory_gb * 1e9), "--free-memory-gb") if opts.free_memory_gb
                    else max_batch.free_device_bytes())
    if free is None:
        skipped.append(f"{label}: {source}")
        return
    try:
        plan = max_batch.predict_max_batch(measured, free, opts.max_batch_fraction, 2 * opts.batch,
                                           opts.max_batch_cap)
    except ValueError as e:
        skipped.append(f"{label}: {e}")
        return
    plan["free_source"] = source
    print(f"{label}: {json.dumps(plan)}", flush=True)
    batch = plan["batch"]
    if batch is None:
        skipped.append(f"{label}: predicted fit {plan['predicted_fit']} < {2 * opts.batch}")
        return
    if not twin_off:  # first: JAX's allocator keeps what it takes, PyTorch's cache is handed back
        attempt(f"twin_eager {size} batch {batch}", lambda: {
            **bench_twin(size, batch, opts.resolution, False, opts, scale_steps=True),
            "variant": "max batch"})
        max_batch.free_torch_memory()
    k = measured["steps_per_dispatch"]
    got = attempt(f"ours {size} batch {batch} {name}", lambda: bench_ours(
        size, opts.dtype, batch, opts.resolution, k, opts, peak, None, f"{name}, max batch",
        measured.get("overrides") or {}, scale_steps=True))
    if got is not None:
        got["max_batch_plan"] = plan


def _line(r: dict) -> str:
    if "step_ms" not in r:
        return f"train {r['impl']} size={r['size']}: {r.get('largest')}"
    k = f" K={r['steps_per_dispatch']}" if "steps_per_dispatch" in r else ""
    k += f" [{r['variant']}]" if r.get("variant", "base") != "base" else ""
    return (f"train {r['impl']}{k} size={r['size']} batch={r['batch']} {r['resolution']}²: "
            f"{r['step_ms']:.2f} ms/step, {r['images_per_s']:.1f} img/s")


def startup_child(opts: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    """In a fresh process: imports → program → init → first step done, with a persistent cache."""
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    t_imported = time.time()
    b = build(opts.sizes[0], opts.dtype, opts.batch, opts.resolution, opts.ks[0], opts.config)
    jax.block_until_ready(b.state)
    t_built = time.time()
    state, _, finite = b.step(b.state, b.batches, b.key)
    jax.block_until_ready((state, finite))
    t_done = time.time()
    return {"process_start_epoch": _T_START, "imports_s": t_imported - _T_START,
            "build_and_init_s": t_built - t_imported, "first_step_s": t_done - t_built,
            "step1_done_epoch": t_done, "step_impl": b.impl}


def main(argv: list[str] | None = None, peak: dict | None = None, env: dict | None = None,
         measured: list[dict] = (), on_result: Callable[[dict], None] | None = None) -> dict:
    """Command-line entry point; returns what it writes to --out."""
    cli.share_gpu_with_torch()  # before JAX starts a backend (the twin shares the GPU)
    if argv is None:
        argv = sys.argv[1:]
    if "--startup-child" in argv:  # internal: used by run_all's time-to-first-step measurement
        i = argv.index("--startup-child")
        out = startup_child(parse(argv[:i] + argv[i + 2:]), argv[i + 1])
        print("STARTUP " + json.dumps(out), flush=True)
        return out
    opts = parse(argv)

    def save(data: dict) -> None:
        if opts.out:
            measure.write_json(opts.out, data)
        if on_result is not None:
            on_result(data)

    data = run(opts, peak, env, save, measured)
    if opts.out:
        measure.write_json(opts.out, data)
    return data


if __name__ == "__main__":
    main()
