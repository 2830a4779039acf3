"""The train steps bench_train times: the real `rdbm_jax.train.program` of a config file with
overrides, or, without ml_collections/clu/grain, the light copy of that step for configs/default.py
(tests/test_benchmarks.py checks that both give identical states)."""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state as flax_train_state

from rdbm_jax import distributed, models, sde

# The defaults of configs/default.py that the benchmarked step depends on (checked by the tests).
BRIDGE = dict(preset="rdbm", num_timesteps=100, theta_schedule="cosine", lam=10 / 255, pi="",
              parameterization="x0")
OPTIM = dict(optimizer="adam", learning_rate=1e-4, b1=0.9, b2=0.999, schedule="constant",
             warmup_steps=0, grad_clip=0.0, ema_decay=0.999)
LOSS = "l1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def parse_overrides(text: str) -> dict[str, str]:
    """"model.attention_impl=cudnn,model.remat=true" → {dotted key: value text}."""
    out = {}
    for item in (v.strip() for v in text.split(",")):
        key, eq, value = item.partition("=")
        if item and (not eq or "." not in key):
            raise ValueError(f"override {item!r}: expected section.key=value")
        if item:
            out[key.strip()] = value.strip()
    return out


def _cast(text: str, like: Any) -> Any:
    """The override text as the type of the value it replaces."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a boolean")
        return text.lower() in ("true", "1")
    return type(like)(text) if isinstance(like, (int, float)) else text


def real_program(config: str, size: str, dtype: str, batch: int, k: int, mesh: Any,
                 overrides: dict[str, str] | None = None) -> tuple[Any, jax.Array, jax.Array]:
    """(Program, init key, step key) of `config` with model.size/dtype, batch, K and `overrides` set."""
    from rdbm_jax import train
    from rdbm_jax.config import get

    cfg = load_config(config)
    # The PyTorch twin implements the paper's network and objective (μ-only condition, x0 target):
    # the benchmark runs ours on the same work whatever the config file chose (demo: a mask model).
    cfg.model.condition, cfg.bridge.parameterization = "mu", "x0"
    cfg.model.size, cfg.model.dtype = size, dtype
    cfg.train.batch_size, cfg.train.steps_per_dispatch = batch, k
    for key, value in (overrides or {}).items():
        section, name = key.rsplit(".", 1)
        try:
            node = get(cfg, section)
            node[name] = _cast(value, node[name])
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"override {key}={value}: {e}") from None
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


def light_program(size: str, dtype: str, k: int, mesh: Any,
                  model_overrides: dict[str, Any] | None = None) -> tuple[Any, Any, Callable, Callable]:
    """(model, schedule, jitted init, jitted step) of train.program for the default config, built
    from rdbm_jax.models/sde/distributed only (no ml_collections, clu or grain)."""
    model = models.create_model({"size": size, "dtype": dtype, **(model_overrides or {})})
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
