"""TrainState with an exponential moving average of the parameters, and the optax optimizer."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax TrainState + `ema_params`, updated inside `apply_gradients`."""

    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.999)

    def apply_gradients(self, *, grads: Any, **kwargs) -> "TrainState":
        """One optimizer step, then ema ← decay·ema + (1 − decay)·params."""
        new = super().apply_gradients(grads=grads, **kwargs)
        return new.replace(ema_params=ema_update(self.ema_params, new.params, self.ema_decay))


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema ← decay·ema + (1 − decay)·params, leaf by leaf in the parameter dtype."""
    return jax.tree_util.tree_map(
        lambda e, p: (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype),
        ema, params)


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup, then constant or cosine decay to `min_lr_ratio`·lr at `num_steps`."""
    lr, warmup = optim.learning_rate, optim.warmup_steps
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1), end_value=lr * optim.min_lr_ratio)
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
                                    [warmup])
    return optax.constant_schedule(lr)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Adam/AdamW with optional global-norm clipping, all from the `optim` config section."""
    lr = learning_rate_schedule(optim, num_steps)
    if optim.optimizer == "adamw":
        opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    else:
        opt = optax.adam(lr, b1=optim.b1, b2=optim.b2)
    if optim.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
    return opt
