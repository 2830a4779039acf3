"""The training loss for every preset × π mode × parameterisation, the optimizer, and the
writers."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from rdbm_jax import program, sde
from rdbm_jax.runtime import writers
from rdbm_jax.train_state import learning_rate_schedule, make_optimizer


class LinearNet:
    """A stand-in network: out = w·x_t + c·μ + 0.01·t (enough to check what the loss feeds it)."""

    def apply(self, variables, x_t, mu, t, train=False, rngs=None):
        p = variables["params"]
        return p["w"] * x_t + p["c"] * mu + 0.01 * t[:, None, None, None]


@pytest.mark.parametrize("preset", ["rdbm", "goub", "brownian", "irsde", "flow"])
@pytest.mark.parametrize("parameterization, loss", [("x0", "l1"), ("pi_eps", "l2")])
def test_loss_is_the_mean_error_to_the_sde_target(preset, parameterization, loss):
    pi = "one" if preset == "irsde" else ""
    bridge = ml_collections.ConfigDict(dict(pi=pi, parameterization=parameterization))
    schedule = sde.make_schedule(100, preset=preset)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
    mu = jnp.asarray(np.clip(np.asarray(x0) + rng.normal(0, 0.3, x0.shape), -1, 1), jnp.float32)
    params = {"w": jnp.float32(0.3), "c": jnp.float32(0.2)}
    key = jax.random.PRNGKey(7)
    got = program.make_loss_fn(LinearNet(), schedule, bridge, loss)(params, {"x0": x0, "mu": mu},
                                                                    key)
    # The same draws by hand (make_loss_fn splits the key into t, noise and dropout keys).
    k_t, k_n, _ = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (4,), 0, 100)
    noise = jax.random.normal(k_n, x0.shape)
    x_t = sde.q_sample(schedule, x0, mu, t, noise, pi=pi or None)
    target = sde.training_target(schedule, x0, mu, noise, parameterization, pi=pi or None, t=t)
    err = LinearNet().apply({"params": params}, x_t, mu, t) - target
    want = jnp.mean(jnp.abs(err)) if loss == "l1" else jnp.mean(err ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isfinite(float(got))
    # The same loss at those t and ε handed in (what diagnostics fix): the draw is all that differs
    at_t = program.make_loss_at_t(LinearNet(), schedule, bridge, loss)
    np.testing.assert_allclose(at_t(params, {"x0": x0, "mu": mu}, t, noise, None), want, rtol=1e-6)


def test_optimizer_schedule_and_clipping():
    optim = ml_collections.ConfigDict(
        dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.1, b1=0.9, b2=0.999,
             warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0, ema_decay=0.9))
    lr = learning_rate_schedule(optim, 110)
    assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(1e-3) and float(
        lr(110)) == pytest.approx(1e-4)
    params, grads = {"w": jnp.zeros(4)}, {"w": jnp.full(4, 100.0)}  # global norm 200

    def first_moment(grad_clip: float) -> np.ndarray:
        """Adam's first moment after one update: (1 − b1) × the gradient Adam received."""
        optim.grad_clip = grad_clip
        tx = make_optimizer(optim, 110)
        _, state = tx.update(grads, tx.init(params), params)
        is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)
        (adam,) = [s for s in jax.tree_util.tree_leaves(state, is_leaf=is_adam) if is_adam(s)]
        return np.asarray(adam.mu["w"])

    # Clipped to norm 1: 0.5 each; grad_clip 0: unclipped.
    np.testing.assert_allclose(first_moment(1.0), 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(first_moment(0.0), 0.1 * 100.0, rtol=1e-6)
    optim.schedule, optim.warmup_steps = "constant", 0
    assert float(learning_rate_schedule(optim, 110)(50)) == pytest.approx(1e-3)


def test_jsonl_writer_and_process_gating(tmp_path):
    w = writers.create_writer(str(tmp_path), is_main=True)
    w.write_scalars(3, {"train/loss": np.float32(0.5), "val/psnr": 20.0})
    w.write_images(3, {"grid": np.full((4, 6, 3), 0.5, np.float32)})
    w.flush()
    row = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[0])
    assert row == {"step": 3, "train/loss": 0.5, "val/psnr": 20.0}
    assert np.asarray(Image.open(tmp_path / "samples" / "step_3.png")).shape == (4, 6, 3)
    other = tmp_path / "other"
    other.mkdir()
    silent = writers.create_writer(str(other), is_main=False)
    silent.write_scalars(1, {"a": 1.0})
    silent.write_images(1, {"grid": np.zeros((2, 2, 3))})
    assert os.listdir(other) == []
