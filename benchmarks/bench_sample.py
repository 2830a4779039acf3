"""Restoration latency: our compiled 10-step sampler (`program.build_sampler`, one lax.scan) vs
the twin's Python loop.

    python -m benchmarks.bench_sample --out sample.json    # GPU: B, 256² × 16 and 720×1280 × 1
    python -m benchmarks.bench_sample --tiny               # CPU smoke

Both sides get the same random weights (loaded into the twin with its converter) and the same
degraded inputs; the twin's output is compared with ours (`max_abs_diff_vs_ours`). `e2e` times
host numpy in → restored numpy out (what a user calls);
`device` times the compiled function (ours) / the loop (twin) on inputs already on the device.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from benchmarks import cli, max_batch, measure, roofline as rl  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.programs import default_config  # noqa: E402
from benchmarks.train_twin import twin_unavailable  # noqa: E402
from rdbm_jax.runtime import distributed  # noqa: E402
from rdbm_jax import models, program

TINY = dict(size="T", resolution=32, batch=2, large="40x72", large_batch=1, steps=3, warmup=1,
            dtype="float32", matmul_n=256, copy_mib=16)


def make_params(model: Any, seed: int = 0) -> dict:
    """Random float32 parameters of the model's shapes (kernels N(0, 1/fan_in), GroupNorm scales ≈
    1, biases ≈ 0, the output conv non-zero): an init costs seconds of compile, this costs a
    trace."""
    side = model.factor
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, x,
                              jax.ShapeDtypeStruct((1,), jnp.int32))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape).astype(np.float32)
        base = 1.0 if path[-1].key == "scale" else 0.0
        return (base + 0.02 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def degraded(batch: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    """Smooth random images in [-1, 1] with a white box (an inpainting-like μ), NHWC float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 2 * np.pi, (batch, 1, 1, 3))
    img = np.sin(6 * xx[None, :, :, None] + phase) * np.cos(4 * yy[None, :, :, None] + phase)
    img[:, height // 4: height // 2, width // 4: width // 2] = 1.0
    return img.astype(np.float32)


def sampler_config(opts: argparse.Namespace, impl: str) -> Any:
    """configs/default.py with the benchmarked network (size, dtype, attention kernel) and NFE:
    what `program.build_sampler` builds our sampler from."""
    cfg = ml_collections.ConfigDict(default_config().to_dict())
    cfg.model.size = opts.size
    cfg.model.dtype = opts.dtype
    cfg.model.attention_impl = impl
    cfg.sample.num_steps = opts.nfe
    return cfg


def bench_ours(cfg: Any, params: Any, mu: np.ndarray, nfe: int, opts: argparse.Namespace,
               peak: dict | None) -> tuple[dict[str, Any], np.ndarray]:
    """Sampler (compiled scan, `program.build_sampler` of `cfg`) end to end and on the device;
    XLA cost of the compiled sampler."""
    mesh = distributed.make_mesh()
    model = program.network(cfg)[0]
    restorer = program.build_sampler(cfg, mesh, num_steps=nfe)
    params = jax.device_put(params, distributed.replicated(mesh))
    rng = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    out = restorer(params, mu, rng)
    t_first = time.perf_counter() - t0
    e2e = measure.time_windows(lambda: restorer(params, mu, rng), lambda x: x, warmup=opts.warmup,
                          steps=opts.steps, window=1)
    # The executable the Sampler compiled for this shape, on its device-resident arguments.
    args = restorer.device_args(params, mu, rng)
    compiled = restorer.executable(args)
    dev = measure.time_windows(lambda: compiled(*args), measure.jax_sync, warmup=opts.warmup,
                               steps=opts.steps, window=1)
    cost = rl.cost_of(compiled)
    macs = models.count_macs(model, mu.shape[1], mu.shape[2], batch=mu.shape[0])
    analytic = 2.0 * macs * nfe
    flops, bytes_, source = rl.loop_scaled(cost, nfe, analytic)
    roof = rl.roofline(flops, bytes_, dev["median_s"], peak)
    return ({"impl": "ours", "first_call_s": t_first, "e2e_ms": 1e3 * e2e["median_s"],
             "device_ms": 1e3 * dev["median_s"], "images_per_s": mu.shape[0] / e2e["median_s"],
             "xla_cost_per_dispatch": cost, "flops": flops, "bytes": bytes_,
             "flops_analytic": analytic, "cost_source": source,
             **roof}, out)


def bench_twin(params: Any, size: str, mu: np.ndarray, nfe: int, opts: argparse.Namespace,
               ) -> tuple[dict[str, Any], np.ndarray]:
    """The twin's Python-loop `sample` (autocast unless float32, channels_last), same weights."""
    import torch

    from benchmarks import torch_twin as tw

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = tw.load_flax_params(tw.TwinUNet(size), params).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    amp = None if opts.dtype == "float32" else getattr(torch, opts.dtype)
    bridge = default_config().bridge
    tables = tw.cosine_tables(bridge.num_timesteps, bridge.lam)

    def sync(x):
        if device.type == "cuda":
            torch.cuda.synchronize()
        return x

    def to_device(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(device)
        return t.contiguous(memory_format=torch.channels_last)

    def e2e_call() -> np.ndarray:
        x = tw.sample(model, to_device(mu), tables, num_steps=nfe, amp_dtype=amp)
        return x.permute(0, 2, 3, 1).float().cpu().numpy()

    t0 = time.perf_counter()
    out = e2e_call()
    t_first = time.perf_counter() - t0
    e2e = measure.time_windows(e2e_call, lambda x: x, warmup=opts.warmup, steps=opts.steps,
                               window=1)
    mu_dev = to_device(mu)
    dev = measure.time_windows(
        lambda: tw.sample(model, mu_dev, tables, num_steps=nfe, amp_dtype=amp), sync,
        warmup=opts.warmup, steps=opts.steps, window=1)
    return ({
        "impl": "twin_eager", "torch_device": str(device), "amp": str(amp), "first_call_s": t_first,
        "e2e_ms": 1e3 * e2e["median_s"], "device_ms": 1e3 * dev["median_s"],
        "images_per_s": mu.shape[0] / e2e["median_s"]
    }, out)


def parse_shape(text: str) -> tuple[int, int]:
    """"HxW" → (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 720x1280") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: H and W must be ≥ 1")
    return h, w


def parser() -> argparse.ArgumentParser:
    """The command line (GPU defaults; --tiny: the CPU smoke preset)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="B", help="UNet size (T,S,B,L)")
    p.add_argument("--batch", type=int, default=16, help="batch of the square case")
    p.add_argument("--resolution", type=int, default=256, help="side of the square case")
    p.add_argument("--large", default="720x1280", help="HxW of the large case ('' to skip)")
    p.add_argument("--large-batch", type=int, default=1)
    p.add_argument("--nfe", type=int, default=10, help="sampling steps")
    p.add_argument("--steps", type=int, default=20, help="timed restorations per case and side")
    p.add_argument("--warmup", type=int, default=3, help="untimed restorations after the first")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(rl.DTYPES), help="compute dtype")
    p.add_argument("--attention-impl", default="xla",
                   help="our model.attention_impl values to time, comma-separated "
                   f"({', '.join(models.ATTENTION_IMPLS)})")
    p.add_argument("--twin", default="auto", choices=("auto", "on", "off"))
    cli.add_common_args(p, TINY, "case")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parsed options; --tiny replaces every default that the command line does not set."""
    p = parser()
    opts = cli.parse_with_preset(
        p, argv, TINY,
        ("batch", "resolution", "large_batch", "nfe", "steps", "matmul_n", "copy_mib"))
    if opts.size not in models.SIZES:
        p.error(f"--size {opts.size!r}: expected one of {sorted(models.SIZES)}")
    factor = models.downsample_factor({"size": opts.size})
    cases = [(opts.batch, opts.resolution, opts.resolution)]
    if opts.large:
        try:
            cases.append((opts.large_batch, *parse_shape(opts.large)))
        except argparse.ArgumentTypeError as e:
            p.error(f"--large {e}")
    for _, h, w in cases:
        if h % factor or w % factor:
            p.error(f"shape {h}x{w}: H and W must be multiples of {factor} for size {opts.size}")
    impls = [v.strip() for v in opts.attention_impl.split(",") if v.strip()]
    if not impls or set(impls) - set(models.ATTENTION_IMPLS):
        p.error(f"--attention-impl {opts.attention_impl!r}: "
                f"expected values from {sorted(models.ATTENTION_IMPLS)}")
    opts.cases, opts.impls = cases, impls
    return opts


def run(opts: argparse.Namespace, peak: dict | None = None, env: dict | None = None,
        on_result: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Every case of `opts`; returns {"environment", "peak", "results", "skipped"}.

    on_result(data so far) is called after every case and side (a run cut short keeps its results).
    """
    env = env or measure.environment(opts.device_name)
    if peak is None and not opts.no_peak:
        peak = rl.measure_peak(opts.dtype, opts.matmul_n, opts.copy_mib)
    twin_off = "--twin off" if opts.twin == "off" else twin_unavailable(env["platform"] == "gpu")
    if opts.twin == "on" and twin_off:
        raise RuntimeError(f"--twin on: {twin_off}")
    configs = {impl: sampler_config(opts, impl) for impl in opts.impls}
    params = make_params(program.network(configs[opts.impls[0]])[0])
    results, skipped, errors = [], [], []
    data = {
        "environment": env, "peak": peak, "results": results, "skipped": skipped, "errors": errors
    }

    def add(row: dict) -> None:
        results.append(row)
        print(_line(row), flush=True)

    for batch, h, w in opts.cases:
        case = {"size": opts.size, "params": models.count_params(params), "batch": batch,
                "height": h, "width": w, "nfe": opts.nfe, "dtype": opts.dtype}
        mu, label = degraded(batch, h, w), f"{batch}×{h}×{w}"
        ours = {}  # attention impl → (row, output)
        for impl, cfg in configs.items():
            if opts.deadline and time.time() > opts.deadline:
                skipped.append(f"sample {label} ({impl}): past the run's time budget")
                continue
            got = measure.guarded(opts.keep_going, errors, f"ours sample {label} ({impl})",
                             lambda c=cfg: bench_ours(c, params, mu, opts.nfe, opts, peak))
            if got is not None:
                add({**case, "attention_impl": impl, **got[0]})
                ours[impl] = (results[-1], got[1])
            if on_result is not None:
                on_result(data)
        if twin_off:
            skipped.append(f"twin sample {label}: {twin_off}")
            continue
        if opts.deadline and time.time() > opts.deadline:
            skipped.append(f"twin sample {label}: past the run's time budget")
            continue
        twin = measure.guarded(opts.keep_going, errors, f"twin sample {label}",
                          lambda: bench_twin(params, opts.size, mu, opts.nfe, opts))
        max_batch.free_torch_memory()
        if twin is not None:
            # the same function: how far apart the outputs are
            for impl, (row, out) in ours.items():
                row["max_abs_diff_vs_twin"] = float(np.abs(twin[1] - out).max())
                row["mean_abs_diff_vs_twin"] = float(np.abs(twin[1] - out).mean())
            first = next(iter(ours.values()), None)
            diff = float(np.abs(twin[1] - first[1]).max()) if first is not None else None
            add({**case, **twin[0], "max_abs_diff_vs_ours": diff})
        if on_result is not None:
            on_result(data)
    return data


def _line(r: dict) -> str:
    impl = f" [{r['attention_impl']} attention]" if r.get("attention_impl", "xla") != "xla" else ""
    return (
        f"sample {r['impl']}{impl} size={r['size']} {r['batch']}×{r['height']}×{r['width']} "
        f"NFE={r['nfe']}: "
        f"{r['e2e_ms']:.1f} ms end to end ({r['device_ms']:.1f} on device), "
        f"{r['images_per_s']:.1f} img/s")


def main(argv: list[str] | None = None, peak: dict | None = None, env: dict | None = None,
         on_result: Callable[[dict], None] | None = None) -> dict:
    """Command-line entry point; returns what it writes to --out."""
    cli.share_gpu_with_torch()  # before JAX starts a backend (the twin shares the GPU)
    opts = parse(sys.argv[1:] if argv is None else argv)

    def save(data: dict) -> None:
        if opts.out:
            measure.write_json(opts.out, data)
        if on_result is not None:
            on_result(data)

    data = run(opts, peak, env, save)
    if opts.out:
        measure.write_json(opts.out, data)
    return data


if __name__ == "__main__":
    main()
