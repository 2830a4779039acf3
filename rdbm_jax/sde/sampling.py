"""The compiled reverse loop: `sample` runs Eq. 19 (or its η-family) over the sampling grid as one
lax.scan, reading each network output through `estimate.estimate_x0`."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rdbm_jax.schedules import Schedule, timestep_pairs
from rdbm_jax.sde.estimate import estimate_x0
from rdbm_jax.sde.kernels import _check_eta, _resolve_pi, require_rho, reverse_step
from rdbm_jax.sde.parameterizations import fusable_names, lookup


def sample(denoise_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], schedule: Schedule,
           mu: jax.Array, num_steps: int, rng: jax.Array | None, eta: float | jax.Array = 0.0,
           clip: bool = True, parameterization: str = "x0", pi: str | None = None,
           return_trajectory: bool = False, known: jax.Array | None = None,
           sigma_data: jax.Array | float | None = None, first_step_eta: float = 0.0,
           fuse: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The reverse loop over `timestep_pairs(T, num_steps)` as one lax.scan → x̂0 (, states).

    Arguments (a ValueError names the one that breaks its rule):
      denoise_fn(x_in, μ, t int32 [B]): the raw network output, read per `parameterization`
        (x̂0, π̂ε̂, r̂ or F); x_in = `network_input(x_t)`: x_t itself, or c_in (x_t − μ) for
        precond.
      num_steps: the NFE, an integer in 1..schedule.num_timesteps.
      rng: a PRNG key; may be None only when η = 0, first_step_eta = 0 and the preset is not irsde.
      eta: in [0, 1] (checked when concrete; a traced η is not checked).
      parameterization: one of PARAMETERIZATIONS.
      pi: a mode of PI_MODES, or None/"" for the preset's default; the irsde preset needs "one" or
        "zero" (its start x_T ~ N(μ, Σ² π²) must not depend on x0).
      known: broadcastable to μ, 1/True where x0 = μ is known (e.g. outside inpainting holes):
        x̂0 is set to μ there at every step (`project_known`), so those pixels stay at μ exactly.
      sigma_data: precond's (and fuse's) ρ (scalar, or broadcastable to μ: per image or per
        pixel); > 0 where the network decides, 0 where x0 = μ is known.
      fuse: update each x̂0 by the observation x_t (`fuse_observation`, prior variance ρ²); only
        for the FUSABLE parameterisations, and needs sigma_data.
      first_step_eta: in [0, 1], the η of the first step only (max with η): 1 lands it on the
        forward marginal (noise Σ_s π̂ z) instead of the noise-free μ + Θ_s (x̂0 − μ) that η = 0
        gives when Σ_{T−1} = 0 — the states precond's c_skip trusts are marginal samples (DDBM's
        stochastic first step).
      return_trajectory: also return the states [S+1, B, …]: the start, then the state after each
        step (at the times pairs[:, 1]; the last one is the returned x̂0).
    """
    # Start: x = μ for every bridge preset (Σ_{T−1} = 0);
    # irsde: x = μ + Σ_{T−1} z (π = "one"; "zero" → μ).
    mode = _resolve_pi(schedule, pi)
    entry = lookup(parameterization)
    pairs = timestep_pairs(schedule.num_timesteps, num_steps)
    eta_c = _check_eta(eta)
    _check_eta(float(first_step_eta), "first_step_eta")
    stochastic = eta_c != 0.0 or float(first_step_eta) > 0.0
    noisy_start = schedule.preset == "irsde" and mode != "zero"
    if noisy_start and mode != "one":
        raise ValueError(f"pi={mode!r}: the irsde start x_T ~ N(μ, Σ² π²) needs π known without x0 "
                         "(use pi='one' or 'zero')")
    if (stochastic or noisy_start) and rng is None:
        raise ValueError("rng: a PRNG key is needed for eta > 0, first_step_eta > 0 or the irsde "
                         "preset")
    if entry.needs_rho:
        require_rho(sigma_data)
    if fuse and (not entry.fusable or sigma_data is None):
        raise ValueError(f"fuse: needs sigma_data (ρ) and a parameterization in "
                         f"{fusable_names()}, got "
                         f"{parameterization!r} and sigma_data={sigma_data}")
    mu = jnp.asarray(mu)
    x = mu
    # IR-SDE is an OU process, not a bridge: its last state is ≈ N(μ, Σ_{T−1}²) (Θ_{T−1} is small,
    # not 0), not μ itself; x0 is unknown, so the start drops the Θ term.
    if noisy_start:
        rng, k0 = jax.random.split(rng)
        x = mu + schedule.Sigma[-1].astype(mu.dtype) * jax.random.normal(k0, mu.shape, mu.dtype)
    start, batch = x, mu.shape[0]
    etas = jnp.full((len(pairs),), eta, jnp.float32)
    # Not in the paper: DDBM's stochastic first step. With Σ_{T−1} = 0 an η = 0 first step lands
    # on μ + Θ_s (x̂0 − μ), off the forward marginal that precond's c_skip assumes.
    if float(first_step_eta) > 0.0:
        etas = etas.at[0].max(float(first_step_eta))

    def body(carry, step):
        x_t, key = carry
        pair, eta_k = step
        t, t_next = pair[0], pair[1]
        x_in = entry.network_input(schedule, x_t, mu, t, mode, sigma_data)
        out = denoise_fn(x_in, mu, jnp.full((batch,), t, jnp.int32))
        x0_hat = estimate_x0(schedule, out, x_t, mu, t, parameterization, mode, sigma_data, fuse,
                             clip, known)
        z = None
        if stochastic:
            key, kz = jax.random.split(key)
            z = jax.random.normal(kz, mu.shape, mu.dtype)
        x_s = reverse_step(schedule, x_t, mu, x0_hat, t, t_next, eta=eta_k if stochastic else eta,
                           noise=z, pi=mode)
        # lax.scan needs a fixed carry dtype; the float32 coefficients would promote bfloat16.
        x_s = x_s.astype(mu.dtype)
        return (x_s, key), (x_s if return_trajectory else None)

    # The scan carries a key either way; without rng the run is deterministic and never draws.
    key = rng if rng is not None else jax.random.PRNGKey(0)
    (x, _), traj = jax.lax.scan(body, (x, key), (jnp.asarray(pairs, jnp.int32), etas))
    if return_trajectory:
        return x, jnp.concatenate([start[None], traj], axis=0)
    return x

