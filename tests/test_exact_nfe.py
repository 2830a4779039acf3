"""NFE 1 with the exact (posterior-mean) denoiser: E[x0 | μ], and no η = 0 schedule beats it in
MSE."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import exact_nfe
from rdbm_jax import sde


@pytest.mark.parametrize("pi", ("one", "residual"))
def test_nfe1_returns_the_posterior_mean_given_mu_and_no_eta0_schedule_beats_it(pi):
    s = sde.make_schedule()
    x0, mu = exact_nfe.toy(shape=(1, 16, 16, 1), seed=1)
    den = exact_nfe.posterior_mean_denoiser(s, pi=pi)
    a, b = exact_nfe.MODES
    prior_mean = mu + exact_nfe.PROB * a + (1 - exact_nfe.PROB) * b
    one = np.asarray(sde.sample(den, s, mu, 1, None, clip=False, pi=pi))
    np.testing.assert_allclose(one, prior_mean, atol=1e-6)

    def expected_mse(out):  # over the prior of every pixel (exact, not the one drawn x0)
        d = np.asarray(out, np.float64) - mu
        return float(np.mean(exact_nfe.PROB * (d - a) ** 2 + (1 - exact_nfe.PROB) * (d - b) ** 2))

    best = expected_mse(one)
    for nfe in (2, 10, 20):
        out = sde.sample(den, s, mu, nfe, None, clip=False, pi=pi)
        assert expected_mse(out) >= best - 1e-9, nfe
