"""What the network predicts: one registry entry per parameterisation (its input, target, x̂0).

An entry holds the four maps of one parameterisation, each in the time index t, the modulator
mode `pi` and ρ (`sigma_data`, where it reads one): what the network sees in place of x_t
(`network_input`), x̂0 from its raw output (`to_x0`), the output that gives a wanted x̂0 (`from_x0`,
the inverse) and its regression target (`target`). Adding a parameterisation is one `register`
call (tests/test_sde_parameterizations.py registers an ε-prediction); `PARAMETERIZATIONS` is the
registry itself, the choice list config.validate reads.

Singular index (Θ_t = 0, i.e. t = T−1 of every bridge preset, where x_t = μ): the πε output
carries no information about x0 there, so in the `pi_eps` parameterisation the network output at
that index is read as the residual estimate x̂0 − μ (`x0_from_pi_eps`, `pi_eps_from_x0` and
`training_target(..., t=t)` share this convention). A πε network trained without `t` learns an
output ≈ 0 there (the L1-optimal guess of π⊙ε), i.e. x̂0 = μ: the first step then stays at μ.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rdbm_jax.schedules import Schedule
from rdbm_jax.sde.kernels import (Time, _bc, _coefs, _pi_moment, _resolve_pi, _safe,
                                  _scalings_for, pi_eps_from_x0, pi_values, require_rho,
                                  x0_from_pi_eps)


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """One network parameterisation: the maps between x_t, the network's output and x̂0.

    network_input(schedule, x_t, μ, t, pi, ρ) → what the network sees;
    to_x0(schedule, out, x_t, μ, t, pi, ρ) → x̂0; from_x0(schedule, x̂0, x_t, μ, t, pi, ρ) → out;
    target(schedule, x0, μ, ε, t, mode, ρ) → the regression target of x_t = `q_sample(…, ε)`
    (t may be None; `mode` is the resolved π mode).
    """

    name: str
    network_input: Callable[..., jax.Array]
    to_x0: Callable[..., jax.Array]
    from_x0: Callable[..., jax.Array]
    target: Callable[..., jax.Array]
    # x̂0 from the network alone, so `fuse_observation` may add what x_t observes (precond's skip
    # term already does, pi_eps inverts x_t: fusing them would count x_t twice).
    fusable: bool = False
    needs_rho: bool = False  # its maps read ρ (bridge.sigma_data)
    # the output is a residual over μ: a pre-filled condition offsets it by fill − μ
    # (`conditioning.fill_residual`), so a zero output restores the pre-fill
    adds_fill: bool = False
    # its target is noise (π ⊙ ε): a bridge without noise leaves nothing to learn
    target_is_noise: bool = False


# The registry, in the order error messages list it; `register` adds to it.
PARAMETERIZATIONS: dict[str, Parameterization] = {}


def register(entry: Parameterization) -> Parameterization:
    """Add `entry` to PARAMETERIZATIONS (a name already there is refused)."""
    if entry.name in PARAMETERIZATIONS:
        raise ValueError(f"parameterization={entry.name!r} is already registered")
    PARAMETERIZATIONS[entry.name] = entry
    return entry


def lookup(parameterization: str) -> Parameterization:
    """The registry entry of `parameterization`; an unknown name is refused."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization={parameterization!r} is not one of "
                         f"{', '.join(PARAMETERIZATIONS)}")
    return PARAMETERIZATIONS[parameterization]


def x0_from_residual(mu: jax.Array, residual: jax.Array) -> jax.Array:
    """x̂0 = μ + r̂ (the residual parameterisation; r = x0 − μ, the π of Eq. 12)."""
    return mu + residual


def residual_from_x0(mu: jax.Array, x0_hat: jax.Array) -> jax.Array:
    """r̂ = x̂0 − μ."""
    return x0_hat - mu


def _plain_input(schedule, x_t, mu, t, pi, sigma_data):
    """x_t itself."""
    return x_t


# ----------------------------------------------------------------------------- x0: x̂0 itself
# (the released code)
register(Parameterization(
    "x0", network_input=_plain_input,
    to_x0=lambda schedule, out, x_t, mu, t, pi, rho: out,
    from_x0=lambda schedule, x0_hat, x_t, mu, t, pi, rho: x0_hat,
    target=lambda schedule, x0, mu, noise, t, mode, rho: x0,
    fusable=True))


# ----------------------------------------------------------------------------- pi_eps: π ⊙ ε
# (the paper, Eq. 19)
def _pi_eps_target(schedule, x0, mu, noise, t, mode, sigma_data):
    """π ⊙ ε; with `t`, x0 − μ at the singular index (module doc)."""
    target = pi_values(mode, x0, mu) * noise
    if t is None:
        return target
    # At the singular index π⊙ε is not identifiable from x_t = μ; the output is read as x̂0 − μ
    # there (module doc), so that is what it is trained on.
    return jnp.where(_bc(_coefs(schedule, t)[0] > 0, target), target, x0 - mu)


register(Parameterization(
    "pi_eps", network_input=_plain_input,
    to_x0=lambda schedule, out, x_t, mu, t, pi, rho: x0_from_pi_eps(schedule, x_t, mu, out, t),
    from_x0=lambda schedule, x0_hat, x_t, mu, t, pi, rho: pi_eps_from_x0(schedule, x_t, mu,
                                                                          x0_hat, t),
    target=_pi_eps_target, target_is_noise=True))


# ----------------------------------------------------------------------------- residual: x̂0 − μ
# A zero output keeps μ (a zero-initialised head starts at x̂0 = μ; pixels with x0 = μ cost
# nothing).
register(Parameterization(
    "residual", network_input=_plain_input,
    to_x0=lambda schedule, out, x_t, mu, t, pi, rho: x0_from_residual(mu, out),
    from_x0=lambda schedule, x0_hat, x_t, mu, t, pi, rho: residual_from_x0(mu, x0_hat),
    target=lambda schedule, x0, mu, noise, t, mode, rho: residual_from_x0(mu, x0),
    fusable=True, adds_fill=True))


# ----------------------------------------------------------------------------- precond
# EDM/DDBM-style x̂0 = μ + c_skip (x_t − μ) + c_out F(c_in (x_t − μ)) with the scalings of RDBM's
# marginal under a prior x0 − μ ~ N(0, ρ²) (`precond_scalings`, docs/preconditioning.md).
def _precond_input(schedule, x_t, mu, t, pi, sigma_data):
    """c_in (x_t − μ): unit variance."""
    c_in = _scalings_for(schedule, t, x_t, sigma_data, pi)[2]
    # The float32 scalings would promote a bfloat16 state; the network sees the state's dtype.
    return (c_in * (x_t - mu)).astype(x_t.dtype)


def _precond_to_x0(schedule, out, x_t, mu, t, pi, sigma_data):
    """μ + c_skip (x_t − μ) + c_out F."""
    c_skip, c_out, _ = _scalings_for(schedule, t, x_t, sigma_data, pi)
    return mu + c_skip * (x_t - mu) + c_out * out


def _precond_from_x0(schedule, x0_hat, x_t, mu, t, pi, sigma_data):
    """F = (x̂0 − μ − c_skip (x_t − μ))/c_out; 0 where c_out = 0 (no output changes x̂0)."""
    c_skip, c_out, _ = _scalings_for(schedule, t, x_t, sigma_data, pi)
    f = (x0_hat - mu - c_skip * (x_t - mu)) / _safe(c_out)
    # c_out = 0 (ρ = 0, Σ_t = 0 or π ≡ 0): every F gives the same x̂0; 0 is the finite choice.
    return jnp.where(c_out > 0, f, jnp.zeros_like(f))


def _precond_target(schedule: Schedule, x0: jax.Array, mu: jax.Array, noise: jax.Array, t: Time,
                    mode: str, sigma_data) -> jax.Array:
    """F* = (r − c_skip y)/c_out for y = Θ r + Σ π ε, in closed form without cancellation:
    (Σ E[π²] r − Θ ρ² π ε)/(ρ √E[π²] √var); r/ρ where var = 0; 0 where c_out = 0."""
    if t is None:
        raise ValueError("t: the precond target depends on the time index")
    require_rho(sigma_data)
    rho = jnp.broadcast_to(jnp.asarray(sigma_data, jnp.float32), jnp.shape(x0)) if jnp.ndim(
        sigma_data) else jnp.asarray(sigma_data, jnp.float32)
    big_theta, sigma = (_bc(c, x0) for c in _coefs(schedule, t))
    r = x0 - mu
    m2 = _pi_moment(mode, rho)
    var = big_theta ** 2 * rho ** 2 + sigma ** 2 * m2
    den = rho * jnp.sqrt(m2) * jnp.sqrt(_safe(var))
    f = (sigma * m2 * r - big_theta * rho ** 2 * pi_values(mode, x0, mu) * noise) / _safe(den)
    f = jnp.where((den > 0) & (sigma > 0), f, jnp.zeros_like(f))  # c_out = 0: no output changes x̂0
    # var = 0 (x_t = μ): c_skip = 0 and c_out = ρ, so F* = r/ρ; ρ = 0 as well: c_out = 0, target 0.
    return jnp.where(var > 0, f, jnp.where(rho > 0, r / _safe(rho), jnp.zeros_like(r)))


register(Parameterization(
    "precond", network_input=_precond_input, to_x0=_precond_to_x0, from_x0=_precond_from_x0,
    target=_precond_target, needs_rho=True))

def fusable_names() -> tuple[str, ...]:
    """The registered parameterisations whose x̂0 comes from the network alone (`fusable`)."""
    return tuple(name for name, p in PARAMETERIZATIONS.items() if p.fusable)


FUSABLE = fusable_names()  # of the built-in entries


# ----------------------------------------------------------------------------- the public maps

def network_input(schedule: Schedule, x_t: jax.Array, mu: jax.Array, t: Time, parameterization: str,
                  pi: str | None = None, sigma_data=None) -> jax.Array:
    """What the network sees in place of x_t: c_in (x_t − μ) for precond (unit variance), else
    x_t."""
    return lookup(parameterization).network_input(schedule, x_t, mu, t, pi, sigma_data)


def predict_x0(schedule: Schedule, net_out: jax.Array, x_t: jax.Array, mu: jax.Array, t: Time,
               parameterization: str, pi: str | None = None, sigma_data=None) -> jax.Array:
    """x̂0 from the raw network output: itself (x0), via `x0_from_pi_eps` (pi_eps), μ + output
    (residual) or μ + c_skip (x_t − μ) + c_out F (precond; `precond_scalings`)."""
    return lookup(parameterization).to_x0(schedule, net_out, x_t, mu, t, pi, sigma_data)


def network_target(schedule: Schedule, x0_hat: jax.Array, x_t: jax.Array, mu: jax.Array, t: Time,
                   parameterization: str, pi: str | None = None, sigma_data=None) -> jax.Array:
    """The raw network output that `predict_x0` maps to x̂0 (its inverse, per parameterisation;
    precond: 0 where c_out = 0, where no output changes x̂0)."""
    return lookup(parameterization).from_x0(schedule, x0_hat, x_t, mu, t, pi, sigma_data)


def training_target(schedule: Schedule, x0: jax.Array, mu: jax.Array, noise: jax.Array,
                    parameterization: str, pi: str | None = None, t: Time | None = None,
                    sigma_data=None) -> jax.Array:
    """Regression target: x0 (x0), x0 − μ (residual), π ⊙ ε (pi_eps; with `t`, x0 − μ at the
    singular index) or the unit-variance F* of x_t = `q_sample(…, noise)` (precond; needs `t` and
    ρ)."""
    entry = lookup(parameterization)
    return entry.target(schedule, x0, mu, noise, t, _resolve_pi(schedule, pi), sigma_data)
