"""The config schema of the data sources: `data.tasks.<task>.train|eval`, each one source spec or a
ConfigDict of named source specs (name → spec).

One spec is one source named after its task (reports keep the task's name alone); named specs are
several training sources (mixed per `data.train_mix`) or several test sets (scored one by one, and
reported as `<task>/<name>`).
"""
from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import ml_collections

from rdbm_jax.errors import ConfigError

SOURCE_KINDS = ("builtin", "paired", "side_by_side", "clean")
# rdbm_jax/data/builtin.py: train, val, and the k-fold splits over train (fold<i> held out)
NUM_FOLDS = 4  # len(data.builtin.FOLDS) (tested): the schema stays free of file lookups
BUILTIN_SPLITS = ("train", "val") + tuple(f"fold{i}{sfx}" for i in range(NUM_FOLDS)
                                          for sfx in ("", "_train"))
EVAL_FITS = ("resize", "crop")
FLIPS = ("none", "horizontal", "both")  # data.flip: training flips (both = horizontal and vertical)
# data.train_mix: a task's training sources in proportion to size, or equally
TRAIN_MIXES = ("size", "equal")
SYNTHETIC_KINDS = ("builtin", "clean")  # clean images only: μ comes from a synthetic degradation
# relative folders are taken relative to data.root
FOLDER_KEYS = ("lq_dir", "gt_dir", "dir", "mask_dir")
TASK_NODES = ("train", "eval")  # the two nodes of a task
# a source name: one key of --config.data.tasks.<task>.<train|eval>.<name>.…
_NAME = re.compile(r"[A-Za-z0-9_-]+")
DEGRADATIONS = ("none", "inpaint", "noise", "gaussian_blur", "motion_blur", "lowlight", "haze",
                "rain", "jpeg")


def source_spec(**overrides) -> ml_collections.ConfigDict:
    """A data-source config with every key present (so a locked config accepts overrides)."""
    spec = ml_collections.ConfigDict(dict(
        kind="builtin",          # builtin | paired | side_by_side | clean
        split="train",           # builtin only: train | val | fold<i> | fold<i>_train (builtin.py)
        lq_dir="",               # paired: degraded images (μ)
        gt_dir="",               # paired: clean images (x0), matched by file stem
        # paired: text cut from LQ file names before matching (e.g. "rain-")
        lq_strip="",
        gt_strip="",             # paired: ... from GT file names (e.g. "norain-" for Rain100H)
        dir="",                  # side_by_side: A|B files; clean: clean images
        condition="left",        # side_by_side: which half is the condition μ (left | right)
        degradation="none",      # builtin/clean: synthetic degradation applied to the clean image
        mask_dir="",             # inpaint: optional folder of masks (white = hole), else generated
        mask_min_ratio=0.1,      # inpaint: hole fraction range of generated masks
        mask_max_ratio=0.4,
        noise_sigma=0.1,         # noise: std in [0, 1] units
        blur_sigma=2.0,          # gaussian_blur: kernel std in pixels
        motion_length=15,        # motion_blur: kernel length in pixels
        lowlight_gamma=2.0,      # lowlight: x ** gamma * scale
        lowlight_scale=0.35,
        haze_beta=1.2,           # haze: scattering coefficient; transmission exp(-beta * depth)
        haze_airlight=0.9,
        rain_density=0.02,       # rain: streak seeds per pixel
        jpeg_quality=15,         # jpeg: PIL quality
        max_images=0,            # 0 = all; else the first N (sorted) images
        seed=0,                  # eval: image i's degradation / mask is drawn from (seed, i)
        eval_size=0,             # eval: long side at most N px (0 = full size); cheap CPU eval
        eval_fit="resize",       # eval_size by: resize (whole, before degrading) | crop (center)
        check_headers=True,      # read every file header when the source is built (fail fast)
    ))
    unknown = sorted(set(overrides) - set(spec.keys()))
    if unknown:
        raise ConfigError(f"unknown data-source key(s) {unknown}; known: {sorted(spec.keys())}")
    spec.update(overrides)
    return spec


def task_spec(train: Any, eval: Any) -> ml_collections.ConfigDict:  # noqa: A002
    """One task: `train` and `eval` each one source spec or a dict name → source spec (named
    sources)."""
    return ml_collections.ConfigDict(dict(train=train, eval=eval))


class NamedSource(NamedTuple):
    """One source of a task: its name, config key, config node and report label."""
    name: str    # the source's name (a single spec: the task's name)
    # config key, e.g. data.tasks.derain.eval.rain100h (a single spec: data.tasks.derain.eval)
    key: str
    cfg: Any     # the config node as written (missing keys take their defaults in `resolve`)
    label: str   # name in reports: <task>/<name>, or the task alone for a single spec


def is_named(node: Any) -> bool:
    """Whether a `train`/`eval` node holds named source specs (every value a dict) rather than one
    spec."""
    return len(node) > 0 and all(hasattr(v, "keys") for v in node.values())


def task_names(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """Task names in sorted order; a task's int id is its index here."""
    names = sorted(data_cfg.tasks.keys())
    if not names:
        raise ConfigError("data.tasks: no task configured")
    return names


def named_sources(data_cfg: ml_collections.ConfigDict, task: str, which: str) -> list[NamedSource]:
    """The sources of `data.tasks.<task>.<which>` (which: train | eval), sorted by name."""
    key = f"data.tasks.{task}.{which}"
    if which not in data_cfg.tasks[task]:
        raise ConfigError(f"{key}: missing (each task needs a train and an eval source)")
    node = data_cfg.tasks[task][which]
    if not is_named(node):
        return [NamedSource(task, key, node, task)]
    for name in node.keys():
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{key}.{name}: a source name may hold only letters, digits, _ and -")
    return [
        NamedSource(name, f"{key}.{name}", node[name], f"{task}/{name}")
        for name in sorted(node.keys())
    ]


def resolve(node: Any, key: str) -> ml_collections.ConfigDict:
    """The full source config of one node (missing keys take their defaults), validated; no file is
    read."""
    spec = source_spec()  # every key present, whatever the config file spelled out
    for k, v in node.to_dict().items():
        if k not in spec:
            raise ConfigError(f"{key}.{k}: unknown data-source key; known: {sorted(spec.keys())}")
        try:
            spec[k] = v
        except TypeError as e:
            raise ConfigError(f"{key}.{k}: {e}") from None
    _validate_source(spec, key)
    return spec


def _validate_source(spec: ml_collections.ConfigDict, key: str) -> None:
    """ConfigError naming the key of the first bad value of one source config."""
    def need(cond: bool, sub: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}.{sub}: {msg} (got {spec[sub]!r})")
    need(spec.kind in SOURCE_KINDS, "kind", f"must be one of {SOURCE_KINDS}")
    need(spec.degradation in DEGRADATIONS, "degradation", f"must be one of {DEGRADATIONS}")
    if spec.kind in SYNTHETIC_KINDS:
        need(spec.degradation != "none", "degradation",
             f"kind {spec.kind!r} has only clean images: pick one of {DEGRADATIONS[1:]}")
    else:
        need(spec.degradation == "none", "degradation",
             f"kind {spec.kind!r} already has degraded images: use 'none'")
    if spec.kind == "builtin":
        need(spec.split in BUILTIN_SPLITS, "split", f"must be one of {BUILTIN_SPLITS}")
    if spec.kind == "paired":
        need(bool(spec.lq_dir), "lq_dir", "a paired source needs lq_dir")
        need(bool(spec.gt_dir), "gt_dir", "a paired source needs gt_dir")
    if spec.kind in ("clean", "side_by_side"):
        need(bool(spec.dir), "dir", f"a {spec.kind} source needs dir")
    if spec.kind == "side_by_side":
        need(spec.condition in ("left", "right"), "condition", "must be left or right")
    need(int(spec.max_images) >= 0, "max_images", "must be >= 0")
    need(int(spec.eval_size) >= 0, "eval_size", "must be >= 0")
    need(spec.eval_fit in EVAL_FITS, "eval_fit", f"must be one of {EVAL_FITS}")


def validate_tasks(data_cfg: ml_collections.ConfigDict) -> None:
    """Resolve every source of every task: a ConfigError names the first bad key (no file is
    read)."""
    for task in task_names(data_cfg):
        for which in TASK_NODES:
            for src in named_sources(data_cfg, task, which):
                resolve(src.cfg, src.key)


def folder(data_cfg: ml_collections.ConfigDict, path: str) -> str:
    """A source's folder as read: a relative one is taken relative to `data.root`."""
    root = data_cfg.get("root", "")
    if root and path and not os.path.isabs(path) and "://" not in path:
        return os.path.join(root, path)
    return path


def check_folders(data_cfg: ml_collections.ConfigDict, which: tuple[str, ...] = TASK_NODES) -> None:
    """Every folder that the `which` sources name exists, local or object store, else a
    ConfigError naming the key (checked before a run creates or writes anything: a missing
    dataset is an unusable config)."""
    for task in task_names(data_cfg):
        for node in which:
            for src in named_sources(data_cfg, task, node):
                spec = resolve(src.cfg, src.key)
                for key in FOLDER_KEYS:
                    path = folder(data_cfg, spec[key])
                    if path and not _is_folder(path):
                        raise ConfigError(f"image folder not found: {path} ({src.key}.{key})")


def _is_folder(path: str) -> bool:
    """Whether `path` is a folder; an object-store URL (gs://…) is asked through etils.epath."""
    if "://" not in path:
        return os.path.isdir(path)
    from rdbm_jax.data.image_io import is_folder  # numpy, PIL, etils: validation stays light
    return is_folder(path)
