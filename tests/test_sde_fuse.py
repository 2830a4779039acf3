"""sample.fuse (rdbm_jax.sde.fuse_observation): the network's x̂0 updated by the observation x_t.

Invariants, a float64 Monte-Carlo check that it is the Gaussian posterior mean, the guarantee
against the skip estimate, the sampler's fixed point, and the guards.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import config as config_lib
from rdbm_jax import sde
from rdbm_jax.errors import ConfigError
from tests.helpers import bridge_pair, config

SHAPE = (2, 4, 4, 3)




@pytest.mark.parametrize("pi", ("one", "residual", "abs", "zero"))
def test_zero_residual_is_the_skip_estimate_and_t_last_is_the_network(pi):
    """r̂ ≡ 0 gives precond's skip estimate exactly (precond with F ≡ 0); at t = T−1 (Θ = Σ = 0)
    the fused x̂0 is the network's own; at t = −1 (x_t = x0) it is x0."""
    s = sde.make_schedule()
    x0, mu = bridge_pair(0)
    t = jnp.array([3, 57])
    x_t = sde.q_sample(s, x0, mu, t, jax.random.normal(jax.random.PRNGKey(1), SHAPE), pi=pi)
    skip = sde.predict_x0(s, jnp.zeros(SHAPE), x_t, mu, t, "precond", pi=pi, sigma_data=0.5)
    np.testing.assert_allclose(sde.fuse_observation(s, mu, x_t, mu, t, 0.5, pi), skip, atol=1e-6)
    guess = mu + 0.3
    last = jnp.full((2,), 99)
    np.testing.assert_array_equal(sde.fuse_observation(s, guess, mu, mu, last, 0.5, pi), guess)
    if pi != "zero":  # π = 0: Σ_{−1} = 0 either way; x_{−1} = x0 is an exact observation
        got = sde.fuse_observation(s, guess, x0, mu, jnp.full((2,), -1), 0.5, pi)
        np.testing.assert_allclose(got, x0, atol=1e-6)


def test_fusion_is_the_posterior_mean_and_beats_the_skip_estimate(x64):
    """float64 Monte-Carlo, π = 1: r = m + e, e ~ N(0, v), the network knows m. With ρ² = v the
    fused estimate's error is uncorrelated with y and m (the posterior mean of a Gaussian) and its
    mean-square error is vΣ²/(Θ²v + Σ²). With any ρ² ≥ v its error is below the skip estimate's
    at every t, and the network's alone (far below at t = 0)."""
    s = sde.make_schedule(num_timesteps=20)
    rng = np.random.default_rng(0)
    n, v = 400_000, 0.2 ** 2
    for t in (0, 5, 12, 18):
        m = rng.normal(0, 0.5, n)  # what the network knows (its estimate of r)
        r = m + rng.normal(0, np.sqrt(v), n)
        x_t = sde.q_sample(s, jnp.asarray(r), jnp.zeros(n), t, jnp.asarray(rng.standard_normal(n)),
                           pi="one")
        y = np.asarray(x_t)
        th, sg = float(s.Theta[t]), float(s.Sigma[t])
        fused = np.asarray(sde.fuse_observation(s, jnp.asarray(m), x_t, jnp.zeros(n), t,
                                                np.sqrt(v), "one"))
        err = r - fused
        tol = 5 * np.sqrt(np.mean(err ** 2) / n)
        assert abs(np.mean(err * y)) < tol * np.std(y) and abs(np.mean(err * m)) < tol * np.std(m)
        np.testing.assert_allclose(np.mean(err ** 2), v * sg ** 2 / (th ** 2 * v + sg ** 2),
                                   rtol=1e-2)
        rho = np.sqrt(r.var())  # the prior the skip estimate uses: r's own rms, > √v
        for prior in (np.sqrt(v), 0.3, rho):
            f = np.asarray(sde.fuse_observation(s, jnp.asarray(m), x_t, jnp.zeros(n), t, prior,
                                                "one"))
            skip = float(sde.precond_scalings(s, t, rho, "one")[0]) * y
            assert np.mean((r - f) ** 2) < np.mean((r - skip) ** 2), (t, prior)
        assert np.mean(err ** 2) < v  # below the network's own error at every t ...
        if t == 0:
            assert np.mean(err ** 2) < 0.05 * v  # ... and far below it where x_t is nearly x0


def test_fused_sampler_keeps_a_network_that_ignores_x_t_at_every_nfe():
    """A network whose residual does not depend on x_t: the fused η = 0 sampler returns μ + r̂ at
    every NFE (the update agrees with itself, so steps neither help nor hurt), and an x0 oracle
    still returns x0."""
    s = sde.make_schedule()
    x0, mu = bridge_pair(3)
    r_hat = 0.5 * (x0 - mu)
    for nfe in (1, 2, 5, 10, 20):
        out = sde.sample(lambda x, m, t: r_hat, s, mu, nfe, None, clip=False,
                         parameterization="residual", sigma_data=0.5, fuse=True)
        np.testing.assert_allclose(out, mu + r_hat, atol=1e-5)
        out = sde.sample(lambda x, m, t: x0, s, mu, nfe, None, clip=False, parameterization="x0",
                         sigma_data=0.5, fuse=True)
        np.testing.assert_allclose(out, x0, atol=1e-5)


def test_fuse_guards():
    """sde.sample refuses fuse without ρ or with a parameterisation that reads x̂0 off x_t;
    config.validate refuses sample.fuse with such a parameterisation, naming the key."""
    s = sde.make_schedule()
    z = jnp.zeros(SHAPE)
    with pytest.raises(ValueError, match="sigma_data"):
        sde.sample(lambda x, m, t: x, s, z, 2, None, parameterization="residual", fuse=True)
    for par in ("precond", "pi_eps"):
        with pytest.raises(ValueError, match="fuse"):
            sde.sample(lambda x, m, t: x, s, z, 2, None, parameterization=par, fuse=True,
                       sigma_data=0.5)
    cfg = config()
    cfg.sample.fuse = True
    cfg.bridge.parameterization = "pi_eps"
    with pytest.raises(ConfigError, match="sample.fuse"):
        config_lib.validate(cfg)
    cfg.bridge.parameterization = "residual"
    config_lib.validate(cfg)


@pytest.mark.parametrize("pi", sde.PI_SCALED_BY_RESIDUAL)
def test_fusion_weight_ignores_rho_when_pi_scales_with_the_residual(pi):
    """Under π = x0 − μ (or |x0 − μ|) E[π²] = ρ², so c_skip = Θ/(Θ² + Σ²) for every ρ: why
    sample.fuse_sigma cannot make fusion distrust a noisy x_t (config refuses fused η > 0). Under
    π = 1 it shrinks with ρ. Tolerance: a few float32 roundings of each quotient (≤ 1e-6
    relative)."""
    s = sde.make_schedule(100, preset="rdbm")
    t = jnp.arange(98)  # Σ_{T−1} = Θ_{T−1} = 0 at t = 99: no observation there
    theta, sigma = np.asarray(s.Theta)[:98], np.asarray(s.Sigma)[:98]
    expected = theta / (theta ** 2 + sigma ** 2)
    for rho in (0.05, 0.2, 1.32):
        c_skip = np.asarray(sde.precond_scalings(s, t, rho, pi)[0])
        np.testing.assert_allclose(c_skip, expected, rtol=1e-6)
    one = [np.asarray(sde.precond_scalings(s, t, rho, "one")[0]) for rho in (0.05, 1.32)]
    assert (one[0] < one[1]).all()  # π = 1: a smaller ρ trusts x_t less at every t
