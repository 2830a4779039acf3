"""Bridge schedules, marginals and posteriors (rdbm_jax.schedules / rdbm_jax.sde) against the
spec."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import sde
from rdbm_jax.schedules import marginal_tables, theta_profile

GOLDEN_T = [99, 89, 79, 69, 59, 49, 39, 29, 19, 9, 0]
GOLDEN_THETA = [0, .02794, .09949, .20867, .34550, .49723, .64953, .78790, .89904, .97214, .99937]
GOLDEN_SIGMA = {
    10 / 255: [0, .19793, .19705, .19367, .18583, .17181, .15057, .12195, .08671, .04642, .00703],
    1e-4: [0, .01000, .00995, .00978, .00938, .00868, .00760, .00616, .00438, .00234, .00036],
}
BRIDGES = ("rdbm", "goub", "brownian", "flow")


def _images(seed: int, shape=(3, 4, 5, 3)):
    """(x0, μ) in [-1, 1] with ~30% zero-residual entries."""
    r = np.random.default_rng(seed)
    x0 = r.uniform(-1, 1, shape)
    mu = np.clip(x0 + 0.4 * r.standard_normal(shape), -1, 1)
    mu = np.where(r.uniform(size=shape) < 0.3, x0, mu)
    return x0, mu


# ----------------------------------------------------------------------------- tables

@pytest.mark.parametrize("lam", sorted(GOLDEN_SIGMA))
def test_golden_tables(x64, lam):
    s = sde.make_schedule(100, "cosine", lam, "rdbm", dtype=jnp.float64)
    assert s.Theta.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(s.Theta)[GOLDEN_T], GOLDEN_THETA, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(s.Sigma)[GOLDEN_T], GOLDEN_SIGMA[lam], atol=1e-5, rtol=0)
    assert abs(float(jnp.sum(s.theta)) - 7.878897) < 1e-5
    assert float(s.Theta[-1]) == 0.0 and float(s.Sigma[-1]) == 0.0  # x_{T−1} = μ exactly
    np.testing.assert_allclose(np.asarray(s.theta_bar), np.cumsum(np.asarray(s.theta)), rtol=1e-12)


def test_cosine_profile_matches_spec_formula():
    ab = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for T in (2, 10, 100, 1000):
        ref = [min(1 - ab((i + 1) / T) / ab(i / T), 0.999) for i in range(T)]
        np.testing.assert_allclose(theta_profile("cosine", T), ref, rtol=1e-12)


def test_other_profiles():
    lin = theta_profile("linear", 100)
    np.testing.assert_allclose(lin[[0, -1]], [1e-3, 0.2], rtol=1e-12)
    np.testing.assert_allclose(np.diff(lin), np.full(99, (0.2 - 1e-3) / 99), rtol=1e-9)
    np.testing.assert_allclose(theta_profile("constant", 50), np.full(50, 0.02))
    sig = lambda z: 1 / (1 + math.exp(-z))
    ab = lambda u: (sig(3) - sig(6 * u - 3)) / (sig(3) - sig(-3))
    ref = [min(1 - ab((i + 1) / 100) / ab(i / 100), 0.999) for i in range(100)]
    np.testing.assert_allclose(theta_profile("sigmoid", 100), ref, rtol=1e-10)
    for name in sde.THETA_SCHEDULES:
        th = theta_profile(name, 100)
        assert th.shape == (100,) and np.all(th > 0) and np.all(np.isfinite(th))


@pytest.mark.parametrize("schedule", sde.THETA_SCHEDULES)
@pytest.mark.parametrize("preset", sde.PRESETS)
def test_tables_are_well_formed(schedule, preset):
    for T in (2, 100, 1000):
        th = theta_profile(schedule, T)
        big, sig = marginal_tables(th, 10 / 255, preset)
        assert np.all(np.isfinite(big)) and np.all(np.isfinite(sig)) and np.all(sig >= 0)
        assert np.all(np.diff(big) <= 0) and 0 <= big[-1] and big[0] <= 1  # Θ decreases from ≈1
        if preset != "irsde":
            assert big[-1] == 0 and sig[-1] == 0  # every bridge ends at μ exactly
        if preset == "flow":
            assert np.all(sig == 0)


def test_schedule_is_a_pytree_with_static_metadata():
    s = sde.make_schedule(preset="goub", theta_schedule="linear", lam=1e-4)
    leaves, treedef = jax.tree_util.tree_flatten(s)
    assert len(leaves) == 4 and all(leaf.shape == (100,) for leaf in leaves)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    meta = (s.num_timesteps, s.preset, s.default_pi, s.theta_schedule, s.lam)
    assert meta == (100, "goub", "one", "linear", 1e-4)
    s2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert s2.preset == "goub" and s2.num_timesteps == 100
    assert {p: sde.make_schedule(preset=p).default_pi for p in sde.PRESETS} == {
        "rdbm": "residual", "goub": "one", "brownian": "one", "irsde": "one", "flow": "zero"}
    # jit sees the schedule as an argument with static metadata
    f = jax.jit(lambda sch: (sch.Theta[sch.num_timesteps - 1]
                             + (1.0 if sch.preset == "goub" else 0.0)))
    assert float(f(s)) == 1.0


def test_timestep_pairs_golden():
    assert sde.timestep_pairs(100, 10).tolist() == [[99, 89], [89, 79], [79, 69], [69, 59],
                                                    [59, 49], [49, 39], [39, 29], [29, 19], [19, 9],
                                                    [9, -1]]
    assert sde.timestep_pairs(100, 1).tolist() == [[99, -1]]
    full = sde.timestep_pairs(100, 100)
    assert (full[:, 0].tolist() == list(range(99, -1, -1))
            and full[:, 1].tolist() == list(range(98, -2, -1)))
    assert sde.timestep_pairs(100, 3).tolist() == [[99, 65], [65, 32], [32, -1]]  # int() truncation
    for T, S in [(100, 7), (1000, 13), (2, 2), (37, 5)]:
        p = sde.timestep_pairs(T, S)
        assert p.shape == (S, 2) and p[0, 0] == T - 1 and p[-1, 1] == -1
        assert np.all(p[:, 0] > p[:, 1]) and np.all(p[1:, 0] == p[:-1, 1])


# ----------------------------------------------------------------------------- closed forms

def test_presets_match_their_closed_forms(x64):
    T, lam = 100, 10 / 255
    th = theta_profile("cosine", T)
    bar = np.cumsum(th)
    b = bar[-1]
    x0, mu = _images(0)
    eps = np.random.default_rng(1).standard_normal(x0.shape)
    t = np.array([0, 37, 98])
    bc = lambda v: v[:, None, None, None]

    def check(preset, big, var, pi, **kw):
        s = sde.make_schedule(T, kw.get("schedule", "cosine"), kw.get("lam", lam), preset,
                              dtype=jnp.float64)
        np.testing.assert_allclose(s.Theta, big, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.asarray(s.Sigma) ** 2, var, rtol=1e-10, atol=1e-15)
        got = sde.q_sample(s, x0, mu, t, eps)  # the preset's default π
        want = mu + bc(big[t]) * (x0 - mu) + bc(np.sqrt(var[t])) * pi * eps
        np.testing.assert_allclose(got, want, atol=1e-12)

    # RDBM / GOUB: the spec's sinh form, π = x0 − μ resp. 1
    big = np.sinh(b - bar) / np.sinh(b)
    var = 2 * lam * np.sinh(bar) * np.sinh(b - bar) / np.sinh(b)
    check("rdbm", big, var, x0 - mu)
    check("goub", big, var, 1.0)
    # flow: same mean, no noise
    check("flow", big, 0 * var, 0.0)
    # IR-SDE: μ + (x0 − μ) e^{−θ̄}, variance λ (1 − e^{−2θ̄})
    check("irsde", np.exp(-bar), lam * (1 - np.exp(-2 * bar)), 1.0)
    # Brownian with 2λθ = 1: the standard bridge, mean 1 − τ/T, variance τ(T − τ)/T, τ = t + 1
    tau = np.arange(1, T + 1)
    check("brownian", 1 - tau / T, tau * (T - tau) / T, 1.0, schedule="constant", lam=T / 2)
    # Brownian with the cosine profile: σ_t² = 2λ θ̄_t
    s2 = 2 * lam * bar
    check("brownian", 1 - s2 / s2[-1], s2 * (1 - s2 / s2[-1]), 1.0)


def test_pi_modes(x64):
    x0, mu = _images(2)
    s = sde.make_schedule(dtype=jnp.float64)
    np.testing.assert_array_equal(sde.pi_values("residual", x0, mu), x0 - mu)
    np.testing.assert_array_equal(sde.pi_values("abs", x0, mu), np.abs(x0 - mu))
    np.testing.assert_array_equal(sde.pi_values("one", x0, mu), np.ones_like(x0))
    np.testing.assert_array_equal(sde.pi_values("zero", x0, mu), np.zeros_like(x0))
    eps = np.ones_like(x0)
    t = np.full(x0.shape[0], 50)
    base = mu + float(s.Theta[50]) * (x0 - mu)
    for mode, pi in [("residual", x0 - mu), ("abs", np.abs(x0 - mu)), ("one", 1.0), ("zero", 0.0)]:
        np.testing.assert_allclose(sde.q_sample(s, x0, mu, t, eps, pi=mode),
                                   base + float(s.Sigma[50]) * pi, atol=1e-14)
    # "" and None select the preset default (residual for rdbm)
    np.testing.assert_array_equal(sde.q_sample(s, x0, mu, t, eps, pi=""),
                                  sde.q_sample(s, x0, mu, t, eps))


def test_zero_residual_marginal_is_exactly_mu():
    s = sde.make_schedule()
    x0, mu = _images(3)
    x0, mu = jnp.asarray(x0, jnp.float32), jnp.asarray(mu, jnp.float32)
    zero = np.asarray(x0 == mu)
    assert zero.mean() > 0.2
    huge = jnp.asarray(1e6 * np.random.default_rng(0).standard_normal(x0.shape), jnp.float32)
    for tt in (0, 17, 50, 98, 99):
        t = jnp.full((x0.shape[0],), tt)
        xt = np.asarray(sde.q_sample(s, x0, mu, t, huge))
        np.testing.assert_array_equal(xt[zero], np.asarray(mu)[zero])
        assert np.all(xt[~zero] != np.asarray(mu)[~zero]) or tt == 99
        if 0 < tt < 99:
            _, var = sde.posterior(s, jnp.asarray(xt), x0, mu, t, jnp.full_like(t, tt - 5))
            assert np.all(np.asarray(var)[zero] == 0) and np.all(np.asarray(var)[~zero] > 0)


# ----------------------------------------------------------------------------- SDE simulation

def _unit_grid(theta: np.ndarray, t_end: int, du: float, k_min: int) -> np.ndarray:
    """Continuous times 0..t_end; unit interval [i, i+1) cut into max(k_min, ⌈θ_i/du⌉) Euler
    steps."""
    parts = [
        i + np.arange(k) / k for i in range(t_end) for k in [max(k_min, math.ceil(theta[i] / du))]
    ]
    return np.concatenate(parts + [np.array([float(t_end)])])


def test_euler_maruyama_reproduces_the_closed_form():
    """Eq. 10 (h-transformed bridge) and Eq. 9 (IR-SDE) simulated from x0 to index t ↔
    time τ = t + 1.

    θ is piecewise constant (θ_i on [i, i+1)), θ̄_{0:τ} = Σ_{j<i} θ_j + θ_i (τ − i). Rows: RDBM on
    the cosine profile (π = x0 − μ); IR-SDE on the cosine profile; GOUB on the constant profile,
    where coth(θ̄_{τ:T}) ranges over 1.4 … 3.4 so the h-transform drift matters (on the cosine
    profile coth ≈ 1 until the last few indices). Weak Euler bias ≤ 0.25% here; Monte Carlo s.e. of
    a variance with 2^18 paths is 0.28%.
    """
    T, lam, n = 100, 10 / 255, 2 ** 18
    x0, mu = 0.5, -0.3
    checks = [9, 29, 49, 69]  # well before T−1, where coth blows up
    cos, const = theta_profile("cosine", T), theta_profile("constant", T)
    rows = [("rdbm", cos, True, x0 - mu), ("irsde", cos, False, 1.0), ("goub", const, True, 1.0)]
    taus = _unit_grid(cos, checks[-1] + 1, du=0.004, k_min=8)
    rng = np.random.default_rng(0)
    x = np.full((len(rows), n), x0)
    got = {}
    for k in range(len(taus) - 1):
        tau, dt = taus[k], taus[k + 1] - taus[k]
        i = int(tau)
        dw = math.sqrt(dt) * rng.standard_normal(n)  # one Brownian path drives every row
        for r, (_, th, bridge, pi) in enumerate(rows):
            u = th[:i].sum() + th[i] * (tau - i)  # θ̄_{0:τ}
            drift = th[i] / math.tanh(th.sum() - u) if bridge else th[i]
            x[r] += drift * (mu - x[r]) * dt + math.sqrt(2 * pi ** 2 * lam * th[i]) * dw
        if taus[k + 1] == round(taus[k + 1]) and int(taus[k + 1]) - 1 in checks:
            got[int(taus[k + 1]) - 1] = (x.mean(axis=1), x.var(axis=1))
    for r, (preset, th, _, pi) in enumerate(rows):
        s = sde.make_schedule(T, "cosine" if th is cos else "constant", lam, preset)
        for t in checks:
            resid, var = float(s.Theta[t]) * (x0 - mu), float(s.Sigma[t]) ** 2 * pi ** 2
            em_mean, em_var = got[t][0][r], got[t][1][r]
            assert abs(em_mean - mu - resid) < 0.01 * abs(resid), (preset, t, em_mean - mu, resid)
            assert abs(em_var / var - 1) < 0.01, (preset, t, em_var, var)


# ----------------------------------------------------------------------------- Chapman–Kolmogorov

@pytest.mark.parametrize("preset", sde.PRESETS)
def test_chapman_kolmogorov(x64, preset):
    s = sde.make_schedule(preset=preset, dtype=jnp.float64)
    T = s.num_timesteps
    tt, ss = np.meshgrid(np.arange(T), np.arange(-1, T), indexing="ij")
    keep = ss < tt
    tt, ss = tt[keep], ss[keep]
    a, v = sde.transition(s, tt, ss)
    th = np.concatenate([[1.0], np.asarray(s.Theta)])  # index −1 → position 0
    sg = np.concatenate([[0.0], np.asarray(s.Sigma)])
    raw_v = sg[tt + 1] ** 2 - (th[tt + 1] / th[ss + 1]) ** 2 * sg[ss + 1] ** 2
    assert raw_v.min() > -1e-15  # v ≥ 0 from the tables themselves, not only after clipping
    np.testing.assert_allclose(a, th[tt + 1] / th[ss + 1], rtol=1e-14)
    # v and raw_v round sg_t², a and a² sg_s² in another order (and XLA may fuse a multiply-add):
    # each of those ~4 roundings is off by <= u of the larger term, so 8u (Σ_t² + a² Σ_s²) bounds
    # the difference on any CPU (a fixed 1e-16 was one ulp of Σ² ≈ 1).
    terms = sg[tt + 1] ** 2 + (th[tt + 1] / th[ss + 1]) ** 2 * sg[ss + 1] ** 2
    assert np.all(np.abs(np.asarray(v) - np.maximum(raw_v, 0)) <= 8 * 2.0 ** -53 * terms)
    # Markov composition r < s < t: a_{t,r} = a_{t,s} a_{s,r}, v_{t,r} = a_{t,s}² v_{s,r} + v_{t,s}
    r = np.random.default_rng(0)
    trip = np.sort(r.choice(np.arange(-1, T), size=(200, 3)), axis=1)
    trip = trip[(trip[:, 0] < trip[:, 1]) & (trip[:, 1] < trip[:, 2])]
    lo, mid, hi = trip.T
    a_tr, v_tr = sde.transition(s, hi, lo)
    a_ts, v_ts = sde.transition(s, hi, mid)
    a_sr, v_sr = sde.transition(s, mid, lo)
    np.testing.assert_allclose(a_tr, a_ts * a_sr, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v_tr, a_ts ** 2 * v_sr + v_ts, rtol=1e-9, atol=1e-14)


def _base_covariance(preset: str, theta: np.ndarray, lam: float, times: np.ndarray):
    """Mean factor and covariance of the un-bridged base process at continuous times
    (π = 1, y0 = 1)."""
    bar = np.concatenate([[0.0], np.cumsum(theta)])[times]
    lo, hi = np.minimum.outer(bar, bar), np.maximum.outer(bar, bar)
    if preset == "brownian":  # Brownian motion with g² = 2λθ: Cov = σ²(min)
        return np.ones_like(bar), 2 * lam * lo
    # OU (Eq. 9): Cov(y_a, y_b) = e^{−θ̄_{a:b}} λ (1 − e^{−2θ̄_a}) for a ≤ b
    return np.exp(-bar), np.exp(-(hi - lo)) * lam * (1 - np.exp(-2 * lo))


def _condition(mean, cov, idx, values):
    """Gaussian conditioning of (mean, cov) on the coordinates idx taking values."""
    rest = [k for k in range(len(mean)) if k not in idx]
    k_ro = cov[np.ix_(rest, idx)]
    gain = k_ro @ np.linalg.inv(cov[np.ix_(idx, idx)])
    return mean[rest] + gain @ (values - mean[idx]), cov[np.ix_(rest, rest)] - gain @ k_ro.T


@pytest.mark.parametrize("preset", ["rdbm", "goub", "brownian", "irsde"])
def test_posterior_equals_direct_gaussian_conditioning(x64, preset):
    """Build (x_s, x_t) from the base process (+ Doob conditioning on x_T = μ) and condition on
    x_t."""
    lam = 10 / 255
    s = sde.make_schedule(preset=preset, lam=lam, dtype=jnp.float64)
    th = np.asarray(s.theta)
    T = s.num_timesteps
    r = np.random.default_rng(1)
    x0, mu = 0.6, -0.2
    pi = (x0 - mu) if preset == "rdbm" else 1.0
    for t, s_ in [(98, 97), (98, 60), (89, 79), (50, 10), (20, 0), (5, -1), (T - 1, 50)]:
        if preset != "irsde" and t == T - 1:
            continue  # singular: covered by test_posterior_at_the_singular_step
        times = np.array([s_ + 1, t + 1, T])  # continuous times; index −1 ↔ 0
        m, c = _base_covariance(preset, th, lam, times)
        m, c = m * (x0 - mu), c * pi ** 2  # y = x − μ
        if preset != "irsde":
            m, c = _condition(m, c, [2], np.zeros(1))  # the bridge: y_T = 0
        else:
            m, c = m[:2], c[:2, :2]
        # the bridge's own marginal at t is Eqs. 11–13
        np.testing.assert_allclose(m[1], float(s.Theta[t]) * (x0 - mu), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(c[1, 1], float(s.Sigma[t]) ** 2 * pi ** 2, rtol=1e-9, atol=1e-15)
        x_t = mu + m[1] + math.sqrt(c[1, 1]) * r.standard_normal()
        if s_ >= 0:
            cm, cv = _condition(m, c, [1], np.array([x_t - mu]))
            want_mean, want_var = mu + cm[0], cv[0, 0]
        else:
            want_mean, want_var = x0, 0.0
        mean, var = sde.posterior(s, jnp.asarray([x_t]), jnp.asarray([x0]), jnp.asarray([mu]),
                                  jnp.asarray([t]), jnp.asarray([s_]))
        np.testing.assert_allclose(float(mean[0]), want_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(var[0]), want_var, rtol=1e-8, atol=1e-15)


def test_posterior_at_the_singular_step(x64):
    x0, mu = _images(4)
    t = np.full(x0.shape[0], 99)
    for preset in ("rdbm", "goub", "brownian", "flow"):
        s = sde.make_schedule(preset=preset, dtype=jnp.float64)
        pi = sde.pi_values(s.default_pi, x0, mu)
        for s_ in (89, 0):
            mean, var = sde.posterior(s, mu, x0, mu, t, np.full_like(t, s_))
            np.testing.assert_allclose(mean, mu + float(s.Theta[s_]) * (x0 - mu), atol=1e-14)
            np.testing.assert_allclose(var, float(s.Sigma[s_]) ** 2 * pi ** 2, atol=1e-16)
            assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var))
    # flow: every posterior is the deterministic interpolant
    s = sde.make_schedule(preset="flow", dtype=jnp.float64)
    mean, var = sde.posterior(s, mu + 0.3, x0, mu, np.full_like(t, 50), np.full_like(t, 20))
    np.testing.assert_allclose(mean, mu + float(s.Theta[20]) * (x0 - mu), atol=1e-14)
    assert np.all(np.asarray(var) == 0)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("call, name", [
    (lambda: sde.make_schedule(lam=0.0), "lam"),
    (lambda: sde.make_schedule(lam=-1e-4), "lam"),
    (lambda: sde.make_schedule(lam=float("nan")), "lam"),
    (lambda: sde.make_schedule(lam="big"), "lam"),
    (lambda: sde.make_schedule(theta_schedule="exponential"), "theta_schedule"),
    (lambda: sde.make_schedule(preset="ddpm"), "preset"),
    (lambda: sde.make_schedule(num_timesteps=1), "num_timesteps"),
    (lambda: sde.make_schedule(num_timesteps=10.5), "num_timesteps"),
    (lambda: sde.timestep_pairs(100, 101), "num_steps"),
    (lambda: sde.timestep_pairs(100, 0), "num_steps"),
    (lambda: sde.timestep_pairs(100, 2.5), "num_steps"),
    (lambda: sde.q_sample(sde.make_schedule(), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2, int),
                          jnp.zeros(2), pi="half"), "pi"),
    (lambda: sde.pi_values("ones", jnp.zeros(2), jnp.zeros(2)), "pi"),
    (lambda: sde.predict_x0(sde.make_schedule(), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), 3,
                            "eps"),
     "parameterization"),
    (lambda: sde.training_target(sde.make_schedule(), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2),
                                 "v"),
     "parameterization"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()
