"""What a config compiles: schedule, loss, train step, state init, samplers; trained parameters.

Every builder here reads one frozen spec (`ml_collections.FrozenConfigDict`) holding exactly the
config values it uses, and is cached on that spec: two configs share a compiled program if and only
if they agree on everything the program reads. The training loop (`train.py`), evaluation, the
sweep, sample mode, export and the Python API all get their programs from here.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from ml_collections import FrozenConfigDict

from rdbm_jax import checkpoints, conditioning, distributed, models, sde
from rdbm_jax.errors import ConfigError
from rdbm_jax.sampler import Sampler
from rdbm_jax.train_state import TrainState, make_optimizer

log = logging.getLogger("rdbm_jax")

LOSSES = ("l1", "l2")  # train.loss

# Keys whose value must equal the checkpoint's: restoring with another bridge is meaningless.
MUST_MATCH = ("bridge.preset", "bridge.parameterization", "bridge.num_timesteps",
              "bridge.theta_schedule", "bridge.pi", "bridge.lam", "bridge.discretization", "model.size",
              "model.condition")
# ... and, for bridge.parameterization='precond' only, these (ρ scales the network's input and output).
MUST_MATCH_PRECOND = ("bridge.sigma_data",)


def sigma_data_values(text: str, tasks: list[str]) -> dict[str, float]:
    """ρ per task from bridge.sigma_data: "0.5" (every task) or "inpaint=1.34,noise=0.18" (each task)."""
    raw = str(text).strip()
    try:
        if "=" not in raw:
            values = {task: float(raw) for task in tasks}
        else:
            pairs = [item.split("=") for item in raw.split(",") if item.strip()]
            values = {name.strip(): float(v) for name, v in pairs}
    except ValueError:
        raise ConfigError(f"bridge.sigma_data={text!r} is not a number or 'task=number,…'") from None
    missing, unknown = sorted(set(tasks) - set(values)), sorted(set(values) - set(tasks))
    if missing or unknown:
        raise ConfigError(f"bridge.sigma_data={text!r}: " + (f"no value for task(s) {missing}" if missing
                          else f"unknown task(s) {unknown} (tasks: {sorted(tasks)})"))
    bad = [k for k, v in values.items() if not v > 0]
    if bad:
        raise ConfigError(f"bridge.sigma_data={text!r}: ρ of {bad} must be > 0")
    return values

# clu metric collection of the training loop (averaged between two log lines).
TrainMetrics = clu_metrics.Collection.create(loss=clu_metrics.Average.from_output("loss"),
                                             grad_norm=clu_metrics.Average.from_output("grad_norm"))


def schedule_from_config(bridge: Any) -> Any:
    """The bridge schedule of the `bridge` config section (Eq. 5–7); bad values name their key."""
    try:
        return sde.make_schedule(num_timesteps=bridge.num_timesteps, theta_schedule=bridge.theta_schedule,
                                 lam=bridge.lam, preset=bridge.preset,
                                 discretization=bridge.discretization)
    except ValueError as e:
        raise ConfigError(f"bridge: {e}") from None


def make_loss_fn(model: Any, schedule: Any, bridge: Any, loss: str, cond_kind: str = "mu",
                 rho_by_task: tuple[float, ...] = (1.0,)) -> Callable:
    """loss(params, batch, rng) = mean |net([x_t, cond], t) − target| (L1, Eq. 20) or squared (L2).

    With a mask condition the error is averaged over the masked pixels only: outside the mask x̂0 is
    set to μ (`sde.project_known`), so the output there never reaches x̂0. precond: the network sees
    c_in (x_t − μ) and regresses the unit-variance F*, ρ = rho_by_task[batch["task"]] (times the mask
    with a mask condition).
    """
    pi = bridge.pi or None
    masked = conditioning.uses_mask(cond_kind)
    rho_table = jnp.asarray(rho_by_task, jnp.float32)

    def loss_fn(params, batch, rng):
        x0, mu = batch["x0"], batch["mu"]
        k_t, k_n, k_d = jax.random.split(rng, 3)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        x_t = sde.q_sample(schedule, x0, mu, t, noise, pi=pi)
        rho = rho_table[batch.get("task", jnp.zeros(x0.shape[0], jnp.int32))].reshape(-1, 1, 1, 1)
        if masked:
            rho = rho * batch["mask"]  # mask-aware: ρ = 0 where x0 = μ is known
        par = bridge.parameterization
        target = sde.training_target(schedule, x0, mu, noise, par, pi=pi, t=t, sigma_data=rho)
        cond = conditioning.condition(mu, batch.get("mask"), cond_kind)
        x_in = sde.network_input(schedule, x_t, mu, t, par, pi=pi, sigma_data=rho)
        out = model.apply({"params": params}, x_in, cond, t, train=True, rngs={"dropout": k_d})
        out = out + conditioning.output_offset(cond, cond_kind, bridge.parameterization)
        err = out.astype(jnp.float32) - target
        err = jnp.abs(err) if loss == "l1" else jnp.square(err)
        if not masked:
            return jnp.mean(err)
        weight = jnp.broadcast_to(batch["mask"], err.shape)
        return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    return loss_fn


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
            state, (metrics, finite) = one(state, jax.tree_util.tree_map(lambda b: b[0], batches), key)
            return state, metrics, finite[None]
        state, (per_step, finite) = jax.lax.scan(lambda s, b: one(s, b, key), state, batches)
        return state, per_step.reduce(), finite

    return multi


def _dummy_inputs(model_cfg: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x_t, condition, t) of the smallest image the UNet takes: parameter shapes do not depend on size."""
    side = models.downsample_factor(model_cfg)
    cond_ch = conditioning.condition_channels(model_cfg.condition)
    return (jnp.zeros((1, side, side, 3), jnp.float32), jnp.zeros((1, side, side, cond_ch), jnp.float32),
            jnp.zeros((1,), jnp.int32))


def state_initializer(model: Any, spec: Any) -> Callable[[jax.Array], TrainState]:
    """init(key) → a fresh TrainState of the `model`/`optim`/`train` spec (`program_spec`)."""
    dummy = _dummy_inputs(spec.model)
    tx = make_optimizer(spec.optim, spec.train.decay_steps)  # one object: part of the state's treedef

    def init(key):
        params = model.init(key, *dummy, train=False)["params"]
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                 ema_params=jax.tree_util.tree_map(jnp.copy, params),
                                 ema_decay=float(spec.optim.ema_decay), ema_warmup=spec.optim.ema_warmup)

    return init


class Program(NamedTuple):
    """What one training configuration compiles: model, schedule, jitted init and train step."""

    model: Any
    schedule: Any
    init: Callable[[jax.Array], TrainState]
    step: Callable
    abstract: Any  # ShapeDtypeStructs (replicated) of the TrainState, for restoring checkpoints


def network_spec(cfg: Any) -> FrozenConfigDict:
    """What the network and the bridge schedule are built from: the `model` and `bridge` sections."""
    return FrozenConfigDict(dict(model=cfg.model.to_dict(), bridge=cfg.bridge.to_dict()))


def _rho_spec(cfg: Any) -> dict[str, float]:
    """ρ per task (precond only; {} otherwise, so other objectives' programs do not depend on it)."""
    if cfg.bridge.parameterization != "precond":
        return {}
    return sigma_data_values(cfg.bridge.sigma_data, sorted(cfg.data.tasks.keys()))


def program_spec(cfg: Any) -> FrozenConfigDict:
    """Everything the training program reads: network spec, `optim`, loss, LR decay length, K."""
    decay = cfg.train.num_steps if cfg.optim.schedule == "cosine" else 0  # constant LR: unused
    return FrozenConfigDict(dict(model=cfg.model.to_dict(), bridge=cfg.bridge.to_dict(),
                                 optim=cfg.optim.to_dict(),
                                 train=dict(loss=cfg.train.loss, decay_steps=decay,
                                            steps_per_dispatch=cfg.train.steps_per_dispatch),
                                 rho=_rho_spec(cfg)))


@functools.cache
def _network(spec: FrozenConfigDict) -> tuple[Any, Any]:
    return models.create_model(spec.model), schedule_from_config(spec.bridge)


def network(cfg: Any) -> tuple[Any, Any]:
    """(model, schedule) of `cfg` (built once per distinct `network_spec`)."""
    return _network(network_spec(cfg))


@functools.cache
def _program(spec: FrozenConfigDict, mesh: Any) -> Program:
    model, schedule = _network(FrozenConfigDict(dict(model=spec.model, bridge=spec.bridge)))
    repl = distributed.replicated(mesh)
    init = state_initializer(model, spec)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                                      jax.eval_shape(init, init_key(0)))
    rho = tuple(spec.rho[k] for k in sorted(spec.rho)) or (1.0,)  # task ids index the sorted names
    loss_fn = make_loss_fn(model, schedule, spec.bridge, spec.train.loss, spec.model.condition, rho)
    step = jax.jit(make_train_step(loss_fn, spec.train.steps_per_dispatch),
                   in_shardings=(repl, distributed.batch_sharding(mesh, 1), repl),
                   out_shardings=(repl, repl, repl), donate_argnums=0)
    return Program(model, schedule, jax.jit(init, out_shardings=repl), step, abstract)


def program(cfg: Any, mesh: Any) -> Program:
    """The training Program of `cfg` on `mesh` (built once per distinct `program_spec` and mesh)."""
    return _program(program_spec(cfg), mesh)


def init_key(seed: int) -> jax.Array:
    """The parameter-initialisation key ("rbg": threefry makes CPU init compile ~3× slower)."""
    return jax.random.key(seed, impl="rbg")


def init_state(cfg: Any, mesh: Any) -> TrainState:
    """The initial TrainState of `cfg`, initialised directly on the devices, replicated."""
    return program(cfg, mesh).init(init_key(cfg.seed))


def sampler_spec(cfg: Any, num_steps: int | None = None, eta: float | None = None) -> FrozenConfigDict:
    """What a Sampler reads: the network spec and the `sample` settings (NFE and η overridable)."""
    s = cfg.sample
    return FrozenConfigDict(dict(
        model=cfg.model.to_dict(), bridge=cfg.bridge.to_dict(),
        sample=dict(num_steps=int(num_steps or s.num_steps), eta=float(s.eta if eta is None else eta),
                    clip=bool(s.clip), tile_size=int(s.tile_size), tile_overlap=int(s.tile_overlap),
                    first_step_eta=float(s.first_step_eta)),
        rho=_rho_spec(cfg)))


@functools.cache
def _sampler(spec: FrozenConfigDict, mesh: Any) -> Sampler:
    model, schedule = _network(FrozenConfigDict(dict(model=spec.model, bridge=spec.bridge)))
    s = spec.sample
    return Sampler(lambda params, x_t, cond, t: model.apply({"params": params}, x_t, cond, t, train=False),
                   schedule, num_steps=s.num_steps, multiple=models.downsample_factor(spec.model), mesh=mesh,
                   eta=s.eta, clip=s.clip, parameterization=spec.bridge.parameterization,
                   pi=spec.bridge.pi or None, tile_size=s.tile_size, tile_overlap=s.tile_overlap,
                   condition=spec.model.condition, sigma_data=dict(spec.rho),
                   first_step_eta=s.first_step_eta)


def sampler(cfg: Any, mesh: Any = None, num_steps: int | None = None, eta: float | None = None) -> Sampler:
    """The Sampler of `cfg`'s network and `sample` section (NFE / η overridable), built once per
    distinct `sampler_spec` and mesh: its compiled reverse loops are reused by later calls."""
    return _sampler(sampler_spec(cfg, num_steps, eta), mesh or distributed.make_mesh())


def check_compatible(cfg: Any, saved: dict, where: str) -> None:
    """Refuse (ConfigError) a config whose bridge/model differs from the checkpoint's."""
    precond = cfg.bridge.parameterization == "precond"
    for key in MUST_MATCH + (MUST_MATCH_PRECOND if precond else ()):
        section, name = key.split(".")
        theirs, ours = saved.get(section, {}).get(name), cfg[section][name]
        if theirs is not None and theirs != ours:
            raise ConfigError(f"{key}={ours!r} but the checkpoint {where} was trained with {theirs!r}; "
                              f"restoring with a different bridge is refused (set --config.{key}={theirs!r})")


def abstract_params(cfg: Any, mesh: Any) -> Any:
    """ShapeDtypeStructs (replicated) of the network's parameters."""
    model, _ = network(cfg)
    repl = distributed.replicated(mesh)
    shapes = jax.eval_shape(lambda key: model.init(key, *_dummy_inputs(cfg.model), train=False)["params"],
                            init_key(0))
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)


class Trained(NamedTuple):
    """A checkpoint ready for inference: network, schedule, parameters (EMA by default), step."""

    model: Any
    schedule: Any
    params: Any
    step: int


def load_trained(cfg: Any, workdir: str, mesh: Any, checkpoint: str = "", saved_config: dict | None = None
                 ) -> Trained:
    """The parameters (EMA unless sample.use_ema=False) of a checkpoint, and nothing else of its state.

    `saved_config`: the checkpoint's config when the caller has already read it (not read twice).
    """
    directory, step = checkpoints.resolve(workdir, checkpoint)
    where = os.path.join(directory, str(step))
    saved = checkpoints.read_config(directory, step) if saved_config is None else saved_config
    check_compatible(cfg, saved, where)
    which = "ema_params" if cfg.sample.use_ema else "params"
    params = checkpoints.load_params(directory, step, abstract_params(cfg, mesh), which)
    log.info("loaded %s parameters of step %d from %s", "EMA" if cfg.sample.use_ema else "raw", step, where)
    model, schedule = network(cfg)
    return Trained(model, schedule, params, step)
