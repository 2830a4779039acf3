"""rdbm_jax: Residual Diffusion Bridge Models for image restoration in JAX/Flax.

The public API (imported on first use, so `import rdbm_jax` stays light): `load(workdir, step=None,
use_ema=True)` → `TrainedModel` with `.restore(images, num_steps=…, eta=…)`; `load_exported(path)`
runs a `--mode=export` artifact; `sde` and `schedules` are the bridge math, usable with any
denoiser.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["TrainedModel", "load", "load_exported", "schedules", "sde"]

_ATTRIBUTES = {"load": ("rdbm_jax.api", "load"), "TrainedModel": ("rdbm_jax.api", "TrainedModel"),
               "load_exported": ("rdbm_jax.export_loader", "load")}


def __getattr__(name: str) -> Any:
    if name in _ATTRIBUTES:
        module, attr = _ATTRIBUTES[name]
        return getattr(importlib.import_module(module), attr)
    if name in ("sde", "schedules"):
        return importlib.import_module(f"rdbm_jax.{name}")
    raise AttributeError(f"module 'rdbm_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
