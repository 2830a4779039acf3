"""The one rule that turns a network output into the x̂0 the sampler steps with.

`estimate_x0` reads the output per parameterisation (`parameterizations`), updates it by the
observation x_t (`fuse_observation`), clips it and sets μ where x0 = μ is known. `X0Rule` is that
rule with the network's condition: the sampling loop (`sampling.sample`), `sampler.Sampler`, the
per-step diagnostic and the training loss all read the network through it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rdbm_jax import conditioning
from rdbm_jax.schedules import Schedule
from rdbm_jax.sde.kernels import Time, fuse_observation, project_known
from rdbm_jax.sde.parameterizations import lookup, training_target

Network = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x_in, condition, t) → output


def estimate_x0(schedule: Schedule, net_out: jax.Array, x_t: jax.Array, mu: jax.Array, t: Time,
                parameterization: str, pi: str | None = None, sigma_data=None,
                fuse: bool = False, clip: bool = True,
                known: jax.Array | None = None) -> jax.Array:
    """x̂0 of a raw network output: `predict_x0`, then `fuse_observation` (fuse), the clip to
    [−1, 1] (clip) and μ where `known` (`project_known`)."""
    x0_hat = lookup(parameterization).to_x0(schedule, net_out, x_t, mu, t, pi, sigma_data)
    if fuse:
        x0_hat = fuse_observation(schedule, x0_hat, x_t, mu, t, sigma_data, pi)
    # The spec clips x̂0 at every step (as DDPM's clip_denoised): images live in [−1, 1], and a
    # wild early x̂0 would otherwise carry the state off the data range for the later steps.
    if clip:
        x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    if known is not None:
        x0_hat = project_known(x0_hat, mu, known)
    return x0_hat


@dataclasses.dataclass(frozen=True)
class X0Rule:
    """How a network conditioned on `condition` is read: parameterisation, π mode, fusion, clip."""

    parameterization: str = "x0"
    pi: str | None = None  # a mode of PI_MODES, or None for the preset's default
    condition: str = "mu"  # conditioning.CONDITIONS
    fuse: bool = False
    clip: bool = True

    @property
    def uses_mask(self) -> bool:
        """Whether the network reads the degradation mask (and x̂0 = μ outside it)."""
        return conditioning.uses_mask(self.condition)

    def prepare(self, mu: jax.Array, mask: jax.Array | None, rho
                ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(condition, ρ, known) of a batch: mask models read ρ · mask (ρ = 0 where x0 = μ is
        known, so precond's c_skip/c_out and fusion leave μ there) and know x0 = μ outside the
        mask; other models read ρ as given and know nothing."""
        cond = conditioning.condition(mu, mask, self.condition)
        if not self.uses_mask:
            return cond, rho, None
        return cond, rho * mask, 1.0 - mask

    def network(self, net: Network) -> Network:
        """`net` with the output offset of a pre-filled condition (fill − μ) where the
        parameterisation's output is a residual over μ (`Parameterization.adds_fill`)."""
        if not lookup(self.parameterization).adds_fill:
            return net
        return lambda x_in, cond, t: net(x_in, cond, t) + conditioning.fill_residual(
            cond, self.condition)

    def network_input(self, schedule: Schedule, x_t: jax.Array, mu: jax.Array, t: Time,
                      rho) -> jax.Array:
        """What the network sees in place of x_t (`parameterizations.network_input`)."""
        entry = lookup(self.parameterization)
        return entry.network_input(schedule, x_t, mu, t, self.pi, rho)

    def x0(self, schedule: Schedule, net_out: jax.Array, x_t: jax.Array, mu: jax.Array, t: Time,
           rho, known: jax.Array | None) -> jax.Array:
        """The x̂0 the sampler steps with (`estimate_x0`)."""
        return estimate_x0(schedule, net_out, x_t, mu, t, self.parameterization, self.pi, rho,
                           self.fuse, self.clip, known)

    def target(self, schedule: Schedule, x0: jax.Array, mu: jax.Array, noise: jax.Array, t: Time,
               rho) -> jax.Array:
        """The regression target of the output (`parameterizations.training_target`)."""
        return training_target(schedule, x0, mu, noise, self.parameterization, self.pi, t, rho)
