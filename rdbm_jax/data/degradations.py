"""Synthetic degradations of a clean [0, 1] RGB image (the condition μ for clean/builtin
sources)."""
from __future__ import annotations

import io
import math

import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage

from rdbm_jax.data import masks as masks_lib
from rdbm_jax.data.image_io import list_images
from rdbm_jax.errors import ConfigError


def add_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise of std `sigma` (in [0, 1] units), clipped."""
    return np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur (std in pixels, kernel radius 4σ, reflect borders)."""
    return np.clip(ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect"),
                   0.0, 1.0).astype(np.float32)


def line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised 2-D kernel of a straight line of `length` px at `angle` rad (bilinear splat)."""
    size = int(math.ceil(length)) | 1
    k = np.zeros((size + 2, size + 2), np.float64)
    c = (size + 1) / 2
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(4 * length))):
        px, py = c + t * math.cos(angle), c + t * math.sin(angle)
        x0, y0 = int(math.floor(px)), int(math.floor(py))
        fx, fy = px - x0, py - y0
        k[y0, x0] += (1 - fx) * (1 - fy)
        k[y0, x0 + 1] += fx * (1 - fy)
        k[y0 + 1, x0] += (1 - fx) * fy
        k[y0 + 1, x0 + 1] += fx * fy
    return (k / k.sum()).astype(np.float32)


def motion_blur(x: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur of `length` px in a random direction."""
    return convolve_kernel(x, motion_kernel(length, rng))


def motion_kernel(length: float, rng: np.random.Generator) -> np.ndarray:
    """The kernel `motion_blur` applies for this rng state (a line in a random direction)."""
    return line_kernel(length, rng.uniform(0.0, math.pi))


def convolve_kernel(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Convolve each channel with the 2-D kernel k (reflect borders), clipped to [0, 1]."""
    out = np.stack([ndimage.convolve(x[..., c], k, mode="reflect") for c in range(x.shape[-1])], -1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The 2-D kernel of `gaussian_blur` (scipy's Gaussian, radius 4σ), normalised."""
    impulse = np.zeros((2 * int(4 * sigma + 0.5) + 1,) * 2, np.float64)
    impulse[impulse.shape[0] // 2, impulse.shape[1] // 2] = 1.0
    return ndimage.gaussian_filter(impulse, sigma).astype(np.float32)


def lowlight(x: np.ndarray, gamma: float, scale: float) -> np.ndarray:
    """Low light: x ** gamma * scale."""
    return (np.power(np.clip(x, 0.0, 1.0), gamma) * scale).astype(np.float32)


def _smooth_field(h: int, w: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1]: coarse uniform noise upsampled bicubically."""
    coarse = rng.uniform(0.0, 1.0, (cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC))
    return np.clip(field, 0.0, 1.0)


def haze(x: np.ndarray, beta: float, airlight: float, rng: np.random.Generator) -> np.ndarray:
    """Atmospheric scattering I = J t + A (1 − t), t = exp(−β d), with a depth proxy d in [0, 1]."""
    # d = 0.7 · (top-to-bottom ramp: the top of the frame is far) + 0.3 · smooth random field.
    h, w = x.shape[:2]
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    depth = 0.7 * ramp + 0.3 * _smooth_field(h, w, rng)
    t = np.exp(-beta * depth)[..., None]
    return np.clip(x * t + airlight * (1.0 - t), 0.0, 1.0).astype(np.float32)


def rain(x: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Rain streaks: random seeds smeared along a near-vertical line, screen-blended onto x."""
    h, w = x.shape[:2]
    length = max(3.0, rng.uniform(0.04, 0.12) * min(h, w))
    angle = math.pi / 2 + rng.uniform(-0.35, 0.35)
    seeds = (rng.uniform(size=(h, w)) < density) * rng.uniform(0.2, 0.6, (h, w))
    streaks = ndimage.convolve(seeds.astype(np.float32), line_kernel(length, angle), mode="wrap")
    streaks = np.clip(streaks * length, 0.0, 1.0)[..., None]  # semi-transparent streaks
    return (1.0 - (1.0 - x) * (1.0 - streaks)).astype(np.float32)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """JPEG compression artefacts at PIL `quality`."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG",
                                                                            quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), np.float32) / 255.0


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


class Degrader:
    """The synthetic degradation of one source config; deterministic given the rng it is handed."""

    def __init__(self, spec: ml_collections.ConfigDict, key: str):
        self.kind = spec.degradation
        self.spec = spec
        self.key = key
        s = spec
        if self.kind == "inpaint":
            _check(0.0 <= s.mask_min_ratio <= s.mask_max_ratio <= 1.0, f"{key}.mask_min_ratio",
                   f"need 0 <= mask_min_ratio <= mask_max_ratio <= 1, got {s.mask_min_ratio}, "
                   f"{s.mask_max_ratio}")
        checks = {
            "noise": (s.noise_sigma > 0, "noise_sigma", "must be > 0"),
            "gaussian_blur": (s.blur_sigma > 0, "blur_sigma", "must be > 0"),
            "motion_blur": (s.motion_length >= 2, "motion_length", "must be >= 2"),
            "lowlight": (s.lowlight_gamma > 0 and 0 < s.lowlight_scale <= 1, "lowlight_gamma",
                         "need lowlight_gamma > 0 and 0 < lowlight_scale <= 1"),
            "haze": (s.haze_beta > 0 and 0 <= s.haze_airlight <= 1, "haze_beta",
                     "need haze_beta > 0 and 0 <= haze_airlight <= 1"),
            "rain": (0 < s.rain_density <= 1, "rain_density", "must be in (0, 1]"),
            "jpeg": (1 <= s.jpeg_quality <= 100, "jpeg_quality", "must be in 1..100"),
        }
        if self.kind in checks:
            ok, sub, msg = checks[self.kind]
            _check(bool(ok), f"{key}.{sub}", f"{msg} (got {s[sub]})")
        self.mask_files: list[str] = []
        if self.kind == "inpaint" and s.mask_dir:
            self.mask_files = list_images(s.mask_dir, f"{key}.mask_dir")

    def degrade(self, x: np.ndarray, rng: np.random.Generator,
                index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(μ, mask): mask is bool [H, W], true where μ may differ from x (the holes of inpainting,
        every pixel for the other degradations)."""
        if self.kind == "inpaint":
            h, w = x.shape[:2]
            if self.mask_files:
                i = int(rng.integers(len(self.mask_files))) if index is None else index
                path = self.mask_files[i % len(self.mask_files)]
                mask = masks_lib.load_mask(path, h, w, f"{self.key}.mask_dir")
            else:
                mask = masks_lib.free_form_mask(h, w, rng, self.spec.mask_min_ratio,
                                                self.spec.mask_max_ratio)
            return masks_lib.apply_mask(x, mask), mask
        return self._degrade_all(x, rng), np.ones(x.shape[:2], bool)

    def kernel(self, rng: np.random.Generator) -> np.ndarray | None:
        """The blur kernel `degrade` applies given an rng in the same state (None: not a blur)."""
        if self.kind == "gaussian_blur":
            return gaussian_kernel(self.spec.blur_sigma)
        if self.kind == "motion_blur":
            return motion_kernel(self.spec.motion_length, rng)
        return None

    def _degrade_all(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """μ of a degradation that touches every pixel."""
        s = self.spec
        k = self.kind
        if k == "noise":
            return add_noise(x, s.noise_sigma, rng)
        if k == "gaussian_blur":
            return gaussian_blur(x, s.blur_sigma)
        if k == "motion_blur":
            return motion_blur(x, s.motion_length, rng)
        if k == "lowlight":
            return lowlight(x, s.lowlight_gamma, s.lowlight_scale)
        if k == "haze":
            return haze(x, s.haze_beta, s.haze_airlight, rng)
        if k == "rain":
            return rain(x, s.rain_density, rng)
        if k == "jpeg":
            return jpeg(x, s.jpeg_quality)
        raise ConfigError(f"{self.key}.degradation: unknown degradation {k!r}")
