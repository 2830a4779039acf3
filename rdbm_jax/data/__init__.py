"""Data: image sources, synthetic degradations, grain training iterator and evaluation sources.

Names are imported on first use (PEP 562), so `rdbm_jax.data.spec` — what config files read —
loads without jax or grain.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below resolve to, for type checkers and the architecture test
    from rdbm_jax.data.batching import same_size_batches
    from rdbm_jax.data.image_io import (IMAGE_EXTENSIONS, list_images, load_image, probe_size,
                                        save_image, set_max_pixels, shown, to_uint8)
    from rdbm_jax.data.masks import load_mask
    from rdbm_jax.data.pipeline import EvalSource, build_eval_sources, build_train_iterator

_HOMES = {
    "same_size_batches": "rdbm_jax.data.batching",
    **{name: "rdbm_jax.data.image_io" for name in (
        "IMAGE_EXTENSIONS", "list_images", "load_image", "probe_size", "save_image",
        "set_max_pixels", "shown", "to_uint8")},
    "load_mask": "rdbm_jax.data.masks",
    **{name: "rdbm_jax.data.pipeline" for name in (
        "EvalSource", "build_eval_sources", "build_train_iterator")},
}  # the config schema (source_spec, task_spec, …) is read from rdbm_jax.data.spec itself
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'rdbm_jax.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
