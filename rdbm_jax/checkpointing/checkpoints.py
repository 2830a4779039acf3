"""Orbax checkpoints: train state + data-iterator state + config JSON in `workdir/checkpoints`.

Only complete step folders count as checkpoints (`is_complete`); a save is waited for and checked
before training goes on, so a kill loses at most the steps since the last "checkpoint … saved" line.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from rdbm_jax.checkpointing import checkpoint_integrity as integrity
from rdbm_jax.checkpointing import orbax_workarounds as workarounds
from rdbm_jax.runtime import distributed, paths
from rdbm_jax.errors import ConfigError, TrainingError

log = logging.getLogger("rdbm_jax")

# Files every finished step folder holds (orbax writes `_CHECKPOINT_METADATA` when it finalizes).
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt",
                  "config/metadata")
TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's suffix for a step folder still being written
# train moves unreadable step folders here (never deletes them)
SET_ASIDE = "unreadable_checkpoints"


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of a run live."""
    return os.path.join(
        os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints")


def missing_files(step_dir: str) -> list[str]:
    """The REQUIRED_FILES absent from a step folder (all of them when the folder does not exist)."""
    path = epath.Path(step_dir)
    return [name for name in REQUIRED_FILES if not (path / name).exists()]


def is_complete(step_dir: str) -> bool:
    """Whether a step folder holds a finished checkpoint (empty or partial folders never do)."""
    return not missing_files(step_dir)


def step_folders(directory: str) -> list[int]:
    """Steps of the digit-named folders in `directory`, newest first, complete or not."""
    path = epath.Path(directory)
    try:
        if not path.exists():
            return []
        return sorted((int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir()),
                      reverse=True)
    except OSError as e:
        raise TrainingError(
            f"cannot read the checkpoints folder {directory}: {e.strerror or e}") from None


def complete_steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in `directory`, newest first."""
    return [s for s in step_folders(directory) if is_complete(os.path.join(directory, str(s)))]


def _sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing when there is one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Owns one `ocp.CheckpointManager`: saves (waited for and verified) and fallback restores."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        self.workdir = workdir
        self.directory = checkpoint_dir(workdir)
        self.max_to_keep = max_to_keep
        self._quiet: workarounds.QuietOrbaxErrors | None = None
        self._manager: workarounds.Manager | None = None

    @property
    def manager(self) -> workarounds.Manager:
        """The orbax manager, created on first use (after `restore_latest` set bad folders
        aside)."""
        if self._manager is None:
            # cleanup_tmp_directories: half-written `<step>.orbax-checkpoint-tmp-*` folders of a
            # killed run are removed at start (the workdir lock makes sure no other run is writing
            # them).
            self._manager = workarounds.Manager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True,
                                                     enable_async_checkpointing=True,
                                                     cleanup_tmp_directories=True))
        return self._manager

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (None when there is none)."""
        steps = complete_steps(self.directory)
        return steps[0] if steps else None

    def save(self, step: int, state: Any, data_iterator: Any | None, config: dict) -> None:
        """Save and wait until the checkpoint is final; a failure raises a one-line TrainingError.

        The failed step's half-written folders are removed; earlier checkpoints are untouched.
        """
        import grain
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        final = os.path.join(self.directory, str(step))
        existed = epath.Path(final).exists()
        quiet = workarounds.QuietOrbaxErrors()
        absl_logger = logging.getLogger("absl")
        absl_logger.addFilter(quiet)
        threads = set(threading.enumerate())
        start = time.time()
        self.manager.save_error = None
        error: BaseException | None = None
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 — OSError, ValueError from tensorstore, …
            error = e
        error = error or self.manager.save_error
        if error is None and quiet.records:
            record = quiet.records[0]
            error = record.exc_info[1] if record.exc_info else RuntimeError(record.getMessage())
        if error is None and jax.process_index() == 0 and not is_complete(final):
            error = RuntimeError(f"missing {', '.join(missing_files(final))} after the save")
        error = error or integrity.record(final, state)
        # every process stops when a save failed on any
        if distributed.any_process(error is not None):
            error = error or RuntimeError("the save failed on another process")
        if error is None:
            absl_logger.removeFilter(quiet)
        else:  # the filter stays until wait(): orbax threads may still log the same failure
            self._quiet = quiet
            reason = workarounds.reason(error)
            error = self.manager.save_error = None
            quiet.records.clear()
            # orbax's writes can still run when the save raised, or when its background thread
            # reported the first failure: wait for them before collecting and removing their files
            workarounds.join_new_threads(threads, timeout=10.0)
            workarounds.collect_leftovers()
            if jax.process_index() == 0:
                self._remove_partial(step, keep_final=existed)
            raise TrainingError(
                f"saving checkpoint step {step} to {final} failed: {reason}; "
                f"stopped (last good checkpoint: step {self.latest_step() or 'none'})")
        log.info("checkpoint step %d saved in %.1f s (%s)", step, time.time() - start, final)

    def _remove_partial(self, step: int, keep_final: bool) -> None:
        """Remove what a failed save of `step` left: its temporary folders (and its final folder
        when that did not exist before and is incomplete)."""
        directory = epath.Path(self.directory)
        if not directory.exists():
            return
        for p in directory.iterdir():
            partial = p.name.startswith(f"{step}{TMP_MARK}")
            half_final = p.name == str(step) and not keep_final and not is_complete(str(p))
            if partial or half_final:
                try:
                    p.rmtree() if p.is_dir() else p.unlink()
                except OSError as e:
                    log.warning("could not remove the partial checkpoint %s: %s", p,
                                e.strerror or e)
        try:
            self.manager.reload()
        except Exception:  # noqa: BLE001 — the folder may be gone (a vanished workdir)
            pass

    def restore_latest(self, abstract_state: Any,
                       data_iterator: Any | None = None) -> tuple[int, Any]:
        """(step, state) of the newest readable checkpoint, or (0, None) when there is none.

        Incomplete step folders, and unreadable ones newer than that checkpoint, are reported in one
        warning line each and moved to `workdir/unreadable_checkpoints/` (never deleted), so that
        later saves do not trip over them.
        """
        import grain
        # Incomplete folders first (orbax's manager trips on them); every process lists them before
        # process 0 moves any.
        incomplete = {step: missing_files(os.path.join(self.directory, str(step)))
                      for step in step_folders(self.directory)}
        _sync_processes("rdbm_jax listed checkpoints")
        for step, missing in incomplete.items():
            if missing:
                self._warn_set_aside(step, f"incomplete (missing {', '.join(missing)})")
        for step in complete_steps(self.directory):
            items = dict(state=ocp.args.StandardRestore(abstract_state))
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                with workarounds.quiet_orbax():
                    state = self.manager.restore(step, args=ocp.args.Composite(**items)).state
            except Exception as e:  # noqa: BLE001 — orbax raises many types for a damaged folder
                reason = f"unreadable ({workarounds.reason(e)})"
                if data_iterator is not None:
                    self._refuse_if_sound(step, abstract_state, workarounds.reason(e))
            else:  # read without an error, but flipped bytes read without one too
                damage = integrity.problem(os.path.join(self.directory, str(step)), state)
                if damage is None:
                    return step, state
                reason = f"damaged ({damage})"
            workarounds.collect_leftovers()
            self._warn_set_aside(step, reason)
        return 0, None

    def _refuse_if_sound(self, step: int, abstract_state: Any, reason: str) -> None:
        """A one-line ConfigError when the train state of `step` restores and verifies alone and
        its data-iterator files are as saved: the failure is then this run's input pipeline's
        (data.num_workers=-1 resolves per host), not damage, and nothing is moved."""
        step_dir = os.path.join(self.directory, str(step))
        if not integrity.files_intact(step_dir):
            return
        try:
            with workarounds.quiet_orbax():
                state = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state))).state
        except Exception:  # noqa: BLE001 — the arrays themselves do not read: damage
            return
        if integrity.problem(step_dir, state) is None:
            raise ConfigError(
                f"checkpoint {step_dir} is sound, but its input-pipeline position does not "
                f"restore into this run's pipeline ({reason}): data.num_workers must resolve to "
                "the count it was saved with (-1 resolves per host: set it explicitly), or train "
                "in a new --workdir; nothing was moved")

    def _warn_set_aside(self, step: int, reason: str) -> None:
        """One warning line naming a bad step folder, which is moved aside."""
        log.warning("checkpoint %s is %s; not used, %s", os.path.join(self.directory, str(step)),
                    reason, self._set_aside(step))

    def _set_aside(self, step: int) -> str:
        """Move a bad step folder out of the checkpoints folder (process 0); says where it went."""
        source = epath.Path(self.directory) / str(step)
        target_dir = epath.Path(self.workdir) / SET_ASIDE
        target = target_dir / str(step)
        n = 1
        while target.exists():
            n += 1
            target = target_dir / f"{step}-{n}"
        if jax.process_index() == 0 and source.exists():
            try:
                target_dir.mkdir(parents=True, exist_ok=True)
                source.rename(target)
            except OSError as e:
                return f"could not move it aside ({e.strerror or e}); it is ignored"
        _sync_processes(f"rdbm_jax set aside checkpoint {step}")
        if self._manager is not None:
            self._manager.reload()
        return f"moved to {target}"

    def wait(self) -> None:
        """Wait for orbax's background work (after a failed save, also stop hiding orbax's
        errors)."""
        self.manager.wait_until_finished()
        if self._quiet is not None:
            logging.getLogger("absl").removeFilter(self._quiet)
            self._quiet = None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def resolve(workdir: str, explicit: str = "") -> tuple[str, int]:
    """(checkpoints directory, step) of an explicit step folder or of the newest complete one in
    `workdir`."""
    if explicit:
        step_dir = paths.as_path(explicit.rstrip("/"))  # a local folder or an object-store URL
        path, parent, name = os.fspath(step_dir), os.fspath(step_dir.parent), step_dir.name
        if not name.isdigit() or not step_dir.is_dir():
            raise ConfigError(f"sample.checkpoint={explicit!r} is not a checkpoint step folder "
                              "(expected …/checkpoints/<step>)")
        missing = missing_files(path)
        if missing:
            raise ConfigError(
                f"sample.checkpoint={explicit!r}: {path} is not a complete checkpoint "
                f"(missing {', '.join(missing)})")
        return parent, int(name)
    directory = checkpoint_dir(workdir)
    steps = complete_steps(directory)
    if not steps:
        raise ConfigError(
            f"no checkpoint found in {directory} (train first, or set sample.checkpoint)")
    return directory, steps[0]


def _restore(directory: str, step: int, what: str, **items: Any) -> Any:
    """orbax's restore of some items of one checkpoint; a damaged folder is a one-line
    ConfigError."""
    options = ocp.CheckpointManagerOptions(create=False)
    try:
        with workarounds.quiet_orbax(), ocp.CheckpointManager(directory, options=options) as mngr:
            return mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 — orbax raises many types for a damaged folder
        reason = workarounds.reason(e)
    workarounds.collect_leftovers()
    raise ConfigError(
        f"checkpoint {os.path.join(directory, str(step))}: cannot read its {what}: {reason} "
        "(name an older step with sample.checkpoint)")


def load_params(directory: str, step: int, abstract_params: Any, which: str = "ema_params") -> Any:
    """Only the `which` parameters (ema_params | params) of one checkpoint's train state, as laid
    out by `abstract_params` (ShapeDtypeStructs with shardings): no optimizer state, no data
    iterator."""
    restore_args = jax.tree_util.tree_map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                          abstract_params)
    item = {which: abstract_params}
    restored = _restore(directory, step, "parameters", state=ocp.args.PyTreeRestore(
        item=item, restore_args={which: restore_args}, partial_restore=True))
    integrity.require(os.path.join(directory, str(step)), restored.state)
    return restored.state[which]


# The sections of a saved config that inference reads: each must be a JSON object.
CONFIG_SECTIONS = ("model", "bridge", "sample")


def read_config(directory: str, step: int) -> dict:
    """The config saved with one checkpoint (orbax's JSON item); a ConfigError naming the file when
    it is not a run config (valid JSON of another shape)."""
    saved = _restore(directory, step, "config", config=ocp.args.JsonRestore()).config
    sections_ok = isinstance(saved, dict) and all(isinstance(saved.get(s), dict)
                                                  for s in CONFIG_SECTIONS)
    if not sections_ok:
        path = os.path.join(directory, str(step), "config")
        got = type(saved).__name__ if not isinstance(saved, dict) else f"sections {sorted(saved)}"
        raise ConfigError(f"checkpoint config {path} is not a saved run config (a JSON object with "
                          f"{', '.join(CONFIG_SECTIONS)} sections; got {got})")
    return dict(saved)
