"""Bridge schedules: θ profiles and the marginal tables Θ_t, Σ_t of every preset (paper Eqs. 11–13).

Discrete convention (the reference release): index t = 0..T−1 stands for continuous time t + 1,
θ is piecewise constant, θ_i on [i, i+1), θ̄_{0:t} = cumsum(θ)[t] (inclusive), θ̄_{t:T} =
θ̄_{0:T} − θ̄_{0:t}. Hence Θ[T−1] = Σ[T−1] = 0 for every bridge preset; index −1 is x0 itself
(Θ = 1, Σ = 0). Tables are computed in float64 numpy, then cast.

θ profiles (`theta_schedule`):
- cosine: the improved-DDPM cosine "betas" of the spec (θ̄_{0:T} = 7.878897 at T = 100).
- linear: the DDPM linear betas rescaled to T steps (as in denoising-diffusion-pytorch, whose
  cosine is exactly the spec's): θ_i = linspace(1e-4·1000/T, 0.02·1000/T, T), θ̄_{0:T} ≈ 10.05.
- sigmoid: the sigmoid ᾱ of denoising-diffusion-pytorch (start −3, end 3, τ = 1), betas clipped
  to 0.999 like the cosine's.
- constant: θ_i = 1/T (θ̄_{0:T} = 1). With the brownian preset Σ_t² = 2λ m(1 − m), m = (t+1)/T,
  which is BBDM with s = λ; λ = T/2 (2λθ = 1) gives the standard (t+1)(T−t−1)/T bridge.

Discretisation (`discretization`): "rdbm" uses the profiles above for every preset (RDBM's own
convention, right for the paper's π = 1 ablation). "native" (goub and irsde only) reproduces the
peers' own code (Hammour-steak/GOUB and Algolzw/image-restoration-sde, `codes/utils/sde_utils.py`):
- θ profile on their T + 1 timesteps 0..T: cosine = 1 − ᾱ(k)/ᾱ(0) for k = 1..T+1 of a cosine ᾱ on
  T + 2 steps (their `cosine_theta_schedule`), or their linear / constant;
- θ̄_k = Σ_{j=1..k} θ_j (their cumsum shifted by θ_0), dt = −ln(0.01)/θ̄_T, so e^{−θ̄_T dt} = 0.01;
- λ = the peer's λ / max_sigma argument N, read as N/255 when N ≥ 1 (GOUB) or N > 1 (IR-SDE),
  squared.
Project index i is their timestep i + 1 (θ_i = θ_{i+1}·dt) and index −1 their timestep 0 (x0), so
the tables equal GOUB's m(t) (coefficient of x0 in f_mean; f_mean = μ + m(t)(x0 − μ) since
m + n = 1) and f_sigma(t), and IR-SDE's e^{−θ̄_t dt} (mu_bar = μ + e^{−θ̄_t dt}(x0 − μ)) and
sigma_bar(t). Their Euler–Maruyama samplers are not reproduced: sampling uses this project's
posterior kernels, which are exact for these marginals.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

THETA_SCHEDULES = ("cosine", "linear", "sigmoid", "constant")
PRESETS = ("rdbm", "goub", "brownian", "irsde", "flow")
PI_MODES = ("residual", "abs", "one", "zero")
# rdbm: the paper's π = x0 − μ; goub/brownian/irsde: the peers' plain noise (π = 1); flow: no
# noise (π = 0), a deterministic interpolation.
DEFAULT_PI = {"rdbm": "residual", "goub": "one", "brownian": "one", "irsde": "one", "flow": "zero"}
DISCRETIZATIONS = ("rdbm", "native")
NATIVE_PRESETS = ("goub", "irsde")
NATIVE_THETA_SCHEDULES = ("cosine", "linear", "constant")
NATIVE_EPS = 0.01  # the peers' `eps`: e^{−θ̄_T dt}


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """Marginal tables x_t = μ + Θ_t (x0 − μ) + Σ_t π ε for t = 0..T−1; a pytree with static
    metadata."""

    theta: jax.Array       # θ_i, [T]
    theta_bar: jax.Array   # θ̄_{0:t} = cumsum(θ)[t], inclusive, [T]
    Theta: jax.Array       # Θ_t, [T]
    Sigma: jax.Array       # Σ_t ≥ 0, [T]
    num_timesteps: int
    preset: str
    default_pi: str
    theta_schedule: str
    lam: float             # as configured (native: the peer's N, see `native_variance`)
    discretization: str = "rdbm"


# Tables are traced leaves; the names and sizes are static, so jit specialises on them.
jax.tree_util.register_dataclass(
    Schedule, data_fields=["theta", "theta_bar", "Theta", "Sigma"],
    meta_fields=["num_timesteps", "preset", "default_pi", "theta_schedule", "lam",
                 "discretization"])


def _cosine(num_timesteps: int) -> np.ndarray:
    """Improved-DDPM cosine betas: θ_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999)."""
    s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    # ᾱ(1) = 0 makes the last beta 1; improved DDPM caps it at 0.999.
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


def _linear(num_timesteps: int) -> np.ndarray:
    """DDPM linear betas rescaled to T steps (scale = 1000/T)."""
    # DDPM's betas are for T = 1000; scaling keeps the total θ̄ (≈ 10) the same for any T.
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def _sigmoid(num_timesteps: int, start: float = -3.0, end: float = 3.0,
             tau: float = 1.0) -> np.ndarray:
    """Sigmoid ᾱ schedule (denoising-diffusion-pytorch), betas clipped to [0, 0.999]."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    v_start, v_end = sig(start / tau), sig(end / tau)
    alpha_bar = (v_end - sig((s * (end - start) + start) / tau)) / (v_end - v_start)
    # ᾱ(1) = 0 here too: the same 0.999 cap as the cosine; the lower clip absorbs rounding.
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)


def _constant(num_timesteps: int) -> np.ndarray:
    """θ_i = 1/T: unit total mean reversion over the horizon."""
    return np.full(num_timesteps, 1.0 / num_timesteps, dtype=np.float64)


_THETA_FNS = {"cosine": _cosine, "linear": _linear, "sigmoid": _sigmoid, "constant": _constant}


def theta_profile(theta_schedule: str, num_timesteps: int) -> np.ndarray:
    """θ_i (float64 numpy, [T]) of a named schedule."""
    if theta_schedule not in _THETA_FNS:
        raise ValueError(
            f"theta_schedule={theta_schedule!r} is not one of {', '.join(THETA_SCHEDULES)}")
    return _THETA_FNS[theta_schedule](num_timesteps)


def _native_thetas(theta_schedule: str, num_timesteps: int) -> np.ndarray:
    """The peers' θ on their timesteps 0..T ([T + 1]; cosine_/linear_/constant_theta_schedule)."""
    n = num_timesteps + 1
    if theta_schedule == "cosine":
        steps = num_timesteps + 2  # "for truncating from 1 to -1"
        s = np.arange(steps + 1, dtype=np.float64) / steps
        alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return 1.0 - alpha_bar[1:-1] / alpha_bar[0]
    if theta_schedule == "linear":
        scale = 1000.0 / n
        return np.linspace(scale * 1e-4, scale * 0.02, n, dtype=np.float64)
    if theta_schedule == "constant":
        return np.ones(n, dtype=np.float64)
    raise ValueError(f"theta_schedule={theta_schedule!r}: the native discretisation has only "
                     f"{', '.join(NATIVE_THETA_SCHEDULES)}")


def native_profile(theta_schedule: str, num_timesteps: int) -> np.ndarray:
    """θ_i = θ_{i+1}·dt (float64, [T]) of the peers' code: Σθ = −ln(0.01),
    project i ↔ their i + 1."""
    thetas = _native_thetas(theta_schedule, num_timesteps)
    # The peers pick dt so that e^{−θ̄_T dt} = eps (0.01): their scale of total mean reversion.
    dt = -math.log(NATIVE_EPS) / np.sum(thetas[1:])
    return thetas[1:] * dt


def native_variance(preset: str, lam: float) -> float:
    """The stationary variance of the peers' λ argument N: (N/255)² if N ≥ 1 (goub) / N > 1 (irsde),
    else N²."""
    # The peers' own thresholds differ (GOUB: N ≥ 1, IR-SDE: N > 1); kept so N = 1 reproduces each.
    scaled = lam / 255 if (lam >= 1 if preset == "goub" else lam > 1) else lam
    return scaled ** 2


def check_discretization(discretization: str, preset: str, theta_schedule: str) -> None:
    """Raise ValueError for a discretisation the preset or θ profile does not have."""
    if discretization not in DISCRETIZATIONS:
        raise ValueError(
            f"discretization={discretization!r} is not one of {', '.join(DISCRETIZATIONS)}")
    if discretization == "native" and preset not in NATIVE_PRESETS:
        raise ValueError(
            f"discretization='native' exists for presets {', '.join(NATIVE_PRESETS)} only "
            f"(got preset={preset!r})")
    if discretization == "native" and theta_schedule not in NATIVE_THETA_SCHEDULES:
        raise ValueError(
            f"discretization='native' has theta_schedule {', '.join(NATIVE_THETA_SCHEDULES)} "
            f"only (got {theta_schedule!r})")


def _one_minus_exp(x: np.ndarray) -> np.ndarray:
    """1 − e^{−2x}, accurate for small x."""
    # expm1, not 1 − exp: near t = 0 and t = T−1 the argument is tiny and 1 − exp would cancel.
    return -np.expm1(-2.0 * x)


def marginal_tables(theta: np.ndarray, lam: float, preset: str) -> tuple[np.ndarray, np.ndarray]:
    """(Θ_t, Σ_t) in float64 for a preset (spec table; sinh ratios in overflow-free exp form)."""
    # float64 throughout: rest = total − bar subtracts nearly equal sums near t = T−1, which
    # float32 would round coarsely.
    bar = np.cumsum(theta)
    total = bar[-1]
    rest = total - bar  # θ̄_{t:T}; exactly 0 at t = T−1
    if preset in ("rdbm", "goub", "flow"):
        # Θ = sinh(θ̄_{t:T})/sinh(θ̄_T); Σ² = 2λ sinh(θ̄_t) sinh(θ̄_{t:T})/sinh(θ̄_T)   (Eqs. 12–13)
        # in e^{−x} form (Θ = e^{−θ̄_t}(1 − e^{−2θ̄_{t:T}})/(1 − e^{−2θ̄_T})): sinh overflows for
        # large θ̄.
        denom = _one_minus_exp(total)
        big_theta = np.exp(-bar) * _one_minus_exp(rest) / denom
        var = lam * _one_minus_exp(bar) * _one_minus_exp(rest) / denom
        if preset == "flow":
            var = np.zeros_like(var)
    elif preset == "brownian":
        # θ → 0 with g² = 2λθ fixed: σ_t² = 2λ θ̄_t; Θ = 1 − σ_t²/σ_T²; Σ² = σ_t² (1 − σ_t²/σ_T²)
        big_theta = rest / total
        var = 2.0 * lam * bar * rest / total
    elif preset == "irsde":
        # base OU (Eq. 9): Θ = e^{−θ̄_t}; Σ² = λ (1 − e^{−2θ̄_t})
        big_theta = np.exp(-bar)
        var = lam * _one_minus_exp(bar)
    else:
        raise ValueError(f"preset={preset!r} is not one of {', '.join(PRESETS)}")
    # var is ≥ 0 in exact arithmetic; the max keeps a rounding residue from a NaN sqrt.
    return big_theta, np.sqrt(np.maximum(var, 0.0))


def make_schedule(num_timesteps: int = 100, theta_schedule: str = "cosine", lam: float = 10 / 255,
                  preset: str = "rdbm", dtype=jnp.float32,
                  discretization: str = "rdbm") -> Schedule:
    """The bridge schedule of a preset (rdbm | goub | brownian | irsde | flow) on T timesteps."""
    integer = isinstance(num_timesteps, (int, np.integer)) and not isinstance(num_timesteps, bool)
    if not integer or num_timesteps < 2:
        raise ValueError(f"num_timesteps={num_timesteps!r} must be an integer >= 2")
    if theta_schedule not in _THETA_FNS:
        raise ValueError(
            f"theta_schedule={theta_schedule!r} is not one of {', '.join(THETA_SCHEDULES)}")
    if preset not in DEFAULT_PI:
        raise ValueError(f"preset={preset!r} is not one of {', '.join(PRESETS)}")
    try:
        lam_f = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam={lam!r} must be a positive number") from None
    if not (math.isfinite(lam_f) and lam_f > 0):
        raise ValueError(f"lam={lam!r} must be a positive finite number")
    check_discretization(discretization, preset, theta_schedule)
    num_timesteps = int(num_timesteps)
    if discretization == "native":
        theta = native_profile(theta_schedule, num_timesteps)
        big_theta, sigma = marginal_tables(theta, native_variance(preset, lam_f), preset)
    else:
        theta = theta_profile(theta_schedule, num_timesteps)
        big_theta, sigma = marginal_tables(theta, lam_f, preset)
    cast = lambda a: jnp.asarray(a, dtype=dtype)
    return Schedule(theta=cast(theta), theta_bar=cast(np.cumsum(theta)), Theta=cast(big_theta),
                    Sigma=cast(sigma), num_timesteps=num_timesteps, preset=preset,
                    default_pi=DEFAULT_PI[preset], theta_schedule=theta_schedule, lam=lam_f,
                    discretization=discretization)


def timestep_pairs(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Sampling grid [S, 2] of (t, t_next): int(linspace(−1, T−1, S+1)) reversed, consecutive
    pairs."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps={num_steps!r} must be an integer")
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps={num_steps} must be in [1, num_timesteps={num_timesteps}]")
    # Truncation toward 0 (astype), not rounding: the docstring's int(linspace(…)); the ends −1
    # and T−1 are exact, so NFE 1 is the single step (T−1, −1).
    grid = np.linspace(-1, num_timesteps - 1, num_steps + 1).astype(np.int64)[::-1]
    return np.stack([grid[:-1], grid[1:]], axis=1)
