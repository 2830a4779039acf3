"""Orbax checkpoints: train state + data-iterator state + config JSON, async, in `workdir/checkpoints`."""
from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

from rdbm_jax.errors import ConfigError


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of a run live."""
    return os.path.join(os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints")


class Checkpointer:
    """A thin owner of one `ocp.CheckpointManager` (asynchronous saves; `wait()` before exit)."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any | None, config: dict) -> None:
        """Save asynchronously; the arrays are copied off the devices before this returns."""
        import grain
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """Restore the train state (and the data iterator in place) saved at `step`."""
        import grain
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items)).state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def resolve(workdir: str, explicit: str = "") -> tuple[str, int]:
    """(checkpoints directory, step) of an explicit step folder or of the latest in `workdir`."""
    if explicit:
        path = os.path.abspath(explicit.rstrip("/"))
        parent, name = os.path.dirname(path), os.path.basename(path)
        if not name.isdigit() or not os.path.isdir(path):
            raise ConfigError(f"sample.checkpoint={explicit!r} is not a checkpoint step folder "
                              "(expected …/checkpoints/<step>)")
        return parent, int(name)
    directory = checkpoint_dir(workdir)
    steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
    if not steps:
        raise ConfigError(f"no checkpoint found in {directory} (train first, or set sample.checkpoint)")
    return directory, max(steps)


def load_for_inference(directory: str, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(train state, saved config dict) of one checkpoint, without the data-iterator state."""
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)) as mngr:
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore()))
    return restored.state, dict(restored.config)


def read_config(directory: str, step: int) -> dict:
    """The config JSON saved beside a checkpoint."""
    path = os.path.join(directory, str(step), "config", "metadata")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)) as mngr:
        return dict(mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)

