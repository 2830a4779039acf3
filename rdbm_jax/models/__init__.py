"""Denoising networks (Flax Linen, NHWC); they know nothing of bridges."""
from __future__ import annotations

from rdbm_jax.models.unet import (SIZES, SizePreset, UNet, count_macs, count_params, create_model,
                                  downsample_factor)

__all__ = ["SIZES", "SizePreset", "UNet", "count_macs", "count_params", "create_model",
           "downsample_factor"]
