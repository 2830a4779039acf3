"""Denoising networks (Flax Linen, NHWC); they know nothing of bridges.

Names are imported on first use (PEP 562), so `rdbm_jax.models.sizes` — what config files read —
loads without jax or flax.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below resolve to, for type checkers and the architecture test
    from rdbm_jax.models.sizes import SIZES, SizePreset
    from rdbm_jax.models.unet import (ATTENTION_IMPLS, DTYPES, PARAM_DTYPES, UNet, compute_params,
                                      count_macs, count_params, create_model, downsample_factor)

_HOMES = {
    "SIZES": "rdbm_jax.models.sizes", "SizePreset": "rdbm_jax.models.sizes",
    **{name: "rdbm_jax.models.unet" for name in (
        "ATTENTION_IMPLS", "DTYPES", "PARAM_DTYPES", "UNet", "compute_params", "count_macs",
        "count_params", "create_model", "downsample_factor")},
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'rdbm_jax.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
