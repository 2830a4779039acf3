"""The precond parameterisation of rdbm_jax.sde: scalings, targets, Monte-Carlo optimality, no
NaN."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import sde
from tests.helpers import bridge_pair

SHAPE = (2, 4, 4, 3)
PIS = ("one", "residual", "abs", "zero")




def test_scalings_golden_values_and_numpy_formula():
    """Golden values (rdbm preset, cosine, T = 100, λ = 10/255, ρ = 0.5) and a float64 numpy
    recomputation."""
    s = sde.make_schedule()
    golden = {("one", 50): (1.3664976, 0.29224878, 3.3682652),
              ("residual", 50): (1.8372533, 0.16943489, 3.9055879),
              ("one", 99): (0.0, 0.5, 1.0), ("residual", -1): (1.0, 0.0, 2.0)}
    for (pi, t), want in golden.items():
        np.testing.assert_allclose([float(c) for c in sde.precond_scalings(s, t, 0.5, pi)], want,
                                   rtol=2e-6)
    th, sg = np.asarray(s.Theta, np.float64), np.asarray(s.Sigma, np.float64)
    for pi, m2 in (("one", 1.0), ("residual", 0.25), ("zero", 0.0)):
        var = th[:-1] ** 2 * 0.25 + sg[:-1] ** 2 * m2
        got = sde.precond_scalings(s, jnp.arange(99), 0.5, pi)
        np.testing.assert_allclose(got[0], th[:-1] * 0.25 / var, rtol=1e-5)
        np.testing.assert_allclose(got[1], np.sqrt(0.25 - th[:-1] * 0.25 / var * th[:-1] * 0.25),
                                   atol=2e-6)
        np.testing.assert_allclose(got[2], 1 / np.sqrt(var), rtol=1e-5)


def test_c_out_has_no_float32_cancellation_at_t0():
    """c_out = ρΣ√E[π²]/√var in float32 matches float64 to 1e-6 relative at t = 0 (subtraction would
    not)."""
    s = sde.make_schedule()
    c32 = float(sde.precond_scalings(s, 0, 0.18, "one")[1])
    th, sg = float(np.float64(s.Theta[0])), float(np.float64(s.Sigma[0]))
    c64 = 0.18 * sg / np.sqrt(th ** 2 * 0.18 ** 2 + sg ** 2)
    assert abs(c32 - c64) / c64 < 1e-5


@pytest.mark.parametrize("pi", PIS)
def test_zero_network_gives_exactly_the_skip_estimate(pi):
    """F ≡ 0: x̂0 = μ + c_skip (x_t − μ), exactly, at every t (scalar and per-pixel ρ)."""
    s = sde.make_schedule()
    x0, mu = bridge_pair(0)
    t = jnp.array([0, 99])
    x_t = sde.q_sample(s, x0, mu, t, jax.random.normal(jax.random.PRNGKey(1), SHAPE), pi=pi)
    for rho in (0.5, jnp.full(SHAPE, 0.3).at[0, 0].set(0.0)):
        c_skip = sde.precond_scalings(s, t, rho, pi)[0]
        c_skip = c_skip if jnp.ndim(rho) else c_skip[:, None, None, None]
        got = sde.predict_x0(s, jnp.zeros(SHAPE), x_t, mu, t, "precond", pi=pi, sigma_data=rho)
        np.testing.assert_array_equal(got, mu + c_skip * (x_t - mu))


@pytest.mark.parametrize("pi", ("one", "residual"))
def test_skip_estimate_is_the_gaussian_prior_posterior_mean(pi, x64):
    """float64 Monte-Carlo, r = x0 − μ ~ N(0, ρ²): c_skip is the least-squares slope of r on
    y = x_t − μ, c_out the rms of its error, c_in y has unit variance, F* unit variance; for π = 1
    binned E[r | y] equals c_skip y (the posterior mean; for π = x0 − μ the skip estimate is the
    linear MMSE)."""
    s = sde.make_schedule(num_timesteps=20)
    rng = np.random.default_rng(0)
    n, rho = 400_000, 0.7
    for t in (0, 5, 12, 18):
        r = rng.normal(0, rho, n)
        eps = rng.standard_normal(n)
        mu = jnp.zeros(n)
        x_t = sde.q_sample(s, jnp.asarray(r), mu, t, jnp.asarray(eps), pi=pi)
        y = np.asarray(x_t)
        c_skip, c_out, c_in = (float(c) for c in sde.precond_scalings(s, t, rho, pi))
        slope = np.dot(r, y) / np.dot(y, y)
        stderr = c_out / np.sqrt(np.dot(y, y))  # of the least-squares slope
        assert abs(slope - c_skip) < 5 * stderr + 1e-4 * abs(c_skip), (t, slope, c_skip, stderr)
        np.testing.assert_allclose(np.sqrt(np.mean((r - c_skip * y) ** 2)), c_out, rtol=6e-3)
        np.testing.assert_allclose(np.std(c_in * y), 1.0, rtol=6e-3)
        f = np.asarray(
            sde.training_target(s, jnp.asarray(r), mu, jnp.asarray(eps), "precond", pi=pi, t=t,
                                sigma_data=rho))
        np.testing.assert_allclose(np.std(f), 1.0, rtol=6e-3)
        if pi == "one":
            edges = np.quantile(y, np.linspace(0.05, 0.95, 10))
            which = np.digitize(y, edges)
            for b in range(1, 10):
                sel = which == b
                np.testing.assert_allclose(r[sel].mean(), c_skip * y[sel].mean(),
                                           atol=6 * c_out / np.sqrt(sel.sum()))


@pytest.mark.parametrize("pi", PIS)
def test_target_round_trips_and_no_nan_at_any_t(pi):
    """predict_x0(F*) = x0 at every t (0 … T−1, and −1) where c_out > 0; targets, inputs and x̂0
    finite; network_target(x0) = the closed-form F*; gradients finite at t = 0 and T−1, also where
    ρ = 0."""
    s = sde.make_schedule()
    x0, mu = bridge_pair(2)
    eps = jax.random.normal(jax.random.PRNGKey(3), SHAPE)
    rho = jnp.full(SHAPE, 0.6).at[1, :2].set(0.0)  # mask-aware ρ: 0 on known pixels
    mu = jnp.where(rho > 0, mu, x0)  # ... where x0 = μ
    for t in list(range(0, 100, 7)) + [98, 99, -1]:
        tt = jnp.full((2,), t)
        x_t = sde.q_sample(s, x0, mu, tt, eps, pi=pi)
        f = sde.training_target(s, x0, mu, eps, "precond", pi=pi, t=tt, sigma_data=rho)
        x_in = sde.network_input(s, x_t, mu, tt, "precond", pi=pi, sigma_data=rho)
        x0_hat = sde.predict_x0(s, f, x_t, mu, tt, "precond", pi=pi, sigma_data=rho)
        assert np.isfinite(np.asarray(f)).all() and np.isfinite(np.asarray(x_in)).all(), t
        c_out = sde.precond_scalings(s, tt, rho, pi)[1]
        informative = np.asarray(c_out > 0)
        np.testing.assert_allclose(
            np.asarray(x0_hat)[informative],
            np.asarray(x0)[informative], atol=2e-4)
        np.testing.assert_allclose(
            sde.network_target(s, x0, x_t, mu, tt, "precond", pi=pi, sigma_data=rho), f,
            atol=2e-2 if t in (0, 7) else 2e-3)
        grad = jax.grad(lambda o: jnp.sum(sde.predict_x0(s, o, x_t, mu, tt, "precond", pi=pi,
                                                         sigma_data=rho) ** 2))(jnp.zeros(SHAPE))
        assert np.isfinite(np.asarray(grad)).all(), t


def test_precond_needs_rho_and_t():
    s = sde.make_schedule()
    z = jnp.zeros(SHAPE)
    with pytest.raises(ValueError, match="sigma_data"):
        sde.predict_x0(s, z, z, z, 3, "precond")
    with pytest.raises(ValueError, match="t: "):
        sde.training_target(s, z, z, z, "precond", sigma_data=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        sde.sample(lambda x, m, t: x, s, z, 2, None, parameterization="precond")


def _precond_oracle(s, x0, pi, rho):
    """F that makes x̂0 = x0 exactly: x_t is recovered from the network input c_in (x_t − μ)."""
    def f(x_in, mu, t):
        c_in = sde.precond_scalings(s, t, rho, pi)[2][:, None, None, None]
        x_t = mu + x_in / c_in
        return sde.network_target(s, x0, x_t, mu, t, "precond", pi=pi, sigma_data=rho)
    return f


@pytest.mark.parametrize("pi", ("one", "residual"))
def test_sampler_with_the_oracle_returns_x0(pi):
    """The compiled loop with precond and a denoiser that knows x0 returns x0 at NFE 1, 2 and 10."""
    s = sde.make_schedule()
    x0, mu = bridge_pair(4)
    for nfe in (1, 2, 10):
        out = sde.sample(_precond_oracle(s, x0, pi, 0.5), s, mu, nfe, None, clip=False,
                         parameterization="precond", pi=pi, sigma_data=0.5)
        np.testing.assert_allclose(out, x0, atol=2e-4)


def test_first_step_eta_lands_on_the_forward_marginal():
    """With an x0 oracle and first_step_eta = 1, the state after the (singular) first step is a
    marginal sample: (x_s − μ − Θ_s r)/(Σ_s π) is standard normal; with 0 it is exactly μ + Θ_s r.
    """
    s = sde.make_schedule()
    shape = (4, 32, 32, 3)
    x0, mu = bridge_pair(5, shape)
    den = lambda x, m, t: x0
    key = jax.random.PRNGKey(0)
    _, traj = sde.sample(den, s, mu, 10, key, clip=False, pi="one", return_trajectory=True,
                         first_step_eta=1.0)
    _, flat = sde.sample(den, s, mu, 10, None, clip=False, pi="one", return_trajectory=True)
    t_s = int(sde.timestep_pairs(100, 10)[0, 1])
    mean = mu + s.Theta[t_s] * (x0 - mu)
    np.testing.assert_allclose(flat[1], mean, atol=1e-6)
    z = np.asarray((traj[1] - mean) / s.Sigma[t_s])
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
