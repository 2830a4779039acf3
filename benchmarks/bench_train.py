"""Train-step throughput: our compiled RDBM step vs the PyTorch twin (eager AMP and torch.compile).

    python -m benchmarks.bench_train --size B,L --steps-per-dispatch 1,4 --out train.json   # GPU
    python -m benchmarks.bench_train --tiny                                                # CPU smoke

Ours is `rdbm_jax.train.program(cfg, mesh).step` (the step the training loop runs) when
rdbm_jax.train imports; where its extra dependencies (ml_collections, clu, grain) are missing it is
`light_program`, a copy of the same step built from rdbm_jax.models/sde/distributed only
(tests/test_benchmarks.py checks that both give identical states). Every step reuses one batch
already on the device: the input pipeline is not timed, on either side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, NamedTuple

_T_START = time.time()

from benchmarks import roofline as rl  # noqa: E402  (sets XLA_PYTHON_CLIENT_PREALLOCATE first)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import struct  # noqa: E402
from flax.training import train_state as flax_train_state  # noqa: E402

from rdbm_jax import distributed, models, sde  # noqa: E402

# The defaults of configs/default.py that the benchmarked step depends on (checked by the tests).
BRIDGE = dict(preset="rdbm", num_timesteps=100, theta_schedule="cosine", lam=10 / 255, pi="",
              parameterization="x0")
OPTIM = dict(optimizer="adam", learning_rate=1e-4, b1=0.9, b2=0.999, schedule="constant",
             warmup_steps=0, grad_clip=0.0, ema_decay=0.999)
LOSS = "l1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/default.py"
# CPU smoke preset. configs/demo.py:tiny is the program the training tests compile too (T, 32²,
# batch 2, float32, K = 1): with the test session's persistent cache it is compiled once.
TINY = dict(size="T", resolution=32, batch=2, steps=4, warmup=1, window=2, steps_per_dispatch="1",
            dtype="float32", matmul_n=256, copy_mib=16, config="configs/demo.py:tiny")


class Built(NamedTuple):
    """A ready-to-time train step: step(state, batches, key) → (state, metrics, finite)."""

    step: Callable
    state: Any
    batches: dict
    key: jax.Array
    model: Any
    schedule: Any
    impl: str


def real_program_available() -> str | None:
    """None if rdbm_jax.train imports here, else the reason it does not."""
    try:
        import rdbm_jax.train  # noqa: F401
        from rdbm_jax.config import sibling  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def load_config(spec: str) -> Any:
    """configs/NAME.py[:ARG] (a path relative to the repo or absolute) → its ConfigDict."""
    from rdbm_jax.config import sibling

    path, _, arg = spec.partition(":")
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {spec!r}: no file {path}")
    name = os.path.splitext(os.path.basename(path))[0]
    return sibling(path, name).get_config(arg or None)


def real_program(config: str, size: str, dtype: str, batch: int, k: int,
                 mesh: Any) -> tuple[Any, jax.Array, jax.Array]:
    """(Program, init key, step key) of `config` with model.size/dtype, batch and K overridden."""
    from rdbm_jax import train

    cfg = load_config(config)
    cfg.model.size, cfg.model.dtype = size, dtype
    cfg.train.batch_size, cfg.train.steps_per_dispatch = batch, k
    return train.program(cfg, mesh), train.init_key(cfg.seed), jax.random.PRNGKey(cfg.seed + 1)


class LightState(flax_train_state.TrainState):
    """rdbm_jax.train_state.TrainState without its ml_collections import: flax TrainState + EMA."""

    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.999)

    def apply_gradients(self, *, grads: Any, **kwargs) -> "LightState":
        """One optimizer step, then ema ← decay·ema + (1 − decay)·params."""
        new = super().apply_gradients(grads=grads, **kwargs)
        ema = jax.tree_util.tree_map(
            lambda e, p: (self.ema_decay * e.astype(jnp.float32)
                          + (1.0 - self.ema_decay) * p.astype(jnp.float32)).astype(e.dtype),
            self.ema_params, new.params)
        return new.replace(ema_params=ema)


def light_optimizer() -> optax.GradientTransformation:
    """train_state.make_optimizer for the default `optim` section (Adam, constant LR, no clipping)."""
    return optax.adam(optax.constant_schedule(OPTIM["learning_rate"]), b1=OPTIM["b1"], b2=OPTIM["b2"])


def light_loss_fn(model: Any, schedule: Any) -> Callable:
    """train.make_loss_fn for the default `bridge` section and L1 loss."""
    pi, parameterization = BRIDGE["pi"] or None, BRIDGE["parameterization"]

    def loss_fn(params, batch, rng):
        x0, mu = batch["x0"], batch["mu"]
        k_t, k_n, k_d = jax.random.split(rng, 3)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        x_t = sde.q_sample(schedule, x0, mu, t, noise, pi=pi)
        target = sde.training_target(schedule, x0, mu, noise, parameterization, pi=pi, t=t)
        out = model.apply({"params": params}, x_t, mu, t, train=True, rngs={"dropout": k_d})
        err = out.astype(jnp.float32) - target
        return jnp.mean(jnp.abs(err)) if LOSS == "l1" else jnp.mean(jnp.square(err))

    return loss_fn


def light_train_step(loss_fn: Callable, k: int) -> Callable:
    """train.make_train_step with metrics as a plain dict {"loss", "grad_norm"} (means over K)."""

    def one(state, batch, key):
        rng = jax.random.fold_in(key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.apply_gradients(grads=grads)
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new, ({"loss": loss, "grad_norm": grad_norm}, finite)

    def multi(state, batches, key):
        if k == 1:
            state, (metrics, finite) = one(state, jax.tree_util.tree_map(lambda b: b[0], batches), key)
            return state, metrics, finite[None]
        state, (per_step, finite) = jax.lax.scan(lambda s, b: one(s, b, key), state, batches)
        return state, jax.tree_util.tree_map(jnp.mean, per_step), finite

    return multi


def light_program(size: str, dtype: str, k: int, mesh: Any) -> tuple[Any, Any, Callable, Callable]:
    """(model, schedule, jitted init, jitted step) of train.program for the default config, built
    from rdbm_jax.models/sde/distributed only (no ml_collections, clu or grain)."""
    model = models.create_model({"size": size, "dtype": dtype})
    schedule = sde.make_schedule(num_timesteps=BRIDGE["num_timesteps"],
                                 theta_schedule=BRIDGE["theta_schedule"], lam=BRIDGE["lam"],
                                 preset=BRIDGE["preset"])
    side = models.downsample_factor({"size": size})
    dummy = jnp.zeros((1, side, side, 3), jnp.float32)
    tx = light_optimizer()

    def init(key):
        params = model.init(key, dummy, dummy, jnp.zeros((1,), jnp.int32), train=False)["params"]
        return LightState.create(apply_fn=model.apply, params=params, tx=tx,
                                 ema_params=jax.tree_util.tree_map(jnp.copy, params),
                                 ema_decay=float(OPTIM["ema_decay"]))

    repl = distributed.replicated(mesh)
    step = jax.jit(light_train_step(light_loss_fn(model, schedule), k),
                   in_shardings=(repl, distributed.batch_sharding(mesh, 1), repl),
                   out_shardings=(repl, repl, repl), donate_argnums=0)
    return model, schedule, jax.jit(init, out_shardings=repl), step


def synthetic_batches(k: int, batch: int, resolution: int, seed: int = 0) -> dict[str, np.ndarray]:
    """K stacked batches: x0 uniform in [-1, 1], μ = x0 with a 50 % box masked white (inpainting-like)."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (k, batch, resolution, resolution, 3)).astype(np.float32)
    mu = x0.copy()
    h = resolution // 2
    mu[:, :, h // 2:h // 2 + h, :] = 1.0
    return {"x0": x0, "mu": mu}


def build(size: str, dtype: str, batch: int, resolution: int, k: int, impl: str = "auto",
          config: str = DEFAULT_CONFIG) -> Built:
    """Our train step, initial state and device batches (impl: auto | real | light).

    The light step knows only configs/default.py's bridge/optim/loss (another `config` is noted as
    not applied in `Built.impl`).
    """
    mesh = distributed.make_mesh()
    if batch % mesh.size:
        raise ValueError(f"--batch {batch} is not divisible by the {mesh.size} devices")
    if impl not in ("auto", "real", "light"):
        raise ValueError(f"--step-impl {impl!r}: expected auto | real | light")
    missing = real_program_available() if impl != "light" else "asked for"
    if impl == "real" and missing:
        raise ImportError(f"--step-impl real: rdbm_jax.train does not import ({missing})")
    if missing:
        model, schedule, init, step = light_program(size, dtype, k, mesh)
        state, key = init(jax.random.key(0, impl="rbg")), jax.random.PRNGKey(1)
        ignored = ("" if os.path.normpath(config) == os.path.normpath(DEFAULT_CONFIG)
                   else f"; --config {config} not applied, the light step has {DEFAULT_CONFIG}'s values")
        name = f"bench_train.light_program (rdbm_jax.train not used: {missing}{ignored})"
    else:
        prog, init_key, key = real_program(config, size, dtype, batch, k, mesh)
        model, schedule, step, state = prog.model, prog.schedule, prog.step, prog.init(init_key)
        name = "rdbm_jax.train.program"
    batches = distributed.global_batch(mesh, synthetic_batches(k, batch, resolution), leading=1)
    return Built(step, state, batches, key, model, schedule, name)


_MACS: dict[tuple, int] = {}


def analytic_train_flops(model: Any, size: str, resolution: int, batch: int) -> float:
    """≈ 3 × forward FLOPs (2 per MAC, convolutions and matmuls; backward ≈ 2 × forward) per step."""
    key = (size, resolution)
    if key not in _MACS:
        _MACS[key] = models.count_macs(model, resolution, resolution)
    return 6.0 * _MACS[key] * batch


def bench_ours(size: str, dtype: str, batch: int, resolution: int, k: int, opts: argparse.Namespace,
               peak: dict | None, k1_cost: dict | None = None) -> dict[str, Any]:
    """Compile, warm up and time our step; FLOPs/bytes from XLA's cost analysis of the executable."""
    t0 = time.perf_counter()
    b = build(size, dtype, batch, resolution, k, opts.step_impl, opts.config)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = b.step.lower(b.state, b.batches, b.key).compile()
    t_compile = time.perf_counter() - t0
    cost = rl.cost_of(compiled)
    holder = {"state": b.state}
    losses = []

    def run():
        holder["state"], metrics, finite = compiled(holder["state"], b.batches, b.key)
        return metrics, finite

    t0 = time.perf_counter()
    metrics, finite = run()
    rl.jax_sync(finite)
    t_first = time.perf_counter() - t0
    losses.append(_loss(metrics))
    window = max(1, opts.window // k)
    timing = rl.time_windows(run, rl.jax_sync, warmup=max(0, -(-opts.warmup // k) - 1),
                             steps=max(1, opts.steps // k), window=window)
    metrics, finite = run()
    losses.append(_loss(metrics))
    all_finite = bool(np.asarray(jax.device_get(finite)).all())
    step_s = timing["median_s"] / k
    n_params = models.count_params(holder["state"].params)
    analytic = analytic_train_flops(b.model, size, resolution, batch)
    if k > 1 and k1_cost and k1_cost.get("flops"):  # the K = 1 executable of this run: exact per step
        flops, bytes_, source = k1_cost["flops"], k1_cost["bytes_accessed"], "xla (K = 1 executable)"
    else:
        flops, bytes_, source = rl.loop_scaled(cost, k, analytic * k)
        flops, bytes_ = flops / k, bytes_ / k if bytes_ else None
    roof = rl.roofline(flops, bytes_, step_s, peak)
    return {"impl": "ours", "step_impl": b.impl, "size": size, "params": n_params, "batch": batch,
            "resolution": resolution, "dtype": dtype, "steps_per_dispatch": k,
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


def twin_unavailable(on_gpu: bool) -> str | None:
    """None if the PyTorch twin can run comparably here, else why not."""
    try:
        import torch  # noqa: F401
        from benchmarks import torch_twin  # noqa: F401
    except ImportError as e:
        return f"torch not importable ({e})"
    if on_gpu and not torch.cuda.is_available():
        return "JAX runs on a GPU but torch sees no CUDA device: a CPU twin would not be comparable"
    return None


def bench_twin(size: str, batch: int, resolution: int, compile_: bool,
               opts: argparse.Namespace) -> dict[str, Any]:
    """The twin's `make_train_step` (autocast bf16 unless float32, channels_last, fused Adam)."""
    import torch

    from benchmarks import torch_twin as tw

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = tw.TwinUNet(size).to(device)
    amp = None if opts.dtype == "float32" else getattr(torch, opts.dtype)
    tables = tw.cosine_tables(BRIDGE["num_timesteps"], BRIDGE["lam"])
    step = tw.make_train_step(model, tw.make_optimizer(model, OPTIM["learning_rate"]), tables,
                              BRIDGE["parameterization"], LOSS, amp_dtype=amp, channels_last=True,
                              compile=compile_)
    data = synthetic_batches(1, batch, resolution)
    x0, mu = (torch.from_numpy(data[k][0].transpose(0, 3, 1, 2).copy()).to(device)
              .contiguous(memory_format=torch.channels_last) for k in ("x0", "mu"))

    def sync(out):
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    t0 = time.perf_counter()
    first = float(sync(step(x0, mu)))
    t_first = time.perf_counter() - t0
    timing = rl.time_windows(lambda: step(x0, mu), sync, warmup=max(0, opts.warmup - 1),
                             steps=opts.steps, window=opts.window)
    last = float(sync(step(x0, mu)))
    step_s = timing["median_s"]
    out = {"impl": "twin_compiled" if compile_ else "twin_eager", "size": size,
           "params": tw.count_params(model), "batch": batch, "resolution": resolution,
           "dtype": opts.dtype, "amp": str(amp), "channels_last": True, "torch_device": str(device),
           "first_call_s": t_first, "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * timing["min_s"],
           "images_per_s": batch / step_s, "timed_steps": timing["calls"],
           "loss_first": first, "loss_last": last, "finite": bool(np.isfinite([first, last]).all())}
    return out


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
    p.add_argument("--steps-per-dispatch", default="1,4", help="K values of train.steps_per_dispatch")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(rl.DTYPES), help="compute dtype")
    p.add_argument("--step-impl", default="auto", choices=("auto", "real", "light"),
                   help="real: rdbm_jax.train.program; light: the copy without clu/grain/ml_collections")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="config file[:arg] of the real step (model.size/dtype, batch, K overridden)")
    p.add_argument("--twin", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--twin-compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile variant (auto: only on CUDA)")
    p.add_argument("--find-max-batch", action="store_true", help="also double the batch until OOM")
    p.add_argument("--max-batch-cap", type=int, default=1024)
    rl.add_common_args(p, TINY, "configuration")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parsed options; --tiny replaces every default that the command line does not set."""
    p = parser()
    opts = rl.parse_with_preset(p, argv, TINY, ("batch", "resolution", "steps", "window", "matmul_n", "copy_mib"))
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
    opts.sizes, opts.ks = sizes, ks
    return opts


def run(opts: argparse.Namespace, peak: dict | None = None, env: dict | None = None) -> dict[str, Any]:
    """Every configuration of `opts`; returns {"environment", "peak", "results", "skipped"}."""
    env = env or rl.environment(opts.device_name)
    on_gpu = env["platform"] == "gpu"
    if peak is None and not opts.no_peak:
        peak = rl.measure_peak(opts.dtype, opts.matmul_n, opts.copy_mib)
    twin_off = "--twin off" if opts.twin == "off" else twin_unavailable(on_gpu)
    if opts.twin == "on" and twin_off:
        raise RuntimeError(f"--twin on: {twin_off}")
    compile_on = opts.twin_compile == "on" or (opts.twin_compile == "auto" and env["torch_device"]
                                               not in (None, "cpu"))
    results, skipped, errors = [], [], []

    def attempt(label: str, fn: Callable[[], dict]) -> None:
        r = rl.guarded(opts.keep_going, errors, label, fn)
        if r is not None:
            results.append(r)
            print(_line(r), flush=True)

    def due(what: str) -> bool:
        if opts.deadline and time.time() > opts.deadline:
            skipped.append(f"{what}: past the run's time budget")
            return False
        return True

    for size in opts.sizes:
        k1 = None
        for k in opts.ks:
            if due(f"ours {size} K={k}"):
                attempt(f"ours {size} K={k}", lambda s=size, k=k, k1=k1: bench_ours(
                    s, opts.dtype, opts.batch, opts.resolution, k, opts, peak, k1))
                last = results[-1] if results else {}
                if k == 1 and last.get("size") == size and last.get("steps_per_dispatch") == 1:
                    k1 = last["xla_cost_per_dispatch"]
        if twin_off:
            skipped.append(f"twin {size}: {twin_off}")
            continue
        for compile_ in (False, True):
            if compile_ and not compile_on:
                skipped.append(f"twin_compiled {size}: torch.compile variant off "
                               f"(--twin-compile {opts.twin_compile}, torch device {env['torch_device']})")
                continue
            label = f"twin_{'compiled' if compile_ else 'eager'} {size}"
            if due(label):
                attempt(label, lambda s=size, c=compile_: bench_twin(s, opts.batch, opts.resolution, c, opts))
                rl.free_torch_memory()
        if opts.find_max_batch and due(f"max batch {size}"):
            cleanup = rl.free_torch_memory
            ours = lambda bs, s=size: bench_ours(s, opts.dtype, bs, opts.resolution, 1, opts, peak)
            twin = lambda bs, s=size: bench_twin(s, bs, opts.resolution, False, opts)
            for impl, fn in (("ours_max_batch", ours), ("twin_eager_max_batch", twin)):
                if impl.startswith("twin") and twin_off:
                    continue
                attempt(f"{impl} {size}", lambda i=impl, f=fn, s=size: {
                    "impl": i, "size": s, **rl.find_max_batch(f, 2 * opts.batch, opts.max_batch_cap,
                                                              cleanup)})
    return {"environment": env, "peak": peak, "results": results, "skipped": skipped, "errors": errors}


def _line(r: dict) -> str:
    if "step_ms" not in r:
        return f"train {r['impl']} size={r['size']}: {r.get('largest')}"
    k = f" K={r['steps_per_dispatch']}" if "steps_per_dispatch" in r else ""
    return (f"train {r['impl']}{k} size={r['size']} batch={r['batch']} {r['resolution']}²: "
            f"{r['step_ms']:.2f} ms/step, {r['images_per_s']:.1f} img/s")


def startup_child(opts: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    """In a fresh process: imports → program → init → first step done, with a persistent cache."""
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    t_imported = time.time()
    b = build(opts.sizes[0], opts.dtype, opts.batch, opts.resolution, opts.ks[0], opts.step_impl,
              opts.config)
    jax.block_until_ready(b.state)
    t_built = time.time()
    state, _, finite = b.step(b.state, b.batches, b.key)
    jax.block_until_ready((state, finite))
    t_done = time.time()
    return {"process_start_epoch": _T_START, "imports_s": t_imported - _T_START,
            "build_and_init_s": t_built - t_imported, "first_step_s": t_done - t_built,
            "step1_done_epoch": t_done, "step_impl": b.impl}


def main(argv: list[str] | None = None, peak: dict | None = None, env: dict | None = None) -> dict:
    """Command-line entry point; returns what it writes to --out."""
    if argv is None:
        argv = sys.argv[1:]
    if "--startup-child" in argv:  # internal: used by run_all's time-to-first-step measurement
        i = argv.index("--startup-child")
        out = startup_child(parse(argv[:i] + argv[i + 2:]), argv[i + 1])
        print("STARTUP " + json.dumps(out), flush=True)
        return out
    opts = parse(argv)
    data = run(opts, peak, env)
    if opts.out:
        rl.write_json(opts.out, data)
    return data


if __name__ == "__main__":
    main()
