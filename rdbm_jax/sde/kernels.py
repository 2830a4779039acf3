"""The bridge's marginal, posterior and reverse kernels, and the estimates that need no network.

Pure functional JAX (no Flax): every function is jit/vmap/pmap/grad-safe. Images are NHWC and
t is an int array [B] (or a scalar); the per-time coefficients broadcast over H, W, C. Index −1
is x0 itself (Θ = 1, Σ = 0). Paper equations: Wang et al., "Residual Diffusion Bridge Model".
"""
from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from rdbm_jax.schedules import PI_MODES, Schedule

Time = Union[jax.Array, np.ndarray, int]  # an index 0..T−1 (or −1 = x0), scalar or [B]
RHO_NEEDED = "sigma_data: the precond parameterisation needs ρ (bridge.sigma_data)"

# ----------------------------------------------------------------------------- helpers

def _resolve_pi(schedule: Schedule, pi: str | None) -> str:
    """The modulator mode: `pi`, or the preset's default when None/""."""
    mode = pi or schedule.default_pi
    if mode not in PI_MODES:
        raise ValueError(f"pi={pi!r} is not one of {', '.join(PI_MODES)}")
    return mode


def _check_eta(eta: float | jax.Array, name: str = "eta") -> float | None:
    """η (the argument `name`) as a float when concrete (None when traced); a concrete η outside
    [0, 1] is refused: the one home of the η range."""
    eta_c = _concrete(eta)
    if eta_c is not None and not 0.0 <= eta_c <= 1.0:
        raise ValueError(f"{name}={eta_c} must be in [0, 1]")
    return eta_c


def _concrete(x) -> float | None:
    """float(x) when x is concrete, None when it is traced."""
    try:
        return float(x)
    except TypeError:  # jax.errors.ConcretizationTypeError is a TypeError
        return None


def _at(table: jax.Array, t, fill: float) -> jax.Array:
    """table[t] for t in 0..T−1, `fill` for t = −1 (x0 itself)."""
    t = jnp.asarray(t, jnp.int32)
    # Clip before indexing: table[−1] would silently wrap to the last entry (t = T−1), not x0.
    value = table[jnp.clip(t, 0, table.shape[0] - 1)]
    return jnp.where(t < 0, jnp.asarray(fill, table.dtype), value)


def _coefs(schedule: Schedule, t) -> tuple[jax.Array, jax.Array]:
    """(Θ_t, Σ_t), with Θ_{−1} = 1 and Σ_{−1} = 0."""
    return _at(schedule.Theta, t, 1.0), _at(schedule.Sigma, t, 0.0)


def _bc(c: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a per-sample coefficient [B] (or scalar) against an image batch [B, ...]."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (jnp.ndim(x) - c.ndim))


def _safe(d: jax.Array) -> jax.Array:
    """A divisor that is never 0 (the jnp.where-safe-gradient idiom)."""
    # jnp.where evaluates both branches and differentiates both: a 0 divisor in the discarded
    # branch still puts inf/NaN into the gradient, so the divisor itself must stay nonzero.
    return jnp.where(d > 0, d, jnp.ones_like(d))


def pi_values(pi_mode: str, x0: jax.Array, mu: jax.Array) -> jax.Array:
    """The modulator π: x0 − μ (residual), |x0 − μ| (abs), 1 (one) or 0 (zero)."""
    if pi_mode == "residual":
        return x0 - mu
    if pi_mode == "abs":
        return jnp.abs(x0 - mu)
    if pi_mode == "one":
        return jnp.ones(jnp.broadcast_shapes(jnp.shape(x0), jnp.shape(mu)), jnp.result_type(x0, mu))
    if pi_mode == "zero":
        return jnp.zeros(jnp.broadcast_shapes(jnp.shape(x0), jnp.shape(mu)),
                         jnp.result_type(x0, mu))
    raise ValueError(f"pi={pi_mode!r} is not one of {', '.join(PI_MODES)}")


# ----------------------------------------------------------------------------- forward process

def q_sample(schedule: Schedule, x0: jax.Array, mu: jax.Array, t: Time, noise: jax.Array,
             pi: str | None = None) -> jax.Array:
    """x_t = μ + Θ_t (x0 − μ) + Σ_t π ⊙ ε (Eqs. 11–13)."""
    mode = _resolve_pi(schedule, pi)
    big_theta, sigma = _coefs(schedule, t)
    return mu + _bc(big_theta, x0) * (x0 - mu) + _bc(sigma, x0) * (pi_values(mode, x0, mu) * noise)


def transition(schedule: Schedule, t: Time, s: Time) -> tuple[jax.Array, jax.Array]:
    """One-step kernel s → t (s < t): y_t = a y_s + N(0, π² v), a = Θ_t/Θ_s,
    v = Σ_t² − a² Σ_s² ≥ 0."""
    th_t, sg_t = _coefs(schedule, t)
    th_s, sg_s = _coefs(schedule, s)
    a = th_t / _safe(th_s)
    # v ≥ 0 in exact arithmetic; float32 rounding can leave it just below 0 where the two terms
    # nearly cancel, and a negative variance would turn a later sqrt into NaN.
    return a, jnp.maximum(sg_t ** 2 - (a * sg_s) ** 2, 0.0)


def posterior(schedule: Schedule, x_t: jax.Array, x0: jax.Array, mu: jax.Array, t: Time, s: Time,
              pi: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_s | x_t, x0, μ), s < t (Chapman–Kolmogorov;
    Σ_t = 0 → marginal at s)."""
    mode = _resolve_pi(schedule, pi)
    th_s, sg_s = _coefs(schedule, s)
    a, v = transition(schedule, t, s)
    var_t = _coefs(schedule, t)[1] ** 2
    # Σ_t = 0 (x_t = μ at t = T−1 of the bridge presets; every t of flow): given x0, x_t adds
    # nothing, so the posterior is the forward marginal at s; the where keeps the formula's 0/0 out.
    informative = var_t > 0
    c_x = jnp.where(informative, a * sg_s ** 2 / _safe(var_t), 0.0)
    c_0 = jnp.where(informative, v / _safe(var_t), 1.0) * th_s
    c_v = jnp.where(informative, sg_s ** 2 * v / _safe(var_t), sg_s ** 2)
    mean = mu + _bc(c_x, x_t) * (x_t - mu) + _bc(c_0, x_t) * (x0 - mu)
    return mean, _bc(c_v, x_t) * pi_values(mode, x0, mu) ** 2


# ----------------------------------------------------------------------------- x0 from x_t

def x0_from_pi_eps(schedule: Schedule, x_t: jax.Array, mu: jax.Array, pi_eps: jax.Array,
                   t: Time) -> jax.Array:
    """x̂0 = μ + (x_t − μ − Σ_t n̂)/Θ_t; at the singular index (Θ_t = 0) x̂0 = μ + n̂ (module
    doc)."""
    big_theta, sigma = _coefs(schedule, t)
    regular = _bc(big_theta > 0, x_t)
    x0 = mu + (x_t - mu - _bc(sigma, x_t) * pi_eps) / _bc(_safe(big_theta), x_t)
    return jnp.where(regular, x0, mu + pi_eps)


def pi_eps_from_x0(schedule: Schedule, x_t: jax.Array, mu: jax.Array, x0_hat: jax.Array,
                   t: Time) -> jax.Array:
    """n̂ = (x_t − μ − Θ_t (x̂0 − μ))/Σ_t; x̂0 − μ at the singular index, 0 where only Σ_t = 0."""
    big_theta, sigma = _coefs(schedule, t)
    n_hat = (x_t - mu - _bc(big_theta, x_t) * (x0_hat - mu)) / _bc(_safe(sigma), x_t)
    # Σ_t = 0 with Θ_t > 0 (t = −1, or the noise-free flow preset): x_t holds no noise to read.
    n_hat = jnp.where(_bc(sigma > 0, x_t), n_hat, jnp.zeros_like(n_hat))
    return jnp.where(_bc(big_theta > 0, x_t), n_hat, x0_hat - mu)


# π modes whose noise scales with the residual x0 − μ: E[π²] = ρ², so ρ cancels from c_skip,
# which is Θ/(Θ² + Σ²) whatever ρ is (fusion then trusts x_t as a noise-free observation would be).
PI_SCALED_BY_RESIDUAL = ("residual", "abs")


def _pi_moment(mode: str, rho: jax.Array) -> jax.Array:
    """E[π²] under the prior x0 − μ ~ N(0, ρ²): 1 (one), ρ² (residual, abs), 0 (zero)."""
    if mode == "one":
        return jnp.ones_like(rho)
    if mode == "zero":
        return jnp.zeros_like(rho)
    assert mode in PI_SCALED_BY_RESIDUAL, mode
    return rho ** 2


def precond_scalings(schedule: Schedule, t: Time, sigma_data, pi: str | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in) of x̂0 = μ + c_skip y + c_out F(c_in y), y = x_t − μ.

    Derivation: docs/preconditioning.md.

    With r = x0 − μ ~ N(0, ρ²) and y = Θ r + Σ π ε (Eq. 12): var = Var y = Θ²ρ² + Σ² E[π²];
    c_skip = Θρ²/var is the linear MMSE coefficient of r on y (the posterior mean for π = 1),
    c_out = ρ Σ √E[π²]/√var the standard deviation of its error, c_in = 1/√var. Where var = 0
    (t = T−1 of the bridge presets: x_t = μ) y says nothing: c_skip = 0, c_out = ρ, c_in = 1.
    `sigma_data` ρ: a scalar or an array broadcastable against the image batch (per task, per
    pixel); the results broadcast like ρ against [B, …] (t scalar or [B]).
    """
    mode = _resolve_pi(schedule, pi)
    rho = jnp.asarray(sigma_data, jnp.float32)
    big_theta, sigma = _coefs(schedule, t)
    if jnp.ndim(big_theta):  # [B] → [B, 1, …] against ρ's image dims
        extra = (1,) * max(jnp.ndim(rho) - 1, 0)
        big_theta, sigma = (c.reshape(c.shape + extra) for c in (big_theta, sigma))
    m2 = _pi_moment(mode, rho)
    var = big_theta ** 2 * rho ** 2 + sigma ** 2 * m2
    ok = var > 0
    root = jnp.sqrt(_safe(var))
    # var = 0: y = 0 carries nothing, so x̂0 = μ + ρ F(y) (c_in = 1 only keeps the input finite).
    c_skip = jnp.where(ok, big_theta * rho ** 2 / _safe(var), 0.0)
    # c_out as ρΣ√E[π²]/√var, not √(ρ² − c_skip Θ ρ²): the subtraction cancels in float32 at t = 0.
    c_out = jnp.where(ok, rho * sigma * jnp.sqrt(m2) / root, rho)
    c_in = jnp.where(ok, 1.0 / root, 1.0)
    return c_skip, c_out, c_in


def require_rho(sigma_data) -> None:
    """Refuse a missing ρ (`sigma_data`) where the scalings need one: the one home of that rule."""
    if sigma_data is None:
        raise ValueError(RHO_NEEDED)


def _scalings_for(schedule: Schedule, t: Time, x: jax.Array, sigma_data, pi: str | None):
    """`precond_scalings` broadcast against the image batch x; ρ required."""
    require_rho(sigma_data)
    rho = jnp.asarray(sigma_data, jnp.float32)
    c = precond_scalings(schedule, t, rho, pi)
    if jnp.ndim(rho) == 0:  # scalar ρ: per-sample [B] (or scalar) coefficients
        return tuple(_bc(v, x) for v in c)
    return c


def fuse_observation(schedule: Schedule, x0_hat: jax.Array, x_t: jax.Array, mu: jax.Array,
                     t: Time, sigma_data, pi: str | None = None) -> jax.Array:
    """x̂0 ← μ + r̂ + c_skip (y − Θ_t r̂), y = x_t − μ: the network's r̂ = x̂0 − μ updated by x_t
    (Eq. 12) as a prior of variance ρ² (`sigma_data`; docs/preconditioning.md, "Fusion"). r̂ ≡ 0
    gives precond's skip estimate, t = T−1 gives x̂0, and an r̂ with mean-square error below ρ²
    an error below the skip estimate's at every t."""
    c_skip = _scalings_for(schedule, t, x_t, sigma_data, pi)[0]
    big_theta = _bc(_coefs(schedule, t)[0], x_t)
    resid = x0_hat - mu
    return mu + resid + c_skip * (x_t - mu - big_theta * resid)


# ----------------------------------------------------------------------------- reverse kernels


def reverse_step(schedule: Schedule, x_t: jax.Array, mu: jax.Array, x0_hat: jax.Array, t: Time,
                 t_next: Time, eta: float | jax.Array = 0.0, noise: jax.Array | None = None,
                 pi: str | None = None) -> jax.Array:
    """One reverse step t → t_next of the η-family (η = 0: Eq. 19 in x0 form; η = 1: posterior).

    Arguments (a ValueError names the one that breaks its rule):
      t, t_next: indices with t_next < t; t_next = −1 returns x̂0.
      eta: in [0, 1] (checked when concrete; a traced η is not checked).
      noise: z, a standard normal array shaped like x_t; required when a concrete η is > 0; when η
        is traced and noise is None the z term is dropped.
      pi: a mode of PI_MODES, or None/"" for the preset's default.
    """
    # x_s = μ + Θ_s (x̂0 − μ) + sqrt(Σ_s² − η² Σ̃²) n̂ + η Σ̃ π̂ z, Σ̃² = Σ_s² v/Σ_t², n̂ from x̂0,
    # π̂ the modulator of x̂0. Σ_t = 0 (the singular first step): n̂ = 0 and Σ̃ = Σ_s, i.e.
    # x_s = μ + Θ_s (x̂0 − μ) (+ η Σ_s π̂ z).
    # Beyond the paper: it samples with Eq. 19 only (η = 0). The DDIM-style family keeps every
    # η's marginals equal to the forward process and gives the exact posterior at η = 1, so a
    # stochastic sampler can be compared on the same kernels (and π̂ comes from x̂0 because the
    # true π = x0 − μ is unknown while sampling).
    mode = _resolve_pi(schedule, pi)
    eta_c = _check_eta(eta)
    if noise is None and eta_c not in (None, 0.0):
        raise ValueError(f"noise: a standard normal array is needed when eta={eta_c} > 0")
    th_t, sg_t = _coefs(schedule, t)
    th_s, sg_s = _coefs(schedule, t_next)
    _, v = transition(schedule, t, t_next)
    informative = sg_t ** 2 > 0
    ratio = jnp.where(informative, v / _safe(sg_t ** 2), 1.0)  # v/Σ_t² ∈ [0, 1]
    var_tilde = sg_s ** 2 * ratio
    # ratio ≤ 1 makes the radicand ≥ 0 exactly; the max absorbs float rounding, whose negative
    # residue would turn the sqrt into NaN.
    c_n = jnp.sqrt(jnp.maximum(sg_s ** 2 - eta ** 2 * var_tilde, 0.0))
    resid = x0_hat - mu
    n_hat = (x_t - mu - _bc(th_t, x_t) * resid) / _bc(_safe(sg_t), x_t)
    n_hat = jnp.where(_bc(informative, x_t), n_hat, jnp.zeros_like(n_hat))
    x_s = mu + _bc(th_s, x_t) * resid + _bc(c_n, x_t) * n_hat
    if noise is not None:
        x_s = x_s + _bc(eta * jnp.sqrt(var_tilde), x_t) * (pi_values(mode, x0_hat, mu) * noise)
    # The last step (t_next = −1) returns x̂0 itself, not the kernel's value, which equals it
    # only up to rounding.
    return jnp.where(_bc(jnp.asarray(t_next) < 0, x_s), x0_hat, x_s)


def reverse_step_pi_eps(schedule: Schedule, x_t: jax.Array, mu: jax.Array, pi_eps_hat: jax.Array,
                        t: Time, t_next: Time) -> jax.Array:
    """Eq. 19 in πε form: x_s = μ + (Θ_s/Θ_t)(x_t − μ) − ((Θ_s/Θ_t) Σ_t − Σ_s) n̂
    (deterministic)."""
    # At the singular index x_s = μ + Θ_s n̂ (n̂ read as x̂0 − μ, module doc);
    # t_next = −1 returns x̂0.
    th_t, sg_t = _coefs(schedule, t)
    th_s, sg_s = _coefs(schedule, t_next)
    k = th_s / _safe(th_t)
    x_s = mu + _bc(k, x_t) * (x_t - mu) - _bc(k * sg_t - sg_s, x_t) * pi_eps_hat
    x_s = jnp.where(_bc(th_t > 0, x_t), x_s, mu + _bc(th_s, x_t) * pi_eps_hat)
    x0_hat = x0_from_pi_eps(schedule, x_t, mu, pi_eps_hat, t)
    return jnp.where(_bc(jnp.asarray(t_next) < 0, x_s), x0_hat, x_s)


def invert(schedule: Schedule, x_t: jax.Array, mu: jax.Array, t: Time) -> jax.Array:
    """Plain inversion of Eq. 12 without noise: x̂0 = μ + (x_t − μ)/Θ_t (μ where Θ_t = 0)."""
    big_theta = _bc(_coefs(schedule, t)[0], x_t)
    return jnp.where(big_theta > 0, mu + (x_t - mu) / _safe(big_theta), mu)


def skip_estimate(schedule: Schedule, x_t: jax.Array, mu: jax.Array, t: Time, sigma_data,
                  pi: str | None = None) -> jax.Array:
    """μ + c_skip (x_t − μ): precond's skip term alone, the posterior mean of x0 under the prior
    x0 − μ ~ N(0, ρ²) (`precond_scalings`; ρ = `sigma_data`, needed)."""
    c_skip = _scalings_for(schedule, t, x_t, sigma_data, pi)[0]
    return mu + c_skip * (x_t - mu)


def project_known(x0_hat: jax.Array, mu: jax.Array, known: jax.Array) -> jax.Array:
    """x̂0 with μ where x0 = μ is known (`known` true/1): the residual is exactly 0 there."""
    return jnp.where(jnp.asarray(known) > 0, mu, x0_hat)


