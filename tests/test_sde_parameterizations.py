"""The parameterisation registry: a new entry is one `sde.register` call, and the config rules, the
training loss, the sampling loop and `program.build_sampler` all take it from there."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import config as config_lib, program, sde
from rdbm_jax.runtime import distributed
from rdbm_jax.errors import ConfigError
from tests.helpers import config

SHAPE = (2, 8, 8, 3)


def _epsilon_entry() -> sde.Parameterization:
    """ε-prediction (DDPM's): the network predicts the unit noise ε of x_t = μ + Θ r + Σ ε, so it
    needs π ≡ 1 (bridge.pi='one'); built from the public inversions only."""

    def target(schedule, x0, mu, noise, t, mode, rho):
        if mode != "one":
            raise ValueError(f"pi={mode!r}: ε-prediction needs pi='one'")
        return noise

    return sde.Parameterization(
        "epsilon", network_input=lambda schedule, x_t, mu, t, pi, rho: x_t,
        # π ≡ 1: π ⊙ ε is ε itself, so πε's inversions read ε
        to_x0=lambda schedule, out, x_t, mu, t, pi, rho: sde.x0_from_pi_eps(schedule, x_t, mu, out,
                                                                           t),
        from_x0=lambda schedule, x0_hat, x_t, mu, t, pi, rho: sde.pi_eps_from_x0(
            schedule, x_t, mu, x0_hat, t),
        target=target, target_is_noise=True)


@pytest.fixture
def epsilon():
    """The ε entry, registered for one test and removed after it."""
    entry = sde.register(_epsilon_entry())
    yield entry
    del sde.PARAMETERIZATIONS["epsilon"]


def _config(**overrides):
    """The tiny demo config with the ε entry: π ≡ 1, the plain μ condition, no fusion."""
    return config(**{"bridge.parameterization": "epsilon", "bridge.pi": "one",
                     "model.condition": "mu", "sample.fuse": False, **overrides})


def test_the_builtin_entries_and_their_flags():
    assert list(sde.PARAMETERIZATIONS) == ["x0", "pi_eps", "residual", "precond"]
    assert sde.FUSABLE == ("x0", "residual")
    assert [n for n, p in sde.PARAMETERIZATIONS.items() if p.needs_rho] == ["precond"]
    assert [n for n, p in sde.PARAMETERIZATIONS.items() if p.adds_fill] == ["residual"]
    with pytest.raises(ValueError, match="already registered"):
        sde.register(sde.PARAMETERIZATIONS["x0"])


def test_config_validate_reads_the_registry(epsilon):
    cfg = _config()
    config_lib.validate(cfg)  # the choice list is the registry itself
    assert "epsilon" in config_lib.CHOICES["bridge.parameterization"]
    # the noise-target rule applies to the new entry through its flag
    with pytest.raises(ConfigError, match="parameterization='epsilon' with bridge.preset='flow'"):
        config_lib.validate(_config(**{"bridge.preset": "flow", "bridge.theta_schedule": "linear",
                                       "bridge.pi": ""}))
    with pytest.raises(ConfigError, match="sample.fuse=True"):  # not fusable
        config_lib.validate(_config(**{"sample.fuse": True}))


def test_an_unregistered_name_is_refused():
    with pytest.raises(ConfigError, match="bridge.parameterization='epsilon' is not one of"):
        config_lib.validate(_config())


def test_an_oracle_epsilon_network_samples_x0_exactly(epsilon):
    """The network that outputs `network_target` of the true x0 (the entry's inverse) makes the
    reverse loop return x0: to_x0 ∘ from_x0 is the identity at every visited t."""
    s = sde.make_schedule()
    r = np.random.default_rng(0)
    x0 = jnp.asarray(r.uniform(-0.8, 0.8, SHAPE), jnp.float32)
    mu = jnp.asarray(np.clip(np.asarray(x0) + 0.3 * r.standard_normal(SHAPE), -1, 1), jnp.float32)
    oracle = lambda x_in, m, t: sde.network_target(s, x0, x_in, m, t, "epsilon", pi="one")
    for nfe, eta in ((5, 0.0), (10, 1.0)):
        out = sde.sample(oracle, s, mu, nfe, jax.random.PRNGKey(1), eta=eta,
                         parameterization="epsilon", pi="one")
        # float32 inversions (x_t − μ − Σ ε̂)/Θ: Θ ≥ Θ_{t_min} of order 1e-2, errors of 1e-7
        # relative on |x_t − μ| ≤ 2 give ≤ ~1e-5 in x̂0
        np.testing.assert_allclose(out, x0, atol=1e-4)


# slow: a tiny training and sampler build: ~45 s; the entry's oracle, rules and loss tests stay fast
@pytest.mark.slow
def test_a_tiny_step_trains_and_samples_with_the_new_entry(epsilon):
    """program builds the loss (target ε) and the sampler from the config alone."""
    cfg = _config()
    mesh = distributed.make_mesh()
    model, schedule = program.network(cfg)
    state = program.program(cfg, mesh).init(program.init_key(0))
    loss_fn = program.make_loss_fn(model, schedule, cfg.bridge, "l2", cfg.model.condition)
    r = np.random.default_rng(2)
    x0 = r.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    batch = {"x0": x0, "mu": np.clip(x0 + 0.5, -1, 1).astype(np.float32)}
    key = jax.random.PRNGKey(3)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, key)
    # The target is ε itself: the loss is the mean of (out − ε)², ε drawn as make_loss_fn draws it.
    _, k_n, _ = jax.random.split(key, 3)
    noise = jax.random.normal(k_n, x0.shape, x0.dtype)
    assert np.isfinite(float(loss)) and float(loss) > 0.1 * float(jnp.mean(noise ** 2))
    assert np.isfinite(float(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads))))
    restorer = program.build_sampler(cfg, mesh)
    assert restorer.rule.parameterization == "epsilon"
    out = restorer(state.params, batch["mu"], jax.random.PRNGKey(0))
    assert out.shape == x0.shape and np.isfinite(out).all() and np.abs(out).max() <= 1.0
