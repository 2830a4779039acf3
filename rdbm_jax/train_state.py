"""TrainState with an exponential moving average of the parameters, and the optax optimizer."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

# optim.ema_warmup: "none" = ema_decay from the first step; "ema_pytorch" = DGSolver's EMA
# (lucidrains ema_pytorch.EMA defaults: update_after_step=100, inv_gamma=1, power=2/3,
# update_every=1).
EMA_WARMUPS = ("none", "ema_pytorch")
OPTIMIZERS = ("adam", "adamw")          # optim.optimizer
LR_SCHEDULES = ("constant", "cosine")   # optim.schedule
_EMA_PYTORCH_AFTER, _EMA_PYTORCH_POWER = 100, 2.0 / 3.0


class TrainState(train_state.TrainState):
    """flax TrainState + `ema_params`, updated inside `apply_gradients`."""

    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.999)
    ema_warmup: str = struct.field(pytree_node=False, default="none")

    def apply_gradients(self, *, grads: Any, **kwargs) -> "TrainState":
        """One optimizer step, then ema ← decay·ema + (1 − decay)·params (decay per
        `ema_decay_at`)."""
        new = super().apply_gradients(grads=grads, **kwargs)
        decay = ema_decay_at(self.step, self.ema_decay, self.ema_warmup)
        return new.replace(ema_params=ema_update(self.ema_params, new.params, decay))


def ema_decay_at(update: Any, decay: float, warmup: str = "none") -> Any:
    """EMA decay of update number `update` (0-based): constant, or ema_pytorch's warm-up
    (DGSolver)."""
    # ema_pytorch: updates 0..100 copy the parameters (decay 0); update k > 100 uses min(decay, 1 −
    # (1 + k − 100)^(−2/3)), reaching 0.995 after ≈ 2.9k updates, 0.999 after ≈ 31.7k. `warmup` is
    # one of EMA_WARMUPS (config.validate checks optim.ema_warmup).
    if warmup == "none":
        return decay
    epoch = jnp.asarray(update, jnp.float32) - _EMA_PYTORCH_AFTER
    value = 1.0 - (1.0 + jnp.maximum(epoch, 0.0)) ** -_EMA_PYTORCH_POWER
    return jnp.where(epoch <= 0, 0.0, jnp.minimum(value, decay))


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema ← decay·ema + (1 − decay)·params, leaf by leaf in the parameter dtype."""
    return jax.tree_util.tree_map(
        lambda e, p: (decay * e.astype(jnp.float32) +
                      (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype), ema, params)


def learning_rate_schedule(optim: Any, num_steps: int) -> optax.Schedule:
    """Linear warmup, then constant or cosine decay to `min_lr_ratio`·lr at `num_steps`."""
    lr, warmup = optim.learning_rate, optim.warmup_steps
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1), end_value=lr * optim.min_lr_ratio)
    if warmup:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup),
             optax.constant_schedule(lr)], [warmup])
    return optax.constant_schedule(lr)


def make_optimizer(optim: Any, num_steps: int) -> optax.GradientTransformation:
    """Adam/AdamW with optional global-norm clipping, all from the `optim` config section."""
    lr = learning_rate_schedule(optim, num_steps)
    if optim.optimizer == "adamw":
        opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    else:
        opt = optax.adam(lr, b1=optim.b1, b2=optim.b2)
    if optim.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
    return opt
