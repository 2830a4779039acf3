"""Data: image sources, synthetic degradations, grain training iterator and evaluation sources."""
from __future__ import annotations

from rdbm_jax.data.image_io import (IMAGE_EXTENSIONS, list_images, load_image, probe_size,
                                    save_image, set_max_pixels, shown, to_uint8)
from rdbm_jax.data.masks import load_mask
from rdbm_jax.data.pipeline import EvalSource, build_eval_sources, build_train_iterator
from rdbm_jax.data.spec import named_sources, source_spec, task_names, task_spec

__all__ = [
    "IMAGE_EXTENSIONS", "EvalSource", "build_eval_sources", "build_train_iterator", "list_images",
    "load_image", "load_mask", "named_sources", "probe_size", "save_image", "set_max_pixels",
    "shown", "source_spec", "task_names", "task_spec", "to_uint8",
]
