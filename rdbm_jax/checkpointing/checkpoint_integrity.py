"""Checksums of a checkpoint's arrays, recorded at save and checked at restore: a damaged checkpoint
(flipped bytes that orbax reads back without an error) is never trusted.

`<step>/checksums.json` holds one SHA-256 per array leaf of the saved train state (of its dtype,
shape and bytes), so a partial restore (the EMA parameters only) checks just what it read.
Checkpoints saved before this file existed get a finite-values check only.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

from rdbm_jax.runtime import distributed, paths
from rdbm_jax.errors import ConfigError

FILE = "checksums.json"
FORMAT = 1


def _name(path: tuple) -> str:
    """A leaf's path as "ema_params/Conv_0/kernel", the same for a TrainState and for the plain
    dict a partial restore returns."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey / FlattenedIndexKey, SequenceKey
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _host_leaves(tree: Any) -> dict[str, np.ndarray]:
    """name → host array of every array leaf (Python scalars, not arrays in the saved file, are
    left out)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_name(path): (distributed.to_host(x) if isinstance(x, jax.Array) else np.asarray(x))
            for path, x in leaves if hasattr(x, "dtype")}


def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    # the bytes as a uint8 view, not a copy (tobytes is ~7x slower) and for any dtype (bfloat16)
    h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return h.hexdigest()


def record(step_dir: str, tree: Any) -> OSError | None:
    """Write the checksums of `tree`'s arrays to `step_dir`/checksums.json (atomically; process 0
    writes, every process computes: a sharded array is gathered collectively); returns the error
    of a failed write (the caller's save fails with it)."""
    digests = {name: _digest(arr) for name, arr in _host_leaves(tree).items()}
    if jax.process_index() != 0:
        return None
    try:
        doc = {"format": FORMAT, "algorithm": "sha256", "leaves": digests,
               "files": _file_digests(step_dir)}
        paths.write_text(paths.join(step_dir, FILE), json.dumps(doc, indent=1))
    except OSError as e:
        return e
    return None


def _file_digests(step_dir: str) -> dict[str, str]:
    """SHA-256 of each file of the data iterator's item (`data/`: grain's JSON position)."""
    folder = paths.as_path(step_dir) / "data"
    if not folder.exists():
        return {}
    return {f"data/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def files_intact(step_dir: str) -> bool:
    """Whether the data iterator's files are as saved (False when no checksums were recorded):
    a restore that fails on a checkpoint whose arrays and files verify is not damage."""
    path = paths.as_path(paths.join(step_dir, FILE))
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("files")
        return bool(recorded) and _file_digests(step_dir) == recorded
    except (OSError, ValueError, AttributeError):
        return False


def _recorded(step_dir: str) -> tuple[dict[str, str] | None, str | None]:
    """(name → digest, None), (None, None) when the checkpoint has no checksum file (older), or
    (None, why) when the file is there but unreadable."""
    path = paths.as_path(paths.join(step_dir, FILE))
    try:
        if not path.exists():
            return None, None
        doc = json.loads(path.read_text(encoding="utf-8"))
        leaves = doc["leaves"]
        if not isinstance(leaves, dict):
            raise TypeError("leaves is not an object")
        return leaves, None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"its {FILE} is unreadable ({type(e).__name__})"


def problem(step_dir: str, tree: Any) -> str | None:
    """Why the arrays restored from `step_dir` cannot be trusted (None when they can): a checksum
    that differs from the one recorded at save, or (always) a non-finite value."""
    recorded, unreadable = _recorded(step_dir)
    if unreadable:
        return unreadable
    host = _host_leaves(tree)
    if recorded is not None:
        bad = [name for name, arr in host.items() if recorded.get(name) != _digest(arr)]
        if bad:
            return (f"{len(bad)} of its {len(host)} arrays differ from the checksums recorded at "
                    f"save (first: {bad[0]})")
    nonfinite = [name for name, arr in host.items()
                 if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all()]
    if nonfinite:
        return f"{len(nonfinite)} of its arrays hold NaN or infinite values (first: {nonfinite[0]})"
    return None


def require(step_dir: str, tree: Any) -> None:
    """Refuse (one-line ConfigError naming the checkpoint) arrays that `problem` finds damaged."""
    damage = problem(step_dir, tree)
    if damage:
        raise ConfigError(f"checkpoint {step_dir} is damaged: {damage}; not used (name an older "
                          "step with sample.checkpoint)")
