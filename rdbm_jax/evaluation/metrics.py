"""PSNR and SSIM in JAX, matching scikit-image and the restoration protocol (RGB or BT.601 Y, border
crop).

Conventions (write them into every report):
- inputs are float images in [0, data_range], shape [H, W, 3] or batched [..., H, W, 3];
  the result is one value per image (a scalar, or shape [...]);
- `quantize` ("round" | "truncate" | "none"; True/False mean "round"/"none") clips to
  [0, data_range] and maps to the 256 uint8 levels first: "round" = round half to even, as
  `np.round` in BasicSR's `tensor2img`; "truncate" = `(x * 255).astype(np.uint8)`, as DGSolver;
- `color="y"` measures the BT.601 luma of MATLAB's `rgb2ycbcr`,
  Y = 16 + 65.481 R + 128.553 G + 24.966 B (on [0, 1] inputs, Y in [16, 235] / 255),
  without re-rounding Y (BasicSR's `to_y_channel`); the data range stays `data_range`;
- `crop_border` pixels are removed from every side before measuring;
- PSNR = 10 log10(data_range² / MSE) as `skimage.metrics.peak_signal_noise_ratio`;
- SSIM `window="gaussian"` is `skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=data_range)` (Wang et al. 2004);
  `window="uniform"` is scikit-image's default call (7×7 uniform window, sample covariance), as
  DGSolver scores per channel; both are the mean over channels.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rdbm_jax.errors import ConfigError

COLORS = ("rgb", "y")  # eval.color
EVAL_METRICS = ("psnr", "ssim", "lpips", "fid")  # eval.metrics: any of these, comma-separated
# MATLAB rgb2ycbcr luma row (for [0, 1] inputs the output is Y/255 with offset 16/255).
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
# SSIM window: Gaussian, sigma 1.5, truncated at 3.5 sigma (scipy.ndimage radius 5, 11 taps).
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = int(3.5 * _SSIM_SIGMA + 0.5)
# SSIM's stabilising constants C1 = (K1 L)^2, C2 = (K2 L)^2 (Wang et al. 2004, as scikit-image).
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_UNIFORM_SIZE = 7  # scikit-image's default win_size
SSIM_WINDOWS = ("gaussian", "uniform")
QUANTIZE_MODES = ("round", "truncate", "none")
_HIGHEST = jax.lax.Precision.HIGHEST


def to_unit(x: jax.Array) -> jax.Array:
    """Map model images in [-1, 1] to [0, 1] (clipped)."""
    return jnp.clip((jnp.asarray(x) + 1.0) * 0.5, 0.0, 1.0)


def quantize_mode(quantize: str | bool) -> str:
    """The quantisation mode of a `quantize` argument (True → "round", False → "none")."""
    mode = ("round" if quantize else "none") if isinstance(quantize, bool) else quantize
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"eval.quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    return mode


def quantize_levels(x: jax.Array, data_range: float = 1.0, mode: str = "round") -> jax.Array:
    """Clip to [0, data_range] and map to one of 256 uint8 levels, rounding or truncating (as
    float)."""
    x = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, data_range)
    levels = x * (255.0 / data_range)
    return (jnp.floor(levels) if mode == "truncate" else jnp.round(levels)) * (data_range / 255.0)


def rgb_to_y(x: jax.Array, data_range: float = 1.0) -> jax.Array:
    """BT.601 luma of MATLAB `rgb2ycbcr` for images in [0, data_range]: [..., 3] -> [..., 1]."""
    w = jnp.asarray(_Y_WEIGHTS, jnp.float32)
    y = jnp.einsum("...c,c->...", jnp.asarray(x, jnp.float32), w, precision=_HIGHEST)
    return (y + _Y_OFFSET * data_range)[..., None] / 255.0


def _check(a: jax.Array, b: jax.Array, data_range: float, color: str, crop_border: int,
           min_size: int) -> None:
    """Raise a one-line error for inputs or protocol settings the metrics cannot measure."""
    if a.shape != b.shape:
        raise ValueError(f"metric inputs differ in shape: {a.shape} vs {b.shape}")
    if a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"metric inputs must be [..., H, W, 3] RGB images, got shape {a.shape}")
    if color not in COLORS:
        raise ConfigError(f"eval.color must be one of {COLORS}, got {color!r}")
    if crop_border < 0:
        raise ConfigError(f"eval.crop_border must be >= 0, got {crop_border}")
    if isinstance(data_range, (int, float)) and not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    h, w = a.shape[-3] - 2 * crop_border, a.shape[-2] - 2 * crop_border
    if min(h, w) < min_size:
        raise ConfigError(
            f"eval.crop_border={crop_border} leaves {h}x{w} pixels of a "
            f"{a.shape[-3]}x{a.shape[-2]} image; this metric needs at least {min_size}x{min_size}")


def _prepare(a: jax.Array, b: jax.Array, data_range: jax.Array, color: str, crop_border: int,
             quantize: str) -> tuple[jax.Array, jax.Array]:
    """Quantise, convert to Y and crop both images as the protocol says."""
    if quantize != "none":
        a, b = quantize_levels(a, data_range, quantize), quantize_levels(b, data_range, quantize)
    if color == "y":
        a, b = rgb_to_y(a, data_range), rgb_to_y(b, data_range)
    if crop_border:
        c = crop_border
        a, b = a[..., c:-c, c:-c, :], b[..., c:-c, c:-c, :]
    return a, b


def _image_mean(x: jax.Array) -> jax.Array:
    """Mean over [..., H, W, C] in stages (rows first), keeping float32 rounding error small."""
    return jnp.mean(jnp.mean(jnp.mean(x, axis=-2), axis=-2), axis=-1)


@functools.partial(jax.jit, static_argnames=("color", "crop_border", "quantize"))
def _psnr(a: jax.Array, b: jax.Array, data_range: jax.Array, color: str, crop_border: int,
          quantize: str) -> jax.Array:
    """PSNR of checked inputs (one compilation per shape and protocol)."""
    a, b = _prepare(a, b, data_range, color, crop_border, quantize)
    return 10.0 * jnp.log10(data_range ** 2 / _image_mean(jnp.square(a - b)))


def psnr(a: jax.Array, b: jax.Array, *, data_range: float = 1.0, color: str = "rgb",
         crop_border: int = 0, quantize: str | bool = False) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image ([..., H, W, 3] -> [...]); inf when equal."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    _check(a, b, data_range, color, crop_border, min_size=1)
    return _psnr(a, b, jnp.float32(data_range), color, crop_border, quantize_mode(quantize))


@functools.partial(jax.jit, static_argnames=("color", "crop_border", "quantize"))
def _psnr_masked(a: jax.Array, b: jax.Array, mask: jax.Array, data_range: jax.Array, color: str,
                 crop_border: int, quantize: str) -> jax.Array:
    """PSNR over the masked pixels of checked inputs."""
    a, b = _prepare(a, b, data_range, color, crop_border, quantize)
    m = _crop(mask, crop_border)
    sq = jnp.sum(jnp.square(a - b) * m, axis=(-3, -2, -1))
    count = jnp.sum(jnp.broadcast_to(m, a.shape), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(data_range ** 2 * count / sq)


def _crop(x: jax.Array, c: int) -> jax.Array:
    """Remove c pixels from every side of [..., H, W, C]."""
    return x[..., c:x.shape[-3] - c, c:x.shape[-2] - c, :] if c else x


def _check_mask(a: jax.Array, mask: jax.Array) -> jax.Array:
    """The mask as float [..., H, W, 1] matching the images; ValueError otherwise."""
    mask = jnp.asarray(mask, jnp.float32)
    if mask.ndim == a.ndim - 1:
        mask = mask[..., None]
    if mask.shape[:-1] != a.shape[:-1] or mask.shape[-1] != 1:
        raise ValueError(f"metric mask of shape {mask.shape} does not match images {a.shape}")
    return mask


def psnr_masked(a: jax.Array, b: jax.Array, mask: jax.Array, *, data_range: float = 1.0,
                color: str = "rgb", crop_border: int = 0,
                quantize: str | bool = False) -> jax.Array:
    """PSNR over the pixels where mask > 0 ([..., H, W] or [..., H, W, 1]); nan where the mask is
    empty."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    _check(a, b, data_range, color, crop_border, min_size=1)
    m = (_check_mask(a, mask) > 0).astype(jnp.float32)
    return _psnr_masked(a, b, m, jnp.float32(data_range), color, crop_border,
                        quantize_mode(quantize))


def _gaussian_taps() -> np.ndarray:
    """The 11 taps of scipy.ndimage's Gaussian (sigma 1.5, truncate 3.5), normalised to sum 1."""
    x = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return (k / k.sum()).astype(np.float32)


def _window_taps(window: str) -> np.ndarray:
    """1-D taps of an SSIM window: the Gaussian, or scikit-image's default 7-tap uniform filter."""
    if window == "uniform":
        return np.full(_UNIFORM_SIZE, 1.0 / _UNIFORM_SIZE, np.float32)
    return _gaussian_taps()


def _filter_valid(x: jax.Array, window: str = "gaussian") -> jax.Array:
    """Separable window filter of [N, H, W, C] maps, keeping only outputs whose window fits."""
    taps = jnp.asarray(_window_taps(window))
    n = taps.shape[0]

    def along(axis: int, y: jax.Array) -> jax.Array:
        """Valid correlation with the taps along one axis (a loop keeps the compiled graph
        small)."""
        size = y.shape[axis] - n + 1
        out_shape = y.shape[:axis] + (size,) + y.shape[axis + 1:]

        def step(i: jax.Array, acc: jax.Array) -> jax.Array:
            return acc + taps[i] * jax.lax.dynamic_slice_in_dim(y, i, size, axis=axis)

        return jax.lax.fori_loop(0, n, step, jnp.zeros(out_shape, y.dtype))

    return along(2, along(1, x))


@functools.partial(jax.jit, static_argnames=("color", "crop_border", "quantize", "window"))
def _ssim(a: jax.Array, b: jax.Array, data_range: jax.Array, color: str, crop_border: int,
          quantize: str, window: str = "gaussian") -> jax.Array:
    """SSIM of checked inputs (one compilation per shape and protocol)."""
    s, batch_shape = _ssim_map(a, b, data_range, color, crop_border, quantize, window)
    return _image_mean(s).reshape(batch_shape)


@functools.partial(jax.jit, static_argnames=("color", "crop_border", "quantize", "window"))
def _ssim_masked(a: jax.Array, b: jax.Array, mask: jax.Array, data_range: jax.Array, color: str,
                 crop_border: int, quantize: str, window: str) -> jax.Array:
    """Mean SSIM map over the masked window centres (channel mean)."""
    s, batch_shape = _ssim_map(a, b, data_range, color, crop_border, quantize, window)
    m = _crop(_crop(mask, crop_border),
              len(_window_taps(window)) // 2).reshape((-1,) + s.shape[1:3] + (1,))
    weight = jnp.sum(m, axis=(1, 2, 3)) * s.shape[-1]
    return (jnp.sum(s * m, axis=(1, 2, 3)) / weight).reshape(batch_shape)


def _ssim_map(a: jax.Array, b: jax.Array, data_range: jax.Array, color: str, crop_border: int,
              quantize: str, window: str) -> tuple[jax.Array, tuple[int, ...]]:
    """The SSIM map [N, H', W', C] at every window centre that fits, and the batch shape."""
    a, b = _prepare(a, b, data_range, color, crop_border, quantize)
    batch_shape = a.shape[:-3]
    a = a.reshape((-1,) + a.shape[-3:])
    b = b.reshape((-1,) + b.shape[-3:])
    # skimage filters with mode="reflect" and then drops a 5-pixel strip; the kept outputs never
    # touch the padding, so filtering in "valid" mode gives the same map directly.
    ux, uy = _filter_valid(a, window), _filter_valid(b, window)
    # (Co)variances do not change when each image is shifted by a constant; centring each channel
    # on its mean first keeps E[x²] - E[x]² from cancelling catastrophically in float32.
    a = a - jnp.mean(a, axis=(1, 2), keepdims=True)
    b = b - jnp.mean(b, axis=(1, 2), keepdims=True)
    ua, ub, uaa, ubb, uab = jnp.split(
        _filter_valid(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), window), 5, axis=-1)
    n = _UNIFORM_SIZE ** 2  # uniform: scikit-image's sample covariance, NP / (NP − 1)
    cov_norm = n / (n - 1.0) if window == "uniform" else 1.0
    vx = cov_norm * (uaa - ua * ua)
    vy = cov_norm * (ubb - ub * ub)
    vxy = cov_norm * (uab - ua * ub)
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s, batch_shape


def ssim(a: jax.Array, b: jax.Array, *, data_range: float = 1.0, color: str = "rgb",
         crop_border: int = 0, quantize: str | bool = False, window: str = "gaussian") -> jax.Array:
    """Structural similarity (Wang et al. 2004; skimage's Gaussian or default uniform window) per
    image."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    _check_window(window)
    _check(a, b, data_range, color, crop_border, min_size=len(_window_taps(window)))
    return _ssim(a, b, jnp.float32(data_range), color, crop_border, quantize_mode(quantize), window)


def _check_window(window: str) -> None:
    """A one-line ConfigError for an unknown SSIM window."""
    if window not in SSIM_WINDOWS:
        raise ConfigError(f"eval.ssim_window must be one of {SSIM_WINDOWS}, got {window!r}")


def ssim_masked(a: jax.Array, b: jax.Array, mask: jax.Array, *, data_range: float = 1.0,
                color: str = "rgb", crop_border: int = 0, quantize: str | bool = False,
                window: str = "gaussian") -> jax.Array:
    """SSIM map (as `ssim`) averaged over the window centres where mask > 0; nan where none."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    _check_window(window)
    _check(a, b, data_range, color, crop_border, min_size=len(_window_taps(window)))
    m = (_check_mask(a, mask) > 0).astype(jnp.float32)
    return _ssim_masked(a, b, m, jnp.float32(data_range), color, crop_border,
                        quantize_mode(quantize), window)
