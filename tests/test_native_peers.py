"""bridge.discretization="native": goub/irsde reproduce their repositories' own schedules.

The reference below is a transcription (test-only) of `codes/utils/sde_utils.py` of
Hammour-steak/GOUB (class GOUB: m(t), f_sigma(t)) and Algolzw/image-restoration-sde (class IRSDE:
mu_bar's e^{−θ̄_t dt}, sigma_bar(t)), run in torch at their float32 and in float64.
Project index i is their timestep i + 1; index −1 (x0 itself) is their timestep 0.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rdbm_jax import sde  # noqa: E402
from rdbm_jax.schedules import check_discretization, native_variance  # noqa: E402


def _peer_thetas(T: int, schedule: str, dtype) -> "torch.Tensor":
    """cosine_/linear_/constant_theta_schedule of both repositories."""
    if schedule == "cosine":
        timesteps = T + 2
        x = torch.linspace(0, timesteps, timesteps + 1, dtype=dtype)
        ac = torch.cos(((x / timesteps) + 0.008) / (1 + 0.008) * math.pi * 0.5) ** 2
        ac = ac / ac[0]
        return 1 - ac[1:-1]
    if schedule == "linear":
        scale = 1000 / (T + 1)
        return torch.linspace(scale * 0.0001, scale * 0.02, T + 1, dtype=dtype)
    return torch.ones(T + 1, dtype=dtype)


def peer_tables(preset: str, lam: float, T: int = 100, schedule: str = "cosine",
                dtype=torch.float32):
    """(coefficient of x0 − μ, marginal std) on their timesteps 0..T, as their code computes
    them."""
    if preset == "goub":
        lambda_square = lam / 255 if lam >= 1 else lam
    else:
        lambda_square = lam / 255 if lam > 1 else lam  # IRSDE's max_sigma
    thetas = _peer_thetas(T, schedule, dtype)
    thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]
    dt = -1 / thetas_cumsum[-1] * math.log(0.01)
    sigma_bars = torch.sqrt(lambda_square ** 2 * (1 - torch.exp(-2 * thetas_cumsum * dt)))
    if preset == "irsde":
        return torch.exp(-thetas_cumsum * dt), sigma_bars
    sigma_t_T = torch.sqrt(lambda_square**2 *
                           (1 - torch.exp(-2 * (thetas_cumsum[-1] - thetas_cumsum) * dt)))
    f_sigmas = sigma_bars * sigma_t_T / sigma_bars[-1]
    m = torch.exp(-thetas_cumsum * dt) * sigma_t_T ** 2 / sigma_bars[-1] ** 2
    n = ((1 - torch.exp(-thetas_cumsum * dt)) * sigma_t_T**2 +
         torch.exp(-2 *
                   (thetas_cumsum[-1] - thetas_cumsum) * dt) * sigma_bars**2) / sigma_bars[-1]**2
    np.testing.assert_allclose((m + n).numpy(), 1.0, atol=1e-5)  # f_mean = μ + m (x0 − μ)
    return m, f_sigmas


def _project(preset: str, lam: float, T: int = 100, schedule: str = "cosine"):
    with jax.enable_x64(True):
        s = sde.make_schedule(T, schedule, lam, preset, dtype=jnp.float64, discretization="native")
        return np.asarray(s.Theta), np.asarray(s.Sigma), s


# GOUB's configs use lambda_square = 30 (→ (30/255)²); IR-SDE's max_sigma = 10 / 50 and < 1 values.
CASES = [("goub", 30.0), ("goub", 1.0), ("goub", 0.5), ("irsde", 10.0), ("irsde", 50.0),
         ("irsde", 1.0)]


@pytest.mark.parametrize("preset,lam", CASES)
@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_native_tables_match_peer_code(preset, lam, schedule):
    theta, sigma, s = _project(preset, lam, schedule=schedule)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        ref_theta, ref_sigma = (t.double().numpy()
                                for t in peer_tables(preset, lam, 100, schedule, dtype))
        # index i ↔ timestep i + 1
        np.testing.assert_allclose(theta, ref_theta[1:], atol=tol, rtol=0)
        np.testing.assert_allclose(sigma, ref_sigma[1:], atol=tol, rtol=0)
        assert ref_theta[0] == pytest.approx(1.0, abs=tol) and ref_sigma[0] == pytest.approx(
            0.0, abs=tol)
    assert math.isclose(float(np.sum(np.asarray(s.theta))), -math.log(0.01), rel_tol=1e-12)
    assert s.discretization == "native" and s.lam == lam


# Printed by the transcription of the peers' code above (float32, T = 100, cosine) at their
# timesteps 1, 25, 50, 75, 100.
GOLDEN_STEPS = [1, 25, 50, 75, 100]
GOLDEN = {
    ("goub", 30.0): ([0.99984670, 0.87097973, 0.41209489, 0.08457829, 0.0],
                     [0.00206002, 0.05779556, 0.10715616, 0.11641968, 0.0]),
    ("irsde", 50.0): ([0.99984670, 0.87100732, 0.41229624, 0.08573619, 0.01],
                      [0.00343337, 0.09632745, 0.17863722, 0.19535644, 0.19606863]),
}


@pytest.mark.parametrize("preset,lam", sorted(GOLDEN))
def test_native_golden_values(preset, lam):
    theta, sigma, _ = _project(preset, lam)
    idx = [t - 1 for t in GOLDEN_STEPS]
    np.testing.assert_allclose(theta[idx], GOLDEN[(preset, lam)][0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(sigma[idx], GOLDEN[(preset, lam)][1], atol=1e-6, rtol=0)


def test_native_differs_from_rdbm_discretisation():
    native, _, _ = _project("goub", 10 / 255)
    with jax.enable_x64(True):
        rdbm = np.asarray(
            sde.make_schedule(100, "cosine", 10 / 255, "goub", dtype=jnp.float64).Theta)
    assert np.max(np.abs(native - rdbm)) > 0.05


def test_native_variance_reading():
    assert native_variance("goub", 30) == pytest.approx((30 / 255) ** 2)
    assert native_variance("goub", 1) == pytest.approx((1 / 255) ** 2)     # GOUB: N >= 1 → N/255
    assert native_variance("irsde", 1) == pytest.approx(1.0)               # IR-SDE: only N > 1
    assert native_variance("irsde", 0.1) == pytest.approx(0.01)


@pytest.mark.parametrize("args,match", [
    (("native", "rdbm", "cosine"), "presets goub, irsde only"),
    (("native", "goub", "sigmoid"), "theta_schedule"),
    (("euler", "goub", "cosine"), "not one of"),
])
def test_native_refuses_what_the_peers_do_not_have(args, match):
    with pytest.raises(ValueError, match=match):
        check_discretization(*args)
    with pytest.raises(ValueError, match=match):
        sde.make_schedule(100, args[2], 0.1, args[1], discretization=args[0])


def test_native_sampler_reaches_x0_with_an_oracle():
    """The project's posterior sampler on native tables maps μ back to x0 given the true x̂0."""
    _, _, s = _project("goub", 30.0)
    s32 = sde.make_schedule(100, "cosine", 30.0, "goub", discretization="native")
    x0 = jnp.linspace(-0.9, 0.9, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    mu = jnp.clip(x0 + 0.3, -1, 1)
    out = sde.sample(lambda x_t, m, t: x0, s32, mu, num_steps=10, rng=None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-6)
