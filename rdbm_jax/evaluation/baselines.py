"""Classical restoration baselines, scored beside the model on exactly the same inputs.

One well-kept library method per synthetic degradation, given the degradation's known parameters
(never the clean image):

- inpaint: `skimage.restoration.inpaint_biharmonic` with the true mask (mask-conditioned models)
  or the mask inferred from the pure-fill pixels (mu-only models: the same information the model
  has).
- noise: `skimage.restoration.denoise_nl_means` with the known sigma (h = 0.8 sigma, fast mode:
  scikit-image's documented setting).
- gaussian_blur, motion_blur: `skimage.restoration.richardson_lucy` with the known kernel, 30
  iterations.
- lowlight: CLAHE, `skimage.exposure.equalize_adapthist` (blind: inverting the known gamma would be
  cheating).
- haze, rain, jpeg, real pairs: none fits; the input itself is the baseline, and reports say so.
"""
from __future__ import annotations

import numpy as np

from rdbm_jax.conditioning import infer_mask

RL_ITERATIONS = 30
NLM_H_FACTOR = 0.8  # scikit-image's example: h = 0.8 σ with fast_mode=True


def describe(degradation: str, true_mask: bool) -> str:
    """The baseline's name as reports print it."""
    if degradation == "inpaint":
        which = "true mask" if true_mask else "mask inferred from fill pixels"
        return f"biharmonic ({which})"
    return {"noise": "nl_means (known sigma)",
            "gaussian_blur": f"richardson_lucy (known kernel, {RL_ITERATIONS} it.)",
            "motion_blur": f"richardson_lucy (known kernel, {RL_ITERATIONS} it.)",
            "lowlight": "clahe (blind)"}.get(degradation, "input (no classical method fits)")


def restore(mu01: np.ndarray, degradation: str, *, mask: np.ndarray | None = None,
            noise_sigma: float = 0.0, kernel: np.ndarray | None = None) -> np.ndarray:
    """The baseline restoration of one degraded image μ [H, W, 3] in [0, 1] → [H, W, 3] in [0, 1].

    `mask` (bool/float [H, W] or [H, W, 1], 1 = hole) is the inpainting mask the baseline may use;
    None infers it from the pure-fill pixels. `noise_sigma` / `kernel` are the known parameters.
    """
    from skimage import exposure, restoration  # heavy imports, only when a baseline is computed

    mu01 = np.clip(np.asarray(mu01, np.float64), 0.0, 1.0)
    if degradation == "inpaint":
        if mask is None:
            mask = infer_mask(mu01 * 2.0 - 1.0)
        hole = np.asarray(mask).reshape(mu01.shape[:2]) > 0.5
        if not hole.any():
            return mu01.astype(np.float32)
        if hole.all():
            return np.full_like(mu01, 0.5, dtype=np.float32)
        out = restoration.inpaint_biharmonic(mu01, hole, channel_axis=-1)
    elif degradation == "noise":
        out = restoration.denoise_nl_means(mu01, h=NLM_H_FACTOR * noise_sigma, sigma=noise_sigma,
                                           fast_mode=True, patch_size=5, patch_distance=6,
                                           channel_axis=-1)
    elif degradation in ("gaussian_blur", "motion_blur"):
        if kernel is None:
            raise ValueError(f"{degradation} baseline needs the known kernel")
        kernel = np.asarray(kernel, np.float64)
        pad = max(kernel.shape)  # reflect-pad as the blur did: no dark frame from zero padding
        padded = np.pad(mu01, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        out = np.stack([
            restoration.richardson_lucy(padded[..., c], kernel, num_iter=RL_ITERATIONS, clip=True)
            for c in range(mu01.shape[-1])
        ], axis=-1)[pad:-pad, pad:-pad]
    elif degradation == "lowlight":
        out = exposure.equalize_adapthist(mu01)
    else:
        out = mu01
    return np.clip(out, 0.0, 1.0).astype(np.float32)
