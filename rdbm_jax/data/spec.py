"""The config schema of one data source (`data.tasks.<name>.train|eval`)."""
from __future__ import annotations

import ml_collections

from rdbm_jax.errors import ConfigError

SOURCE_KINDS = ("builtin", "paired", "side_by_side", "clean")
BUILTIN_SPLITS = ("train", "val", "tune_train", "tune")  # rdbm_jax/data/builtin.py
EVAL_FITS = ("resize", "crop")
FLIPS = ("none", "horizontal", "both")  # data.flip: training flips (both = horizontal and vertical)
DEGRADATIONS = ("none", "inpaint", "noise", "gaussian_blur", "motion_blur", "lowlight", "haze",
                "rain", "jpeg")


def source_spec(**overrides) -> ml_collections.ConfigDict:
    """A data-source config with every key present (so a locked config accepts overrides)."""
    spec = ml_collections.ConfigDict(dict(
        kind="builtin",          # builtin | paired | side_by_side | clean
        split="train",           # builtin only: train | val | tune_train | tune (by image: rdbm_jax/data/builtin.py)
        lq_dir="",               # paired: degraded images (μ)
        gt_dir="",               # paired: clean images (x0), matched by file stem
        lq_strip="",             # paired: text removed from LQ file names before matching (e.g. "rain-")
        gt_strip="",             # paired: ... from GT file names (e.g. "norain-" for Rain100H)
        dir="",                  # side_by_side: A|B files; clean: clean images
        condition="left",        # side_by_side: which half is the condition μ (left | right)
        degradation="none",      # builtin/clean: synthetic degradation applied to the clean image
        mask_dir="",             # inpaint: optional folder of masks (white = hole) instead of generated
        mask_min_ratio=0.1,      # inpaint: hole fraction range of generated masks
        mask_max_ratio=0.4,
        noise_sigma=0.1,         # noise: std in [0, 1] units
        blur_sigma=2.0,          # gaussian_blur: kernel std in pixels
        motion_length=15,        # motion_blur: kernel length in pixels
        lowlight_gamma=2.0,      # lowlight: x ** gamma * scale
        lowlight_scale=0.35,
        haze_beta=1.2,           # haze: scattering coefficient; transmission exp(-beta * depth)
        haze_airlight=0.9,
        rain_density=0.02,       # rain: streak seeds per pixel
        jpeg_quality=15,         # jpeg: PIL quality
        max_images=0,            # 0 = all; else the first N (sorted) images
        seed=0,                  # eval: image i's synthetic degradation / mask is drawn from (seed, i)
        eval_size=0,             # eval: long side at most N px (0 = full resolution); keeps CPU eval cheap
        eval_fit="resize",       # eval_size by: resize (whole image, before degrading) | crop (center)
        check_headers=True,      # read every file header when the source is built (fail fast)
    ))
    unknown = sorted(set(overrides) - set(spec.keys()))
    if unknown:
        raise ConfigError(f"unknown data-source key(s) {unknown}; known: {sorted(spec.keys())}")
    spec.update(overrides)
    return spec


def task_spec(train: ml_collections.ConfigDict, eval: ml_collections.ConfigDict) -> ml_collections.ConfigDict:  # noqa: A002
    """One task = a training source and an evaluation source."""
    return ml_collections.ConfigDict(dict(train=train, eval=eval))
