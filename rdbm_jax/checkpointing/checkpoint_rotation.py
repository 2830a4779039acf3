"""Reading the newest checkpoint of a workdir that a training run may be rotating
(train.max_to_keep): a step deleted between listing and reading is replaced by the newest that
exists now, never reported as missing."""
from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

from rdbm_jax.checkpointing import checkpoints
from rdbm_jax.errors import RDBMError

log = logging.getLogger("rdbm_jax")

T = TypeVar("T")
# Reads retried after the step being read vanished: a run that saves every step deletes one step
# per save, so each retry starts on a step at least as new as the one that vanished; the bound
# only keeps a pathological workdir from looping.
RETRIES = 5


def read_newest(workdir: str, read: Callable[[str, int], T]) -> T:
    """read(checkpoints directory, step) of the newest complete checkpoint of `workdir`; when that
    step is deleted (or no longer complete) while it is read, read the newest complete one again
    (at most RETRIES times). Any other failure of `read` is raised as it is."""
    for attempt in range(RETRIES + 1):
        directory, step = checkpoints.resolve(workdir)
        try:
            return read(directory, step)
        except RDBMError:
            if attempt == RETRIES or checkpoints.is_complete(os.path.join(directory, str(step))):
                raise
        log.info("checkpoint step %d was removed while it was read (a training run rotating its "
                 "checkpoints); reading the newest one again", step)
    raise AssertionError("unreachable")  # the loop returns or raises
