"""The residual diffusion bridge: marginal, posterior, reverse kernels and the compiled sampler.

Pure functional JAX (no Flax): every function is jit/vmap/pmap/grad-safe. Images are NHWC and
t is an int array [B] (or a scalar); the per-time coefficients broadcast over H, W, C. Index −1
is x0 itself (Θ = 1, Σ = 0). Paper equations: Wang et al., "Residual Diffusion Bridge Model".

The modules: `kernels` (the marginal, posterior and reverse kernels, the estimates that need no
network), `parameterizations` (the registry of what the network predicts), `estimate` (the one
network output → x̂0 rule) and `sampling` (the reverse loop). Their public names are this
package's; the schedules it uses are rdbm_jax.schedules' own public names, importable here too.
"""
from __future__ import annotations

from rdbm_jax.schedules import (DEFAULT_PI, PI_MODES, PRESETS, THETA_SCHEDULES, Schedule,
                                make_schedule, theta_profile, timestep_pairs)
from rdbm_jax.sde.estimate import X0Rule, estimate_x0
from rdbm_jax.sde.kernels import (PI_SCALED_BY_RESIDUAL, Time, fuse_observation, invert,
                                  pi_eps_from_x0, pi_values, posterior, precond_scalings,
                                  project_known, q_sample, reverse_step, reverse_step_pi_eps,
                                  skip_estimate, transition, x0_from_pi_eps)
from rdbm_jax.sde.parameterizations import (FUSABLE, PARAMETERIZATIONS, Parameterization,
                                            fusable_names, network_input, network_target,
                                            predict_x0, register, residual_from_x0,
                                            training_target, x0_from_residual)
from rdbm_jax.sde.sampling import sample

# The bridge math of this package; the schedules it uses are rdbm_jax.schedules' own public names.
__all__ = ["PARAMETERIZATIONS", "Parameterization", "register", "pi_values", "q_sample",
           "transition", "posterior", "x0_from_pi_eps", "pi_eps_from_x0", "x0_from_residual",
           "residual_from_x0", "predict_x0", "training_target", "network_target",
           "precond_scalings", "network_input", "reverse_step", "reverse_step_pi_eps",
           "fuse_observation", "PI_SCALED_BY_RESIDUAL", "FUSABLE", "fusable_names",
           "project_known", "invert", "skip_estimate", "estimate_x0", "X0Rule", "sample"]
