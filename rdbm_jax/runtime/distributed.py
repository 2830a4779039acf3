"""Devices: `jax.distributed` start-up, the data-parallel Mesh, and host→device batches."""
from __future__ import annotations

import os
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that name a multi-process run (first match wins).
_ENV_COORDINATOR = ("RDBM_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
_ENV_NUM_PROCESSES = ("RDBM_NUM_PROCESSES", "JAX_NUM_PROCESSES", "SLURM_NTASKS")
_ENV_PROCESS_ID = ("RDBM_PROCESS_ID", "JAX_PROCESS_ID", "SLURM_PROCID")


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               cpu_collectives: str = "gloo") -> bool:
    """Start `jax.distributed` when this is a multi-process run; return whether it was started.

    TPU pods need no arguments (`RDBM_DISTRIBUTED=auto`); GPU/CPU clusters take the coordinator,
    process count and id from the arguments or from RDBM_*/JAX_*/SLURM_* environment variables.
    """
    coordinator = coordinator or _env(_ENV_COORDINATOR) or ""
    num_processes = num_processes or int(_env(_ENV_NUM_PROCESSES) or 0)
    process_id = process_id if process_id >= 0 else int(_env(_ENV_PROCESS_ID) or -1)
    auto = os.environ.get("RDBM_DISTRIBUTED", "") == "auto"
    if not auto and (not coordinator or num_processes <= 1):
        return False
    on_cpu = os.environ.get("JAX_PLATFORMS", "") == "cpu"
    if jax.config.jax_platforms in (None, "", "cpu") or on_cpu:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return True


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis `data`."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that puts a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Sharding that splits axis `leading` (the batch axis) over the `data` axis."""
    return NamedSharding(mesh, P(*([None] * leading), DATA_AXIS))


def global_batch(mesh: Mesh, local: dict[str, np.ndarray],
                 leading: int = 0) -> dict[str, jax.Array]:
    """Global arrays from this process's slice of the batch
    (`jax.make_array_from_process_local_data`)."""
    sharding = batch_sharding(mesh, leading)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local.items()
    }


def is_main_process() -> bool:
    """Only process 0 writes logs, metrics and images."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (a host collective when there are several processes)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array([bool(flag)]))))


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-process, sharded or replicated) array, on every
    process."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
