"""Training iterator (grain; shuffled, repeated, sharded, task-balanced) and evaluation sources."""
from __future__ import annotations

import logging
import os

import grain
import ml_collections
import numpy as np

from rdbm_jax.data.degradations import Degrader
from rdbm_jax.data.image_io import center_crop, fit_size, resize_float, to_model_range
from rdbm_jax.data.sources import ImageSource, build_source
from rdbm_jax.data.spec import BUILTIN_SPLITS, DEGRADATIONS, EVAL_FITS, FLIPS, SOURCE_KINDS, source_spec
from rdbm_jax.errors import ConfigError, DataError

_SYNTHETIC_KINDS = ("builtin", "clean")
_MAX_RETRIES = 16


def task_names(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """Task names in sorted order; a task's int id is its index here."""
    names = sorted(data_cfg.tasks.keys())
    if not names:
        raise ConfigError("data.tasks: no task configured")
    return names


def _validate_source(spec: ml_collections.ConfigDict, key: str) -> None:
    """ConfigError naming the key of the first bad value of one source config."""
    def need(cond: bool, sub: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}.{sub}: {msg} (got {spec[sub]!r})")
    need(spec.kind in SOURCE_KINDS, "kind", f"must be one of {SOURCE_KINDS}")
    need(spec.degradation in DEGRADATIONS, "degradation", f"must be one of {DEGRADATIONS}")
    if spec.kind in _SYNTHETIC_KINDS:
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


def _source(data_cfg, name: str, which: str, *, verify: bool = False,
            max_images: int = 0) -> tuple[ImageSource, Degrader | None, ml_collections.ConfigDict, str]:
    """Build (source, degrader or None, spec, key) of `data.tasks.<name>.<which>`."""
    key = f"data.tasks.{name}.{which}"
    task = data_cfg.tasks[name]
    if which not in task:
        raise ConfigError(f"{key}: missing (each task needs a train and an eval source)")
    spec = source_spec()  # every key present, whatever the config file spelled out
    for k, v in task[which].to_dict().items():
        if k not in spec:
            raise ConfigError(f"{key}.{k}: unknown data-source key; known: {sorted(spec.keys())}")
        try:
            spec[k] = v
        except TypeError as e:
            raise ConfigError(f"{key}.{k}: {e}") from None
    _validate_source(spec, key)
    root = data_cfg.get("root", "")
    for folder in FOLDER_KEYS:  # relative folders are taken relative to data.root
        if root and spec[folder] and not os.path.isabs(spec[folder]) and "://" not in spec[folder]:
            spec[folder] = os.path.join(root, spec[folder])
    if max_images:
        spec.max_images = min(int(spec.max_images) or max_images, max_images)
    degrader = Degrader(spec, key) if spec.kind in _SYNTHETIC_KINDS else None
    source = build_source(spec, key, skip_bad_files=bool(data_cfg.skip_bad_files), verify=verify)
    return source, degrader, spec, key


FOLDER_KEYS = ("lq_dir", "gt_dir", "dir", "mask_dir")


def _seed32(*parts: int) -> int:
    """A 32-bit seed derived from non-negative integer parts."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0])


def pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad (evenly on both sides) so that both sides are at least `size`."""
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not (ph or pw):
        return img
    return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")


class TrainExample:
    """index → a cropped, flipped, degraded training example of one task (grain random_map)."""

    def __init__(self, source: ImageSource, degrader: Degrader | None, task_id: int, crop: int,
                 flip: str, skip_bad_files: bool, key: str, shard: tuple[int, int] = (0, 1)):
        self.source, self.degrader, self.task_id = source, degrader, task_id
        self.crop, self.flip, self.skip, self.key = crop, flip, skip_bad_files, key
        self.shard = shard  # (process_index, process_count): replacements stay in this shard
        self.num_skipped = 0

    def _read(self, index: int, rng: np.random.Generator):
        for _ in range(_MAX_RETRIES):
            try:
                return self.source.read(index)
            except DataError as e:
                if not self.skip:
                    raise
                self.num_skipped += 1
                logging.warning("%s: skipped bad file (%d skipped so far in this worker): %s",
                                self.key, self.num_skipped, e)
                first, step = self.shard
                index = first + step * int(rng.integers(len(range(first, len(self.source), step))))
        raise DataError(f"{self.key}: {_MAX_RETRIES} bad files in a row, giving up")

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        item = self._read(int(index), rng)
        stack = item.x0 if item.mu is None else np.concatenate([item.x0, item.mu], axis=-1)
        stack = pad_to(stack, self.crop)
        h, w = stack.shape[:2]
        top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        stack = stack[top:top + self.crop, left:left + self.crop]
        if self.flip != "none" and rng.uniform() < 0.5:
            stack = stack[:, ::-1]
        if self.flip == "both" and rng.uniform() < 0.5:
            stack = stack[::-1]
        stack = np.ascontiguousarray(stack)
        x0 = stack[..., :3]
        if item.mu is not None:
            mu, mask = stack[..., 3:], np.ones(x0.shape[:2], bool)
        else:
            mu, mask = self.degrader.degrade(x0, rng)
        return {"x0": to_model_range(x0), "mu": to_model_range(mu), "mask": mask_array(mask),
                "task": np.int32(self.task_id)}


def mask_array(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] degradation mask → float32 [H, W, 1] (1 where μ may differ from x0)."""
    return np.asarray(mask, np.float32)[..., None]


def concat_batches(batches) -> dict[str, np.ndarray]:
    """Concatenate per-task sub-batches along the batch axis (tasks in id order)."""
    return {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}


def build_train_iterator(data_cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                         process_index: int | None = None,
                         process_count: int | None = None) -> grain.DatasetIterator:
    """Checkpointable iterator of per-process batches {x0, mu: f32 [B, crop, crop, 3], mask: f32 [B, crop,
    crop, 1] (1 where μ may differ from x0: inpainting holes, else everywhere), task: i32 [B]}."""
    # B = global_batch_size // process_count, split equally over the tasks (task-major order);
    # this process reads the files process_index::process_count of every task's training source.
    if process_index is None or process_count is None:
        import jax  # only for the defaults
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    names = task_names(data_cfg)
    crop = int(data_cfg.crop_size)
    if crop <= 0:
        raise ConfigError(f"data.crop_size: must be > 0 (got {crop})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ConfigError(f"train.batch_size: {global_batch_size} is not a positive multiple of the "
                          f"process count {process_count}")
    local = global_batch_size // process_count
    if local % len(names):
        raise ConfigError(f"train.batch_size: per-process batch {local} does not split equally over "
                          f"{len(names)} tasks {names}")
    per_task = local // len(names)
    if data_cfg.flip not in FLIPS:
        raise ConfigError(f"data.flip={data_cfg.flip!r} is not one of {', '.join(FLIPS)}")
    if int(data_cfg.num_workers) < 0 or int(data_cfg.prefetch_buffer) < 0:
        raise ConfigError("data.num_workers / data.prefetch_buffer: must be >= 0")
    skip = bool(data_cfg.skip_bad_files)
    per_task_ds = []
    for task_id, name in enumerate(names):
        source, degrader, _, key = _source(data_cfg, name, "train")
        if len(source) < process_count:
            raise DataError(f"{key}: {len(source)} image(s) cannot be sharded over {process_count} "
                            f"processes (each needs at least one)")
        fn = TrainExample(source, degrader, task_id, crop, data_cfg.flip, skip, key,
                          shard=(process_index, process_count))
        ds = (grain.MapDataset.range(len(source))[process_index::process_count]
              .shuffle(seed=_seed32(seed, task_id, 1))
              .repeat()
              .random_map(fn, seed=_seed32(seed, task_id, process_index, 2))
              .batch(per_task, drop_remainder=True))
        per_task_ds.append(ds)
    if len(per_task_ds) == 1:
        ds = per_task_ds[0]
    else:  # equal weights: round-robin over tasks, then one sub-batch of each task per batch
        ds = grain.MapDataset.mix(per_task_ds).batch(len(names), drop_remainder=True,
                                                      batch_fn=concat_batches)
    buffer = int(data_cfg.prefetch_buffer)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=buffer, prefetch_buffer_size=buffer))
    workers = int(data_cfg.num_workers)
    if workers > 0:
        from absl import flags  # grain's workers read absl flags: use their defaults if unparsed
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=max(1, buffer)))
    return iter(it_ds)


class EvalSource:
    """Random-access evaluation examples of one task: {x0, mu: f32 [H, W, 3] in [−1, 1], mask: f32 [H, W, 1],
    name, task}; `degradation` names the synthetic degradation ("none" for real pairs), `spec` its parameters."""

    def __init__(self, task: str, source: ImageSource, degrader: Degrader | None,
                 spec: ml_collections.ConfigDict):
        self.task, self.source, self.degrader, self.spec = task, source, degrader, spec
        self.degradation = spec.degradation if degrader is not None else "none"
        self.seed, self.size, self.fit = int(spec.seed), int(spec.eval_size), spec.eval_fit

    def __len__(self) -> int:
        return len(self.source)

    @property
    def names(self) -> list[str]:
        return self.source.names

    def _fit(self, img: np.ndarray) -> np.ndarray:
        if self.fit == "crop":
            return np.ascontiguousarray(center_crop(img, self.size))
        h, w = fit_size(img.shape[0], img.shape[1], self.size)
        return img if (h, w) == img.shape[:2] else resize_float(img, h, w)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.task}: index {index} out of range [0, {len(self)})")
        item = self.source.read(index)
        x0 = self._fit(item.x0)
        if item.mu is not None:
            mu, mask = self._fit(item.mu), np.ones(x0.shape[:2], bool)
        else:
            mu, mask = self.degrader.degrade(x0, np.random.default_rng([self.seed % 2**32, index]),
                                             index=index)
        return {"x0": to_model_range(x0), "mu": to_model_range(mu), "mask": mask_array(mask),
                "name": item.name, "task": self.task}


    def known_parameters(self, index: int) -> dict:
        """The synthetic degradation's known parameters of example `index` (for classical baselines)."""
        if self.degrader is None:
            return {}
        rng = np.random.default_rng([self.seed % 2**32, index])  # the same draws as __getitem__
        return {"noise_sigma": float(self.spec.noise_sigma), "kernel": self.degrader.kernel(rng)}


def build_eval_sources(data_cfg: ml_collections.ConfigDict, *,
                       max_images: int = 0) -> dict[str, EvalSource]:
    """task name → EvalSource (sorted tasks, sorted images; the first `max_images` if > 0)."""
    out = {}
    for name in task_names(data_cfg):
        source, degrader, spec, _ = _source(data_cfg, name, "eval", verify=True,
                                            max_images=int(max_images))
        out[name] = EvalSource(name, source, degrader, spec)
    return out
