"""Reverse kernels and the compiled sampler of rdbm_jax.sde: oracles, RDBM property, η-family,
transforms."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import sde

SHAPE = (2, 4, 4, 3)


@pytest.fixture
def x64():
    """float64 inside one test only (does not leak into other test files)."""
    with jax.enable_x64(True):
        yield


def _key(seed: int) -> jax.Array:
    """A PRNG key whose generator compiles fast (threefry is exercised in the pmap test)."""
    return jax.random.key(seed, impl="rbg")


def _pair(seed: int, shape=SHAPE, dtype=jnp.float32, zero_frac: float = 0.3):
    """(x0, μ) in [-1, 1] with a fraction of zero-residual entries, and that mask."""
    r = np.random.default_rng(seed)
    x0 = r.uniform(-0.9, 0.9, shape)
    mu = np.clip(x0 + 0.4 * r.standard_normal(shape), -1, 1)
    zero = r.uniform(size=shape) < zero_frac
    mu = np.where(zero, x0, mu)
    return jnp.asarray(x0, dtype), jnp.asarray(mu, dtype), zero


def _oracle(schedule, x0, parameterization):
    """A denoiser that knows x0: returns x0, or the πε consistent with x_t and x0 (sde
    convention)."""
    if parameterization == "x0":
        return lambda x_t, mu, t: x0
    if parameterization == "residual":
        return lambda x_t, mu, t: x0 - mu
    return lambda x_t, mu, t: sde.pi_eps_from_x0(schedule, x_t, mu, x0, t)


def _random_denoiser(seed: int):
    """A fixed random nonlinear function of (x_t, μ, t)."""
    r = np.random.default_rng(seed)
    w = jnp.asarray(r.standard_normal((3, 3)), jnp.float32)

    def f(x_t, mu, t):
        tt = t.astype(jnp.float32)[:, None, None, None] / 100.0
        return jnp.tanh(x_t @ w + jnp.sin(3 * mu + tt) - 2 * tt)
    return f


# ----------------------------------------------------------------------------- oracle sampler

@functools.partial(jax.jit, static_argnames=("num_steps", "parameterization", "eta"))
def _run_oracle(schedule, mu, x0, rng, num_steps, parameterization, eta=0.0):
    """The compiled sampler with the oracle denoiser, returning (x̂0, trajectory)."""
    return sde.sample(_oracle(schedule, x0, parameterization), schedule, mu, num_steps, rng,
                      eta=eta, parameterization=parameterization, return_trajectory=True)


@pytest.mark.parametrize("preset", ["rdbm", "goub", "brownian", "flow"])
@pytest.mark.parametrize("parameterization", ["x0", "pi_eps", "residual"])
def test_oracle_sampler_follows_the_mean_path(preset, parameterization):
    s = sde.make_schedule(preset=preset)
    x0, mu, _ = _pair(0)
    for num_steps in ((1, 10, 100) if preset == "rdbm" else (10,)):
        out, traj = _run_oracle(s, mu, x0, None, num_steps, parameterization)
        pairs = sde.timestep_pairs(100, num_steps)
        assert traj.shape == (num_steps + 1,) + SHAPE
        np.testing.assert_array_equal(traj[0], mu)
        np.testing.assert_array_equal(traj[-1], out)
        if parameterization == "x0":
            np.testing.assert_array_equal(out, x0)  # the last step returns x̂0 itself
        else:
            np.testing.assert_allclose(out, x0, atol=2e-6)
        for k, t_next in enumerate(pairs[:-1, 1]):
            np.testing.assert_allclose(traj[k + 1], mu + s.Theta[t_next] * (x0 - mu), atol=3e-6)


@pytest.mark.parametrize("parameterization", ["x0", "pi_eps", "residual"])
def test_oracle_sampler_irsde_lands_on_x0(parameterization):
    s = sde.make_schedule(preset="irsde")
    x0, mu, _ = _pair(1)
    out, traj = _run_oracle(s, mu, x0, _key(3), 10, parameterization)
    start = np.asarray(traj[0] - mu)
    assert abs(start.std() / float(s.Sigma[-1]) - 1) < 0.35 and np.all(start != 0)  # x_T ~ N(μ, Σ²)
    np.testing.assert_allclose(out, x0, atol=2e-6)


def _both_forms(schedule, x_in, mu, x0_hat, t, t_next):
    """Eq. 19 in x0 form (reverse_step, η = 0) and in πε form, one pair per leading index
    (vmapped)."""
    def one(x, tt, tn):
        n_hat = sde.pi_eps_from_x0(schedule, x, mu, x0_hat, tt)
        return (sde.reverse_step(schedule, x, mu, x0_hat, tt, tn),
                sde.reverse_step_pi_eps(schedule, x, mu, n_hat, tt, tn), n_hat)
    return jax.vmap(one)(x_in, t, t_next)


_both_forms_jit = jax.jit(_both_forms)


def test_x0_form_and_pi_eps_form_steps_agree(x64):
    """Both forms of Eq. 19 agree for arbitrary (x_t, x̂0), not only on-path, and match the spec's
    formula."""
    r = np.random.default_rng(2)
    x_t, x0_hat, mu = (r.uniform(-1, 1, SHAPE) for _ in range(3))
    pairs = np.concatenate([sde.timestep_pairs(100, 10), sde.timestep_pairs(100, 100)[::7]])
    t, t_next = pairs[:, 0], pairs[:, 1]
    for preset in ("rdbm", "goub", "brownian", "irsde", "flow"):
        s = sde.make_schedule(preset=preset, dtype=jnp.float64)
        th = np.concatenate([np.asarray(s.Theta), [1.0]])  # th[-1] ↔ index −1
        sg = np.concatenate([np.asarray(s.Sigma), [0.0]])
        bc = lambda v: v[:, None, None, None, None]
        x_in = np.broadcast_to(x_t, (len(pairs),) + SHAPE).copy()
        if preset == "flow":  # Σ ≡ 0: only on-path states are representable in πε form
            x_in = mu + bc(th[t]) * (x0_hat - mu)
        if preset != "irsde":
            x_in[t == 99] = mu  # the singular step starts exactly at μ
        a, b, _ = _both_forms_jit(s, x_in, mu, x0_hat, t, t_next)
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        th_t, sg_t, th_s, sg_s = bc(th[t]), bc(sg[t]), bc(th[t_next]), bc(sg[t_next])
        with np.errstate(divide="ignore", invalid="ignore"):
            want = mu + sg_s / sg_t * (x_in - mu) + (th_s - th_t * sg_s / sg_t) * (x0_hat - mu)
        want = np.where(sg_t > 0, want, mu + th_s * (x0_hat - mu))  # singular: μ + Θ_s (x̂0 − μ)
        want = np.where(bc(t_next) < 0, x0_hat, want)  # the last step returns x̂0
        np.testing.assert_allclose(a, want, atol=1e-12)


def test_deterministic_step_maps_noisy_states_exactly(x64):
    """Both forms map x_t = μ + Θ_t π + Σ_t n onto μ + Θ_s π + Σ_s n (the spec's claim)."""
    s = sde.make_schedule(dtype=jnp.float64)
    x0, mu, _ = _pair(3, dtype=jnp.float64)
    eps = np.random.default_rng(0).standard_normal(SHAPE)
    t, t_next = np.array([89, 50, 9, 1]), np.array([79, 3, -1, 0])
    q = jax.vmap(lambda tt: sde.q_sample(s, x0, mu, jnp.full((SHAPE[0],), tt), eps))
    x_t, want = q(t), q(t_next)
    a, b, n_hat = _both_forms_jit(s, x_t, mu, x0, t, t_next)
    np.testing.assert_allclose(a, want, atol=1e-12)
    np.testing.assert_allclose(b, want, atol=1e-12)
    np.testing.assert_allclose(n_hat, np.broadcast_to((x0 - mu) * eps, n_hat.shape),
                               atol=1e-12)  # π ⊙ ε


def test_parameterisation_round_trips(x64):
    s = sde.make_schedule(dtype=jnp.float64)
    x0, mu, _ = _pair(4, dtype=jnp.float64)
    eps = np.random.default_rng(1).standard_normal(SHAPE)

    @jax.jit
    def quantities(t):
        x_t = sde.q_sample(s, x0, mu, t, eps)
        target = sde.training_target(s, x0, mu, eps, "pi_eps", t=t)
        return (target, sde.predict_x0(s, target, x_t, mu, t, "pi_eps"),
                sde.pi_eps_from_x0(s, x_t, mu, x0, t), sde.predict_x0(s, x0, x_t, mu, t, "x0"),
                sde.predict_x0(s, jnp.zeros_like(x0), mu, mu, t, "pi_eps"))

    np.testing.assert_array_equal(sde.training_target(s, x0, mu, eps, "x0"), x0)
    plain = sde.training_target(s, x0, mu, eps, "pi_eps")  # without t: π ⊙ ε everywhere
    np.testing.assert_array_equal(plain, (x0 - mu) * eps)
    for tt in (0, 40, 98, 99):
        target, x0_back, n_hat, x0_mode, at_mu = quantities(jnp.full((SHAPE[0],), tt))
        np.testing.assert_allclose(x0_back, x0, atol=1e-12)
        np.testing.assert_allclose(n_hat, target, atol=1e-12)
        np.testing.assert_array_equal(x0_mode, x0)
        if tt == 99:  # singular index: the πε output is read as x̂0 − μ (documented convention)
            np.testing.assert_array_equal(target, x0 - mu)
            np.testing.assert_array_equal(at_mu, mu)
        else:
            np.testing.assert_array_equal(target, plain)


# ----------------------------------------------------------------------------- the RDBM property

@pytest.mark.parametrize("parameterization", ["x0", "pi_eps", "residual"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_zero_residual_pixels_stay_at_mu(parameterization, eta):
    """Where x̂0 = μ is predicted (π̂ = 0), no noise enters: those entries stay at μ bit-exactly."""
    s = sde.make_schedule()
    x0, mu, zero = _pair(5, shape=(2, 8, 8, 3))
    rand = _random_denoiser(0)
    keep = mu if parameterization == "x0" else 0.0  # the zero-residual output of each mode

    def denoise(x_t, m, t):
        return jnp.where(zero, keep, rand(x_t, m, t))

    out, traj = sde.sample(denoise, s, mu, 10, _key(7), eta=eta,
                           parameterization=parameterization, return_trajectory=True)
    traj, mu_np = np.asarray(traj), np.asarray(mu)
    for state in traj:
        np.testing.assert_array_equal(state[zero], mu_np[zero])
        assert np.all(np.isfinite(state))
    assert np.mean(traj[5][~zero] != mu_np[~zero]) > 0.95  # the other entries did move


# ----------------------------------------------------------------------------- the η-family

def _mc_close(samples, mean, var, sigmas: float = 5.0):
    """Empirical mean/var of samples [N, ...] agree with (mean, var) within Monte Carlo error."""
    n = samples.shape[0]
    emp_m, emp_v = samples.mean(0), samples.var(0)
    assert np.all(np.abs(emp_m - mean) <= sigmas * np.sqrt(var / n) + 1e-6), (
        np.abs(emp_m - mean).max())
    assert np.all(np.abs(emp_v - var) <= sigmas * np.sqrt(2 / n) * var + 1e-9), (
        np.abs(emp_v / var - 1).max())


@pytest.mark.parametrize("preset", ["rdbm", "goub", "irsde"])
def test_eta_one_step_samples_the_posterior(preset):
    s = sde.make_schedule(preset=preset)
    n = 100_000
    x0 = jnp.asarray([0.6, -0.4, 0.1, 0.9])
    mu = jnp.asarray([-0.2, -0.4, 0.5, 0.3])
    x_t = mu + jnp.asarray([0.1, 0.0, -0.05, 0.2])
    step = jax.jit(
        lambda z, x_in, t, t_next: sde.reverse_step(s, x_in, mu, x0, t, t_next, eta=1.0, noise=z))
    z = jnp.asarray(np.random.default_rng(0).standard_normal((n, 4)), jnp.float32)
    for t, t_next in [(59, 49), (89, 79), (9, 0), (99, 89)]:
        x_in = x_t if (t < 99 or preset == "irsde") else mu
        samples = np.asarray(step(z, x_in, t, t_next), np.float64)
        mean, var = sde.posterior(s, x_in, x0, mu, t, t_next)
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        assert np.all(var[[0, 2, 3]] > 0)
        if preset == "rdbm":  # zero residual (entry 1): a deterministic, exact μ
            assert var[1] == 0 and np.all(samples[:, 1] == float(mu[1]))
            keep = [0, 2, 3]
        else:
            keep = [0, 1, 2, 3]
        _mc_close(samples[:, keep], mean[keep], var[keep])
    # the last step returns x̂0 exactly, whatever the noise
    np.testing.assert_array_equal(step(z, x_t, 9, -1), jnp.broadcast_to(x0, (n, 4)))


def test_eta_family_preserves_the_marginal():
    """With the true x0, x_t ~ q(x_t | x0) is mapped onto q(x_s | x0) for every η (DDIM
    property)."""
    s = sde.make_schedule()
    n = 100_000
    x0, mu = jnp.asarray([0.7, 0.2]), jnp.asarray([-0.1, -0.5])
    r = np.random.default_rng(1)
    eps, z = (jnp.asarray(r.standard_normal((n, 2)), jnp.float32) for _ in range(2))
    step = jax.jit(lambda eta, t, t_next: sde.reverse_step(s, sde.q_sample(s, x0, mu, t, eps), mu,
                                                           x0, t, t_next, eta=eta, noise=z))
    for eta in (0.0, 0.5, 1.0):
        for t, t_next in [(79, 59), (40, 5)]:
            x_s = np.asarray(step(eta, t, t_next), np.float64)
            pi = np.asarray(x0 - mu, np.float64)
            mean = np.asarray(mu, np.float64) + float(s.Theta[t_next]) * pi
            _mc_close(x_s, mean, float(s.Sigma[t_next]) ** 2 * pi ** 2)


def test_stochastic_sampler_with_oracle_has_the_forward_marginals():
    """η = 1 with the true x0 reverses the forward chain: every visited state ~ q(x_s | x0)."""
    s = sde.make_schedule()
    x0, mu = jnp.full((4, 64, 64, 3), 0.5), jnp.full((4, 64, 64, 3), -0.2)
    out, traj = jax.jit(lambda m, k: sde.sample(lambda x, mm, t: x0, s, m, 10, k, eta=1.0,
                                                return_trajectory=True))(mu, _key(2))
    np.testing.assert_array_equal(out, x0)
    for k, t_next in enumerate(sde.timestep_pairs(100, 10)[:-1, 1]):
        flat = np.asarray(traj[k + 1], np.float64).reshape(-1, 1)
        _mc_close(flat, -0.2 + float(s.Theta[t_next]) * 0.7, float(s.Sigma[t_next]) ** 2 * 0.49)


# ----------------------------------------------------------------------------- transformations

def _linear_denoiser(w):
    return lambda x_t, mu, t: (w * x_t + (1 - w) * mu
                               + 0.01 * t.astype(x_t.dtype)[:, None, None, None])


def test_jit_vmap_and_grad():
    s = sde.make_schedule()
    x0, mu, _ = _pair(6)
    t = jnp.asarray([3, 97])
    eps = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
    plain = sde.q_sample(s, x0, mu, t, eps)
    np.testing.assert_allclose(jax.jit(sde.q_sample)(s, x0, mu, t, eps), plain, atol=1e-7)
    stacked = lambda a: jnp.stack([a, a[::-1]])
    vm = jax.vmap(sde.q_sample, in_axes=(None, 0, 0, 0, 0))(s, *map(stacked, (x0, mu, t, eps)))
    np.testing.assert_allclose(vm[0], plain, atol=1e-7)
    np.testing.assert_allclose(vm[1], sde.q_sample(s, x0[::-1], mu[::-1], t[::-1], eps[::-1]),
                               atol=1e-7)
    # ∂/∂x0 Σ q_sample = Θ_t + Σ_t ε (π = x0 − μ)
    g = jax.grad(lambda a: sde.q_sample(s, a, mu, t, eps).sum())(x0)
    bc = lambda v: v[:, None, None, None]
    np.testing.assert_allclose(g, bc(s.Theta[t]) + bc(s.Sigma[t]) * eps, rtol=1e-6)

    key = _key(4)
    for kw in [dict(), dict(eta=1.0, parameterization="pi_eps")]:
        f = lambda m, k: sde.sample(_random_denoiser(1), s, m, 10, k, **kw)
        plain = f(mu, key)
        jitted = jax.jit(f)
        np.testing.assert_allclose(jitted(mu, key), plain, atol=1e-6)
        vm = jax.vmap(f, in_axes=(0, None))(stacked(mu), key)  # (rbg keys are not vmap-invariant)
        np.testing.assert_allclose(vm[0], plain, atol=1e-6)
        np.testing.assert_allclose(vm[1], jitted(mu[::-1], key), atol=1e-6)
        if not kw:  # the schedule itself may be a traced argument (its metadata stays static)
            traced = jax.jit(
                lambda sch, m, k: sde.sample(_random_denoiser(1), sch, m, 10, k))(s, mu, key)
            np.testing.assert_allclose(traced, plain, atol=1e-6)


@pytest.mark.parametrize("parameterization", ["x0", "pi_eps"])
def test_grad_through_the_sampler_matches_finite_differences(x64, parameterization):
    s = sde.make_schedule(dtype=jnp.float64)
    x0, mu, _ = _pair(7, dtype=jnp.float64)
    key = _key(0)

    def loss(w, m):
        out = sde.sample(_linear_denoiser(w), s, m, 10, key,
                         eta=0.5 if parameterization == "x0" else 0.0, clip=False,
                         parameterization=parameterization)
        return jnp.sum((out - x0) ** 2)

    w = 0.3
    gw, gm = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, mu)
    assert np.isfinite(float(gw)) and np.all(np.isfinite(gm))
    loss_j = jax.jit(loss)
    h = 1e-6
    np.testing.assert_allclose(float(gw), (loss_j(w + h, mu) - loss_j(w - h, mu)) / (2 * h),
                               rtol=1e-5)
    d = np.random.default_rng(1).standard_normal(SHAPE)
    fd = (loss_j(w, mu + h * d) - loss_j(w, mu - h * d)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(gm * d)), float(fd), rtol=1e-5)


_PMAP_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from rdbm_jax import sde
    assert jax.local_device_count() == 8, jax.devices()
    s = sde.make_schedule()
    r = np.random.default_rng(0)
    x0 = jnp.asarray(r.uniform(-1, 1, (8, 2, 4, 4, 3)), jnp.float32)
    mu = jnp.clip(x0 + 0.3 * r.standard_normal(x0.shape), -1, 1)
    t = jnp.asarray(r.integers(0, 100, (8, 2)))
    eps = jnp.asarray(r.standard_normal(x0.shape), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    q = jax.pmap(sde.q_sample, in_axes=(None, 0, 0, 0, 0))(s, x0, mu, t, eps)
    den = lambda x, m, tt: jnp.tanh(2 * x - m + 0.01 * tt[:, None, None, None])
    run = lambda m, key: sde.sample(den, s, m, 10, key, eta=1.0)
    smp = jax.pmap(run)(mu, keys)
    plain_q, plain_run = jax.jit(sde.q_sample), jax.jit(run)
    for i in range(8):
        np.testing.assert_allclose(q[i], plain_q(s, x0[i], mu[i], t[i], eps[i]), atol=1e-6)
        np.testing.assert_allclose(smp[i], plain_run(mu[i], keys[i]), atol=1e-5)
    print("PMAP_OK")
""")


@pytest.mark.integration  # a second process with 8 host devices
def test_pmap_on_eight_host_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _PMAP_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "PMAP_OK" in res.stdout, res.stderr[-3000:]


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs, name", [
    (dict(num_steps=101), "num_steps"),
    (dict(num_steps=0), "num_steps"),
    (dict(eta=1.5), "eta"),
    (dict(eta=0.5, rng=None), "rng"),
    (dict(pi="half"), "pi"),
    (dict(parameterization="eps"), "parameterization"),
    (dict(preset="irsde", pi="residual"), "pi"),
    (dict(preset="irsde", rng=None), "rng"),
])
def test_sample_rejects_bad_arguments(kwargs, name):
    s = sde.make_schedule(preset=kwargs.pop("preset", "rdbm"))
    args = dict(num_steps=10, rng=_key(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        sde.sample(lambda x, m, t: m, s, jnp.zeros(SHAPE), **args)


def test_reverse_step_rejects_bad_arguments():
    s = sde.make_schedule()
    x = jnp.zeros(SHAPE)
    with pytest.raises(ValueError, match=r"^noise\b"):
        sde.reverse_step(s, x, x, x, 50, 40, eta=0.5)
    with pytest.raises(ValueError, match=r"^eta\b"):
        sde.reverse_step(s, x, x, x, 50, 40, eta=-0.1, noise=x)
    with pytest.raises(ValueError, match=r"^pi\b"):
        sde.reverse_step(s, x, x, x, 50, 40, pi="resid")
