"""What may change when `train` resumes a run: the keys in RESUMABLE; any other key that differs
from the checkpoint's config is refused (a changed config is not a damaged checkpoint)."""
from __future__ import annotations

import fnmatch
import json
from typing import Any

from rdbm_jax.errors import ConfigError

# Keys (fnmatch patterns of dotted keys) that may differ from the checkpoint's config on resume:
# they change how long or how observably the run goes on, or how the same weights are computed,
# never which state there is or what it means. Every other key (model, bridge incl. the θ schedule,
# optim, seed, loss, batch size, the training data) must match. docs/faults.md's "Resuming with
# another config" lists these (tested).
RESUMABLE = (
    "train.num_steps",  # a longer (or shorter) run; with optim.schedule=cosine the decay follows it
    "train.log_every",
    "train.eval_every",
    "train.eval_num_images",
    "train.checkpoint_every",
    "train.max_to_keep",
    "train.steps_per_dispatch",  # K steps per compiled call: the same steps, the same noise
    "train.compilation_cache_dir",
    "train.tensorboard",
    "model.dtype",  # the same float32 master weights, computed in another precision
    "model.param_dtype",
    "model.attention_impl",
    "model.remat",
    # the input pipeline's speed, not its order (not data.num_workers: grain's saved iterator
    # state of 0 workers and of N > 0 differ, so a changed count cannot restore it)
    "data.prefetch_buffer",
    "data.decode_cache_mib",
    "data.max_image_pixels",
    "data.tasks.*.eval.*",  # the validation images (what is measured, not what is trained)
    "sample.*",
    "eval.*",
    "sweep.*",
    "app.*",  # --mode=app's address and step: it only reads checkpoints
)

_ABSENT = object()  # a key or section one config lacks


def resumable(key: str) -> bool:
    """Whether a dotted config key may differ from the checkpoint's on resume."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE)


def differences(saved: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, new value) of every leaf that differs, and of every section one
    side lacks (a task added or removed). A single key only one side has is a config of another
    version (a key added since) and is not compared."""
    found = []
    for name in sorted(set(saved) | set(new), key=str):
        key = f"{prefix}{name}"
        theirs, ours = saved.get(name, _ABSENT), new.get(name, _ABSENT)
        if isinstance(theirs, dict) and isinstance(ours, dict):
            found += differences(theirs, ours, f"{key}.")
        elif (theirs is _ABSENT or ours is _ABSENT) and not isinstance(theirs, dict) \
                and not isinstance(ours, dict):
            continue
        elif theirs != ours:
            found.append((key, theirs, ours))
    return found


def _flag_value(value: Any) -> str:
    """A config value as an override would give it (strings bare, others as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def check(saved: dict, new: dict, where: str, workdir: str) -> None:
    """Refuse (ConfigError, one line) a new config that differs from the saved one `where` in a
    key outside RESUMABLE: it names each key with both values and the two ways on."""
    refused = [d for d in differences(saved, new) if not resumable(d[0])]
    if not refused:
        return
    listed = "; ".join(f"{key}: saved {_short(theirs)}, now {_short(ours)}"
                       for key, theirs, ours in refused)
    leaves = all(t is not _ABSENT and not isinstance(t, dict) for _, t, _ in refused)
    how = f"rerun with the config it was trained with ({workdir}/config.json)"
    if leaves and len(refused) <= 4:
        how = "rerun with the saved values ({})".format(
            " ".join(f"--config.{key}={_flag_value(theirs)}" for key, theirs, _ in refused))
    raise ConfigError(f"workdir {workdir} was trained with another config than this one "
                      f"(checkpoint {where}): {listed}. These keys cannot change on resume; "
                      f"{how}, or train in a new --workdir (nothing was changed in this one)")


def _short(value: Any, limit: int = 60) -> str:
    """A value for the one-line message, cut to `limit` characters."""
    text = "absent" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
