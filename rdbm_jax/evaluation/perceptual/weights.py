"""The perceptual networks' weight files: flat .npz (no pickle) written, read and checked.

An .npz maps "params/a/b/kernel" (and "batch_stats/...") to arrays, plus "meta/kind", "meta/net"
and "meta/format_version". Written by `rdbm_jax.evaluation.perceptual.convert` (from PyTorch
files); read at run time by `lpips.load_lpips` and `inception.load_inception`.
"""
from __future__ import annotations

import io
from typing import Any, Mapping

import jax
import numpy as np

from rdbm_jax.runtime import paths
from rdbm_jax.errors import DataError

FORMAT_VERSION = 1


def meta_entries(kind: str, net: str) -> dict[str, np.ndarray]:
    """Metadata entries stored next to the arrays."""
    return {"meta/kind": np.array(kind), "meta/net": np.array(net),
            "meta/format_version": np.array(FORMAT_VERSION)}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name + "/"))
        else:
            out[name] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b/c": leaf} -> nested dict."""
    tree: dict[str, Any] = {}
    for k, v in flat.items():
        node = tree
        *parents, leaf = k.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def expected_shapes(module: Any, sample: np.ndarray, n_inputs: int) -> dict[str, tuple[int, ...]]:
    """Flat {name: shape} of a Flax module's variables, from `jax.eval_shape` (no compute)."""
    args = (sample,) * n_inputs
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
    return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def check_arrays(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                 what: str) -> None:
    """DataError unless `flat` has exactly the expected names and shapes (`what` names the
    source)."""
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    wrong = [f"{k} {tuple(flat[k].shape)} (expected {expected[k]})" for k in sorted(expected)
             if k in flat and tuple(flat[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} arrays, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} unexpected arrays, e.g. {extra[0]}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape, e.g. {wrong[0]}")
    if problems:
        raise DataError(f"{what}: " + "; ".join(problems))


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write flat arrays to an uncompressed .npz (no pickle), whole (`paths`: local or gs://)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    paths.write_bytes(path, buffer.getvalue())


def load_npz(path: str, config_key: str = "") -> dict[str, np.ndarray]:
    """Read a flat .npz (local or gs://); DataError naming the file (and config key) if missing
    or unreadable."""
    where = f"{path} ({config_key})" if config_key else path
    if not paths.as_path(path).is_file():
        raise DataError(f"weight file not found: {where}")
    try:
        with paths.as_path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"not a readable .npz weight file ({msg}): {where}") from None


def checked_variables(flat: Mapping[str, np.ndarray], kind: str,
                      expected: Mapping[str, tuple[int, ...]], path: str,
                      config_key: str) -> dict[str, Any]:
    """Variables (nested) from a loaded .npz of `kind`, checked against `expected` names/shapes."""
    where = f"{path} ({config_key})"
    flat = dict(flat)
    file_kind = str(flat.pop("meta/kind", ""))
    flat.pop("meta/net", None)
    flat.pop("meta/format_version", None)
    if file_kind != kind:
        found = f"{file_kind} weights" if file_kind else "no meta/kind entry"
        raise DataError(f"expected {kind} weights from `python -m "
                        f"rdbm_jax.evaluation.perceptual.convert {kind}`, found {found}: {where}")
    check_arrays(flat, expected, f"weights do not fit the {kind} architecture in {where}")
    return unflatten(flat)
