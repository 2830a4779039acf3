"""Loading a checkpoint for inference: its compatibility with a config, then its parameters."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, NamedTuple

from jax.sharding import Mesh
from ml_collections import ConfigDict

from rdbm_jax import models, sde
from rdbm_jax.checkpointing import checkpoint_rotation, checkpoints
from rdbm_jax.errors import ConfigError
from rdbm_jax.program import Params, abstract_params, network, network_spec, use_compilation_cache
from rdbm_jax.runtime import paths
from rdbm_jax.schedules import Schedule

log = logging.getLogger("rdbm_jax")

# Keys of `network_spec` that may differ from the checkpoint's: they change how the same weights
# are computed (compute dtype, attention kernel, rematerialisation, dropout, off at inference), not
# which weights there are or what they mean. Every other key of `network_spec` must match
# (`must_match`).
# model.param_dtype is one of them: checkpoints always hold float32 master weights, and the key only
# picks the rounded copy the network computes with (`models.compute_params`).
INFERENCE_ONLY = ("model.dtype", "model.param_dtype", "model.attention_impl", "model.remat",
                  "model.dropout")


def must_match(cfg: ConfigDict) -> tuple[str, ...]:
    """The dotted keys whose value must equal a checkpoint's: every key that builds the network or
    the bridge (`network_spec`), bar INFERENCE_ONLY; bridge.sigma_data only for a parameterisation
    whose maps read ρ (precond: ρ scales the network's input and output there and is read by
    nothing else the checkpoint holds)."""
    spec = network_spec(cfg)
    keys = (f"{section}.{name}" for section in spec for name in spec[section])
    reads_rho = sde.PARAMETERIZATIONS[cfg.bridge.parameterization].needs_rho
    return tuple(k for k in keys
                 if k not in INFERENCE_ONLY and (reads_rho or k != "bridge.sigma_data"))


def check_compatible(cfg: ConfigDict, saved: dict, where: str) -> None:
    """Refuse (ConfigError) a config whose network or bridge differs from the checkpoint's (a key
    the checkpoint does not name, from an older version, is not compared)."""
    for key in must_match(cfg):
        section, name = key.split(".")
        theirs = saved.get(section, {}).get(name)
        ours = json.loads(json.dumps(cfg[section][name]))  # as saved: tuples are lists in JSON
        if theirs is not None and theirs != ours:
            what = "bridge" if section == "bridge" else "network"
            raise ConfigError(f"{key}={ours!r} but the checkpoint {where} was trained with "
                              f"{theirs!r}; restoring with a different {what} is refused "
                              f"(set --config.{key}={theirs!r})")


class Trained(NamedTuple):
    """A checkpoint ready for inference: network, schedule, parameters (EMA by default), step."""

    model: models.UNet
    schedule: Schedule
    params: Params
    step: int


def load_trained(cfg: ConfigDict, workdir: str, mesh: Mesh, checkpoint: str = "",
                 saved_config: dict | None = None,
                 check_saved: Callable[[dict, str], Any] | None = None) -> Trained:
    """The parameters (EMA unless sample.use_ema=False) of a checkpoint, and nothing else of its
    state.

    `saved_config`: the checkpoint's config when the caller has already read it (not read twice).
    `check_saved(saved, file)`: refuses a damaged saved config before it is compared with `cfg`
    (`config.check_saved`; passed in: the program layer does not import config.py), so that a hint
    to set a key to the checkpoint's value is only given for a valid value.
    """
    paths.check_backend(workdir, "--workdir")  # gs:// without gcsfs: one line, not a traceback
    paths.check_backend(checkpoint, "sample.checkpoint")
    use_compilation_cache(cfg.train.compilation_cache_dir)
    if not checkpoint:  # the newest, which a running training may delete while it is read
        return checkpoint_rotation.read_newest(
            workdir,
            lambda directory, step: _load(cfg, directory, step, mesh, saved_config, check_saved))
    return _load(cfg, *checkpoints.resolve(workdir, checkpoint), mesh, saved_config, check_saved)


def _load(cfg: ConfigDict, directory: str, step: int, mesh: Mesh, saved_config: dict | None,
          check_saved: Callable[[dict, str], Any] | None) -> Trained:
    """`load_trained` of one checkpoint step."""
    where = os.path.join(directory, str(step))
    saved = checkpoints.read_config(directory, step) if saved_config is None else saved_config
    if check_saved is not None:
        check_saved(saved, os.path.join(where, "config"))
    check_compatible(cfg, saved, where)
    which = "ema_params" if cfg.sample.use_ema else "params"
    params = checkpoints.load_params(directory, step, abstract_params(cfg, mesh), which)
    log.info("loaded %s parameters of step %d from %s", "EMA" if cfg.sample.use_ema else "raw",
             step, where)
    model, schedule = network(cfg)
    return Trained(model, schedule, params, step)
