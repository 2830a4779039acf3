"""What a config compiles: schedule, loss, train step, state init, samplers.

Every builder here reads one frozen spec (`ml_collections.FrozenConfigDict`) holding exactly the
config values it uses, and is cached on that spec: two configs share a compiled program if and only
if they agree on everything the program reads. The training loop (`train.py`), evaluation, the
sweep, sample mode, export and the Python API all get their programs from here.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from jax.sharding import Mesh
from ml_collections import ConfigDict, FrozenConfigDict

from rdbm_jax import conditioning, models, sde
from rdbm_jax.runtime import distributed
from rdbm_jax.errors import ConfigError
from rdbm_jax.schedules import Schedule
from rdbm_jax.sampler import Sampler, SamplingSpec
from rdbm_jax.train_state import TrainState, make_optimizer
from rdbm_jax.older_runs import upgrade

Params = Any  # a Flax parameter pytree: nested dicts of arrays (or of ShapeDtypeStructs)

LOSSES = ("l1", "l2")  # train.loss
# train.t_sampling: how the training step draws t, as log p(t) + const over t = 0 … T−1 (`T` the
# count). "uniform": t ~ U{0, …, T−1} (the paper's and the released code's draw). "weighted":
# p(t) ∝ (t + 1)^(−1/2), more draws at small t. "late": p(t) ∝ 1/(T − t), log-uniform in the
# distance to T, more draws at large t. Why each: `t_log_weights`.
_T_LOG_WEIGHTS: dict[str, Callable[[jnp.ndarray, int], jnp.ndarray]] = {
    "uniform": lambda t, T: jnp.zeros_like(t),
    "weighted": lambda t, T: -0.5 * jnp.log1p(t),
    "late": lambda t, T: -jnp.log(T - t),
}
T_SAMPLINGS = tuple(_T_LOG_WEIGHTS)


def sigma_data_values(text: str, tasks: list[str], key: str = "bridge.sigma_data"
                      ) -> dict[str, float]:
    """ρ per task from bridge.sigma_data (or `key`): "0.5" (every task) or
    "inpaint=1.34,noise=0.18" (each task)."""
    raw = str(text).strip()
    try:
        if "=" not in raw:
            values = {task: float(raw) for task in tasks}
        else:
            pairs = [item.split("=") for item in raw.split(",") if item.strip()]
            values = {name.strip(): float(v) for name, v in pairs}
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a number or 'task=number,…'"
                          ) from None
    missing, unknown = sorted(set(tasks) - set(values)), sorted(set(values) - set(tasks))
    if missing or unknown:
        raise ConfigError(f"{key}={text!r}: "
                          + (f"no value for task(s) {missing}" if missing
                             else f"unknown task(s) {unknown} (tasks: {sorted(tasks)})"))
    bad = [k for k, v in values.items() if not v > 0]
    if bad:
        raise ConfigError(f"{key}={text!r}: ρ of {bad} must be > 0")
    return values

def t_log_weights(t_sampling: str, num_timesteps: int) -> jnp.ndarray:
    """log p(t) + const of the training draw of t over 0 … T−1 (train.t_sampling).

    "weighted": p(t) ∝ (t + 1)^(−1/2). The per-step diagnostic (issue 19) put the trained x̂0 below
    the skip estimate at small t (t ≤ 59 of 100) while matching it at large t; this density gives
    t ≤ 59 about three quarters of the draws (uniform: 60 %) and still draws every t at least 1/√T
    as often as t = 0, so no step is starved. The loss is NOT reweighted by 1/(T p(t)): reweighting
    would keep the uniform objective's expectation and only change its variance, whereas the point
    is to spend more of the network's capacity on the small-t steps (as EDM's noise-level density
    is part of its objective, not an importance sampler).

    "late": p(t) ∝ 1/(T − t), each halving of the distance to T drawn equally often. Near t = 0,
    x_t shows x0 inside the holes and the network learns to copy it; only near T is x0 hidden,
    and there the one-step restorer (and each sampler's first step) reads x̂0. With T = 100 it
    gives t ≥ 80 about 69 % of the draws (uniform: 20 %) and t = 0 still 0.2 %, not reweighted
    either, for the same reason.
    """
    if t_sampling not in _T_LOG_WEIGHTS:
        raise ValueError(f"train.t_sampling={t_sampling!r} is not one of {T_SAMPLINGS}")
    t = jnp.arange(num_timesteps, dtype=jnp.float32)
    return _T_LOG_WEIGHTS[t_sampling](t, num_timesteps)


def draw_t(key: jax.Array, t_sampling: str, num_timesteps: int, batch: int) -> jax.Array:
    """[batch] int32 steps of the training draw: uniform (`jax.random.randint`, as before) or from
    `t_log_weights`."""
    if t_sampling == "uniform":  # the original draw, bit for bit
        return jax.random.randint(key, (batch,), 0, num_timesteps)
    logits = t_log_weights(t_sampling, num_timesteps)
    return jax.random.categorical(key, logits, shape=(batch,)).astype(jnp.int32)


# clu metric collection of the training loop (averaged between two log lines).
TrainMetrics = clu_metrics.Collection.create(loss=clu_metrics.Average.from_output("loss"),
                                             grad_norm=clu_metrics.Average.from_output("grad_norm"))


def schedule_from_config(bridge: ConfigDict) -> Schedule:
    """The bridge schedule of the `bridge` config section (Eq. 5–7); bad values name their key."""
    try:
        return sde.make_schedule(num_timesteps=bridge.num_timesteps,
                                 theta_schedule=bridge.theta_schedule, lam=bridge.lam,
                                 preset=bridge.preset, discretization=bridge.discretization)
    except ValueError as e:
        raise ConfigError(f"bridge: {e}") from None


def make_loss_fn(model: models.UNet, schedule: Schedule, bridge: ConfigDict, loss: str,
                 cond_kind: str = "mu", model_cfg: ConfigDict | None = None,
                 rho_by_task: tuple[float, ...] = (1.0,),
                 t_sampling: str = "uniform") -> Callable:
    """loss(params, batch, rng) = mean |net([x_t, cond], t) − target| (L1, Eq. 20) or squared (L2)
    at t drawn by `draw_t` (train.t_sampling; the loss is not reweighted by the draw's density) and
    ε ~ N(0, I): `make_loss_at_t`'s loss at those draws."""
    loss_at_t = make_loss_at_t(model, schedule, bridge, loss, cond_kind, model_cfg, rho_by_task)

    def loss_fn(params, batch, rng):
        x0 = batch["x0"]
        k_t, k_n, k_d = jax.random.split(rng, 3)
        t = draw_t(k_t, t_sampling, schedule.num_timesteps, x0.shape[0])
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        return loss_at_t(params, batch, t, noise, k_d)

    return loss_fn


def make_loss_at_t(model: models.UNet, schedule: Schedule, bridge: ConfigDict, loss: str,
                   cond_kind: str = "mu", model_cfg: ConfigDict | None = None,
                   rho_by_task: tuple[float, ...] = (1.0,)) -> Callable:
    """loss(params, batch, t [B], ε, dropout_key): the training loss at given steps and noise (the
    training step draws them; diagnostics fix them to ask which steps the network has learned).

    With a mask condition the error is averaged over the masked pixels only: outside the mask x̂0 is
    set to μ (`sde.project_known`), so the output there never reaches x̂0. `model_cfg`: the network
    computes with `models.compute_params` of the float32 parameters (model.param_dtype). precond:
    the network sees c_in (x_t − μ) and regresses the unit-variance F*, ρ =
    rho_by_task[batch["task"]] (times the mask with a mask condition).
    """
    # The network is read as the sampler reads it (fusion and clipping act on x̂0, not here).
    rule = sde.X0Rule(bridge.parameterization, bridge.pi or None, cond_kind)
    rho_table = jnp.asarray(rho_by_task, jnp.float32)

    def loss_at_t(params, batch, t, noise, k_d):
        x0, mu = batch["x0"], batch["mu"]
        x_t = sde.q_sample(schedule, x0, mu, t, noise, pi=rule.pi)
        rho = rho_table[batch.get("task", jnp.zeros(x0.shape[0], jnp.int32))].reshape(-1, 1, 1, 1)
        # mask-aware: ρ = 0 where x0 = μ is known
        cond, rho, _ = rule.prepare(mu, batch.get("mask"), rho)
        target = rule.target(schedule, x0, mu, noise, t, rho)
        weights = params if model_cfg is None else models.compute_params(params, model_cfg)
        net = lambda x, c, k: model.apply({"params": weights}, x, c, k, train=True,
                                          rngs={"dropout": k_d})
        out = rule.network(net)(rule.network_input(schedule, x_t, mu, t, rho), cond, t)
        err = out.astype(jnp.float32) - target
        err = jnp.abs(err) if loss == "l1" else jnp.square(err)
        if not rule.uses_mask:
            return jnp.mean(err)
        weight = jnp.broadcast_to(batch["mask"], err.shape)
        return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    return loss_at_t


def make_train_step(loss_fn: Callable, steps_per_dispatch: int = 1) -> Callable:
    """(state, batches [K, B, …], key) → (state, metrics, finite [K]): K steps in one compiled call.

    K > 1 runs the steps in a lax.scan (fewer dispatches on accelerators); K = 1 calls the step
    directly (XLA:CPU runs a backward pass inside a while loop ~10× slower). A step whose loss or
    gradient is not finite leaves the state untouched; the host stops on it.
    """

    def one(state: TrainState, batch: dict, key: jax.Array):
        rng = jax.random.fold_in(key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.apply_gradients(grads=grads)
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new, (TrainMetrics.single_from_model_output(loss=loss, grad_norm=grad_norm), finite)

    def multi(state: TrainState, batches: dict, key: jax.Array):
        if steps_per_dispatch == 1:
            first = jax.tree_util.tree_map(lambda b: b[0], batches)
            state, (metrics, finite) = one(state, first, key)
            return state, metrics, finite[None]
        state, (per_step, finite) = jax.lax.scan(lambda s, b: one(s, b, key), state, batches)
        return state, per_step.reduce(), finite

    return multi


def _dummy_inputs(model_cfg: ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x_t, condition, t) of the smallest image the UNet takes: parameter shapes do not depend on
    size."""
    side = models.downsample_factor(model_cfg)
    cond_ch = conditioning.condition_channels(model_cfg.condition)
    return (jnp.zeros((1, side, side, 3), jnp.float32),
            jnp.zeros((1, side, side, cond_ch), jnp.float32), jnp.zeros((1,), jnp.int32))


def state_initializer(model: models.UNet,
                      spec: FrozenConfigDict) -> Callable[[jax.Array], TrainState]:
    """init(key) → a fresh TrainState of the `model`/`optim`/`train` spec (`program_spec`)."""
    dummy = _dummy_inputs(spec.model)
    # One object: part of the state's treedef.
    tx = make_optimizer(spec.optim, spec.train.decay_steps)

    def init(key):
        params = model.init(key, *dummy, train=False)["params"]
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                 ema_params=jax.tree_util.tree_map(jnp.copy, params),
                                 ema_decay=float(spec.optim.ema_decay),
                                 ema_warmup=spec.optim.ema_warmup)

    return init


class Program(NamedTuple):
    """What one training configuration compiles: model, schedule, jitted init and train step."""

    model: models.UNet
    schedule: Schedule
    init: Callable[[jax.Array], TrainState]
    step: Callable
    abstract: TrainState  # of ShapeDtypeStructs (replicated), for restoring checkpoints
    loss_at_t: Callable  # jitted `make_loss_at_t`: the loss at given t and ε (diagnostics)


def network_spec(cfg: ConfigDict) -> FrozenConfigDict:
    """What the network and the bridge schedule are built from: the `model` and `bridge`
    sections (an older run's as it behaved)."""
    cfg = upgrade(cfg)
    return FrozenConfigDict(dict(model=cfg.model.to_dict(), bridge=cfg.bridge.to_dict()))


RHO_USES = ("network", "sample", "prior")  # `rho_table`'s uses


def rho_table(cfg: ConfigDict, use: str) -> tuple[tuple[str, float], ...]:
    """ρ per task (sorted by name), the one place a config's ρ is resolved: "network" — precond's
    (bridge.sigma_data; () for the other parameterisations, so their programs do not depend on
    it); "sample" — the sampler's: precond's, or with sample.fuse fusion's (sample.fuse_sigma, else
    bridge.sigma_data); "prior" — the skip estimate's prior (bridge.sigma_data, always)."""
    cfg = upgrade(cfg)
    tasks = sorted(cfg.data.tasks.keys())
    fuse = use == "sample" and bool(cfg.sample.fuse)
    precond = sde.PARAMETERIZATIONS[cfg.bridge.parameterization].needs_rho
    if use not in RHO_USES:
        raise ValueError(f"use={use!r} is not one of {RHO_USES}")
    if fuse and cfg.sample.fuse_sigma:
        values = sigma_data_values(cfg.sample.fuse_sigma, tasks, "sample.fuse_sigma")
    elif use == "prior" or precond or fuse:
        values = sigma_data_values(cfg.bridge.sigma_data, tasks)
    else:
        return ()
    return tuple(sorted(values.items()))


def program_spec(cfg: ConfigDict) -> FrozenConfigDict:
    """Everything the training program reads: network spec, `optim`, loss, LR decay length, K."""
    cfg = upgrade(cfg)
    decay = cfg.train.num_steps if cfg.optim.schedule == "cosine" else 0  # constant LR: unused
    return FrozenConfigDict(dict(model=cfg.model.to_dict(), bridge=cfg.bridge.to_dict(),
                                 optim=cfg.optim.to_dict(),
                                 train=dict(loss=cfg.train.loss, decay_steps=decay,
                                            steps_per_dispatch=cfg.train.steps_per_dispatch,
                                            t_sampling=cfg.train.t_sampling),
                                 rho=dict(rho_table(cfg, "network"))))


@functools.cache
def _network(spec: FrozenConfigDict) -> tuple[models.UNet, Schedule]:
    return models.create_model(spec.model), schedule_from_config(spec.bridge)


def network(cfg: ConfigDict) -> tuple[models.UNet, Schedule]:
    """(model, schedule) of `cfg` (built once per distinct `network_spec`)."""
    return _network(network_spec(cfg))


@functools.cache
def _program(spec: FrozenConfigDict, mesh: Mesh) -> Program:
    model, schedule = _network(FrozenConfigDict(dict(model=spec.model, bridge=spec.bridge)))
    repl = distributed.replicated(mesh)
    init = state_initializer(model, spec)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
        jax.eval_shape(init, init_key(0)))
    rho = tuple(spec.rho[k] for k in sorted(spec.rho)) or (1.0,)  # task ids index the sorted names
    loss_args = (model, schedule, spec.bridge, spec.train.loss, spec.model.condition, spec.model,
                 rho)
    loss_fn = make_loss_fn(*loss_args, t_sampling=spec.train.t_sampling)
    step = jax.jit(make_train_step(loss_fn, spec.train.steps_per_dispatch),
                   in_shardings=(repl, distributed.batch_sharding(mesh, 1), repl),
                   out_shardings=(repl, repl, repl), donate_argnums=0)
    return Program(model, schedule, jax.jit(init, out_shardings=repl), step, abstract,
                   jax.jit(make_loss_at_t(*loss_args)))


def program(cfg: ConfigDict, mesh: Mesh) -> Program:
    """The training Program of `cfg` on `mesh` (built once per distinct `program_spec` and mesh)."""
    return _program(program_spec(cfg), mesh)


def compilation_cache_dir(setting: str) -> str:
    """The folder of train.compilation_cache_dir: "auto" = $JAX_COMPILATION_CACHE_DIR if set, else
    $XDG_CACHE_HOME (or ~/.cache)/rdbm_jax/xla, per user; "" = off (returned as "")."""
    if setting != "auto":
        return os.path.expanduser(setting)
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rdbm_jax", "xla")


def use_compilation_cache(setting: str) -> None:
    """Turn JAX's persistent compilation cache on in `compilation_cache_dir(setting)` ("": off).

    Every mode and the API come through here (training, `inference.load_trained`), so a restart, an
    eval or a sample run of an already-compiled shape loads the executable instead of compiling it
    again.
    """
    folder = compilation_cache_dir(setting)
    if folder == (jax.config.jax_compilation_cache_dir or "") and (
            bool(folder) == jax.config.jax_enable_compilation_cache):
        return
    if jax.config.jax_compilation_cache_dir:  # reset: a changed folder takes effect at once
        compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", bool(folder))
    jax.config.update("jax_compilation_cache_dir", folder or None)
    if folder and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # Cache programs that took >= 1 s to compile: tiny jits cost more to store than to rebuild.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def init_key(seed: int) -> jax.Array:
    """The parameter-initialisation key ("rbg": threefry makes CPU init compile ~3× slower)."""
    return jax.random.key(seed, impl="rbg")


def sampling_spec(cfg: ConfigDict, num_steps: int | None = None,
                  eta: float | None = None) -> SamplingSpec:
    """The SamplingSpec of `cfg`'s `sample` section (NFE and η overridable): the one place a
    config becomes sampling settings."""
    cfg = upgrade(cfg)
    s = cfg.sample
    rule = sde.X0Rule(parameterization=cfg.bridge.parameterization, pi=cfg.bridge.pi or None,
                      condition=cfg.model.condition, fuse=bool(s.fuse), clip=bool(s.clip))
    return SamplingSpec(num_steps=int(num_steps or s.num_steps), rule=rule,
                        eta=float(s.eta if eta is None else eta),
                        first_step_eta=float(s.first_step_eta), rho=rho_table(cfg, "sample"),
                        prior_rho=rho_table(cfg, "prior") if cfg.eval.per_step else (),
                        tile_size=int(s.tile_size), tile_overlap=int(s.tile_overlap),
                        auto_tile=bool(s.auto_tile), hole_threshold=float(s.hole_threshold))


@functools.cache
def _sampler(net: FrozenConfigDict, spec: SamplingSpec, mesh: Mesh) -> Sampler:
    model, schedule = _network(net)
    weights = functools.partial(models.compute_params, model_cfg=net.model)  # model.param_dtype
    return Sampler(lambda params, x_t, cond, t: model.apply({"params": weights(params)}, x_t, cond,
                                                            t, train=False),
                   schedule, spec, multiple=models.downsample_factor(net.model), mesh=mesh)


def build_sampler(cfg: ConfigDict, mesh: Mesh | None = None, num_steps: int | None = None,
                  eta: float | None = None) -> Sampler:
    """The Sampler of `cfg`'s network and `sample` section (NFE / η overridable), built once per
    distinct `network_spec`, `sampling_spec` and mesh: its compiled reverse loops are reused by
    later calls."""
    return _sampler(network_spec(cfg), sampling_spec(cfg, num_steps, eta),
                    mesh or distributed.make_mesh())


def abstract_params(cfg: ConfigDict, mesh: Mesh) -> Params:
    """ShapeDtypeStructs (replicated) of the network's parameters."""
    model, _ = network(cfg)
    repl = distributed.replicated(mesh)
    shapes = jax.eval_shape(
        lambda key: model.init(key, *_dummy_inputs(cfg.model), train=False)["params"],
        init_key(0))
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)
