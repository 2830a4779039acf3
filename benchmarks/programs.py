"""The programs the benchmarks time: the real `rdbm_jax.program` of a config file with overrides."""
from __future__ import annotations

import functools
import os
from typing import Any

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/default.py"


@functools.cache
def default_config() -> Any:
    """configs/default.py, loaded once (the twin's schedule, objective, loss and Adam match it; read
    only)."""
    return load_config(DEFAULT_CONFIG)


def load_config(spec: str) -> Any:
    """configs/NAME.py[:ARG] (a path relative to the repo or absolute) → its ConfigDict."""
    from rdbm_jax import config_files

    return config_files.load(spec, root=REPO)


def parse_overrides(text: str) -> dict[str, str]:
    """"model.attention_impl=cudnn,model.remat=true" → {dotted key: value text}."""
    out = {}
    for item in (v.strip() for v in text.split(",")):
        key, eq, value = item.partition("=")
        if item and (not eq or "." not in key):
            raise ValueError(f"override {item!r}: expected section.key=value")
        if item:
            out[key.strip()] = value.strip()
    return out


def _cast(text: str, like: Any) -> Any:
    """The override text as the type of the value it replaces."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a boolean")
        return text.lower() in ("true", "1")
    return type(like)(text) if isinstance(like, (int, float)) else text


def program_from_config(config: str, size: str, dtype: str, batch: int, k: int, mesh: Any,
                 overrides: dict[str, str] | None = None) -> tuple[Any, jax.Array, jax.Array]:
    """(Program, init key, step key) of `config` with model.size/dtype, batch, K and `overrides`
    set."""
    from rdbm_jax import program
    from rdbm_jax.config import get

    cfg = load_config(config)
    # The PyTorch twin implements the paper's network and objective (μ-only condition, x0 target):
    # the benchmark runs ours on the same work whatever the config file chose (demo: a mask model).
    cfg.model.condition = "mu"
    cfg.bridge.parameterization = "x0"
    cfg.model.size = size
    cfg.model.dtype = dtype
    cfg.train.batch_size = batch
    cfg.train.steps_per_dispatch = k
    for key, value in (overrides or {}).items():
        section, name = key.rsplit(".", 1)
        try:
            node = get(cfg, section)
            node[name] = _cast(value, node[name])
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"override {key}={value}: {e}") from None
    return program.program(cfg, mesh), program.init_key(cfg.seed), jax.random.PRNGKey(cfg.seed + 1)
