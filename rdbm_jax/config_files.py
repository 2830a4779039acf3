"""Loading config files by path: `configs/<task>.py[:arg]`, and configs building on their
siblings."""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from rdbm_jax.errors import ConfigError


def sibling(config_file: str, name: str = "default") -> Any:
    """Import `<name>.py` from the folder of `config_file` (task configs build on configs/default.py
    and take their helpers from configs/common.py)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"rdbm_jax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(spec: str, root: str = "") -> Any:
    """The ConfigDict of "path/to/config.py[:arg]" (a relative path is taken from `root` when
    given)."""
    path, _, arg = spec.partition(":")
    if root and not os.path.isabs(path):
        path = os.path.join(root, path)
    if not os.path.isfile(path):
        raise ConfigError(f"{spec}: no such config file ({os.path.abspath(path)})")
    name = os.path.splitext(os.path.basename(path))[0]
    return sibling(path, name).get_config(arg or None)
