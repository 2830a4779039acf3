"""Denoising networks (Flax Linen, NHWC); they know nothing of bridges."""
from __future__ import annotations

from rdbm_jax.models.unet import (ATTENTION_IMPLS, DTYPES, PARAM_DTYPES, SIZES, SizePreset, UNet, count_macs,
                                  compute_params, count_params, create_model, downsample_factor)

__all__ = ["ATTENTION_IMPLS", "DTYPES", "PARAM_DTYPES", "SIZES", "SizePreset", "UNet", "count_macs",
           "compute_params", "count_params", "create_model", "downsample_factor"]
