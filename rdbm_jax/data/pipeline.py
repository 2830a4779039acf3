"""Training iterator (grain; shuffled, repeated, sharded, task-balanced; a task's named training
sources mixed per data.train_mix) and evaluation sources (one per test set)."""
from __future__ import annotations

import logging
import math
import os

import grain
import ml_collections
import numpy as np

from rdbm_jax.data.degradations import Degrader
from rdbm_jax.data.image_io import (RowsNeeded, center_crop, fit_size, pixels_to_unit,
                                    resize_float, to_model_range)
from rdbm_jax.data.sources import ImageSource, RawItem, build_source
from rdbm_jax.data.spec import (FOLDER_KEYS, SYNTHETIC_KINDS, TRAIN_MIXES, NamedSource,
                                named_sources, resolve, task_names)
from rdbm_jax.data.spec import folder as data_folder
from rdbm_jax.errors import ConfigError, DataError

_MAX_RETRIES = 16


def _build(data_cfg: ml_collections.ConfigDict, src: NamedSource, *, verify: bool = False,
           max_images: int = 0) -> tuple[ImageSource, Degrader | None, ml_collections.ConfigDict]:
    """(source, degrader or None, resolved spec) of one named source of a task."""
    spec = resolve(src.cfg, src.key)
    for key in FOLDER_KEYS:  # relative folders are taken relative to data.root
        spec[key] = data_folder(data_cfg, spec[key])
    if max_images:
        spec.max_images = min(int(spec.max_images) or max_images, max_images)
    degrader = Degrader(spec, src.key) if spec.kind in SYNTHETIC_KINDS else None
    source = build_source(spec, src.key, skip_bad_files=bool(data_cfg.skip_bad_files),
                          verify=verify)
    return source, degrader, spec


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
    """index → `crops` cropped, flipped, degraded training examples of one task (grain random_map),
    stacked on a leading axis; the decoded pixels are cropped first and converted to float after."""

    def __init__(self, source: ImageSource, degrader: Degrader | None, task_id: int, crop: int,
                 flip: str, skip_bad_files: bool, key: str, shard: tuple[int, int] = (0, 1),
                 crops: int = 1, cache_bytes: int = 0, scale: tuple[float, float] = (1.0, 1.0)):
        self.source = source
        self.degrader = degrader
        self.task_id = task_id
        self.crop = crop
        self.flip = flip
        self.skip = skip_bad_files
        self.key = key
        self.shard = shard  # (process_index, process_count): replacements stay in this shard
        self.crops = crops  # data.crops_per_image
        self.cache_bytes = cache_bytes  # data.decode_cache_mib, in bytes (per process)
        self.scale = (float(scale[0]), float(scale[1]))  # data.scale_min, data.scale_max
        self.num_skipped = 0
        self._cache: dict[int, RawItem] = {}
        self._cached_bytes = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"], state["_cached_bytes"] = {}, 0  # each worker process fills its own cache
        return state

    def read(self, index: int, rng: np.random.Generator, rows: RowsNeeded | None = None) -> RawItem:
        """The decoded pixels of example `index` (from the RAM cache when it holds them); with
        skip_bad_files a bad file is replaced by a random one of this shard. `rows`: decode only
        the leading rows it asks for (`image_io.decode_pixels`; such items are not cached)."""
        if index in self._cache:
            return self._cache[index]
        for _ in range(_MAX_RETRIES):
            try:
                if rows is None:
                    item = self.source.read_pixels(index)
                else:
                    return self.source.read_pixels(index, rows)
                break
            except DataError as e:
                if not self.skip:
                    raise
                self.num_skipped += 1
                logging.warning("%s: skipped bad file (%d skipped so far in this worker): %s",
                                self.key, self.num_skipped, e)
                first, step = self.shard
                index = first + step * int(rng.integers(len(range(first, len(self.source), step))))
        else:
            raise DataError(f"{self.key}: {_MAX_RETRIES} bad files in a row, giving up")
        size = item.x0.nbytes + (0 if item.mu is None else item.mu.nbytes)
        if self._cached_bytes + size <= self.cache_bytes:  # fill until the budget; never evict
            self._cache[index] = item
            self._cached_bytes += size
        return item

    def draw_window(self, h: int, w: int, rng: np.random.Generator,
                    size: int | None = None) -> tuple[int, int]:
        """(top, left) of a random `size` (default: the crop's) window of an image of h x w
        (before padding)."""
        size = size or self.crop
        h, w = max(h, size), max(w, size)  # as `pad_to` leaves it
        return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))

    def multi_scale(self) -> bool:
        """Whether photos are rescaled at random before cropping (data.scale_min/max)."""
        return self.scale != (1.0, 1.0)

    def window_size(self, rng: np.random.Generator) -> int:
        """The side of the photo's window a crop is cut from: the crop's, or with multi-scale
        crop / f for f drawn log-uniformly in [scale_min, scale_max] (cutting crop / f pixels and
        resizing them to crop is rescaling the photo by f, then cropping)."""
        if not self.multi_scale():
            return self.crop  # no draw: the crops of a run without multi-scale are unchanged
        lo, hi = self.scale
        f = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return max(1, round(self.crop / f))

    def crop_window(self, item: RawItem, rng: np.random.Generator,
                    corner: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One random crop (padded first if the image is smaller) and flips of x0 and μ alike, as
        float32 in [0, 1]: the same draws, in the same order, as cropping the two stacked.
        `corner`: the window's (top, left), drawn before decoding (`draw_window`)."""
        size = self.crop if corner is not None else self.window_size(rng)
        x0, mu = pad_to(item.x0, size), None if item.mu is None else pad_to(item.mu, size)
        h, w = x0.shape[:2]
        top, left = corner if corner is not None else self.draw_window(h, w, rng, size)
        window = (slice(top, top + size), slice(left, left + size))
        x0, mu = x0[window], None if mu is None else mu[window]
        if self.flip != "none" and rng.uniform() < 0.5:
            x0, mu = x0[:, ::-1], None if mu is None else mu[:, ::-1]
        if self.flip == "both" and rng.uniform() < 0.5:
            x0, mu = x0[::-1], None if mu is None else mu[::-1]
        x0 = pixels_to_unit(np.ascontiguousarray(x0))
        mu = None if mu is None else pixels_to_unit(np.ascontiguousarray(mu))
        if size != self.crop:  # multi-scale: the window rescaled to the crop
            x0 = resize_float(x0, self.crop, self.crop)
            mu = None if mu is None else resize_float(mu, self.crop, self.crop)
        return x0, mu

    def finish(self, x0: np.ndarray, mu: np.ndarray | None,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A cropped example → model inputs; clean-only sources are degraded here."""
        if mu is not None:
            mask = np.ones(x0.shape[:2], bool)
        else:
            mu, mask = self.degrader.degrade(x0, rng)
        return {"x0": to_model_range(x0), "mu": to_model_range(mu), "mask": mask_array(mask),
                "task": np.int32(self.task_id)}

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if (self.crops == 1 and not self.cache_bytes and self.source.LEADING_ROWS
                and not self.multi_scale()):
            # One crop of an uncached file: its window is drawn from the header's size (the same
            # draws, in the same order, as after a full decode) and a PNG is decoded only down to
            # the window's last row: bit-identical crops, ~38 % less decoding of 1024² PNGs.
            corner: list[tuple[int, int]] = []

            def rows(h: int, w: int) -> int:
                corner[:] = [self.draw_window(h, w, rng)]  # a replaced bad file draws anew
                return min(h, corner[0][0] + self.crop)

            item = self.read(int(index), rng, rows)
            return self._stack([self.finish(*self.crop_window(item, rng, corner[0]), rng)])
        item = self.read(int(index), rng)
        return self._stack([self.finish(*self.crop_window(item, rng), rng)
                            for _ in range(self.crops)])

    @staticmethod
    def _stack(out: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in out]) for k in out[0]}


def mask_array(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] degradation mask → float32 [H, W, 1] (1 where μ may differ from x0)."""
    return np.asarray(mask, np.float32)[..., None]


def concat_batches(batches) -> dict[str, np.ndarray]:
    """Concatenate sub-batches along the batch axis (tasks in id order; a decode's crops in
    turn)."""
    return {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}


def _task_stream(data_cfg: ml_collections.ConfigDict, task_id: int, name: str, *, seed: int,
                 mix: str, shard: tuple[int, int]) -> grain.MapDataset:
    """The endless examples of one task: each training source shuffled per epoch and this process's
    shard only; several sources interleaved in proportion to their sizes (mix "size") or equally."""
    process_index, process_count = shard
    sources = named_sources(data_cfg, name, "train")
    streams, sizes = [], []
    for j, src in enumerate(sources):
        source, degrader, _ = _build(data_cfg, src)
        if len(source) < process_count:
            raise DataError(
                f"{src.key}: {len(source)} image(s) cannot be sharded over {process_count} "
                f"processes (each needs at least one)")
        fn = TrainExample(source, degrader, task_id, int(data_cfg.crop_size), data_cfg.flip,
                          bool(data_cfg.skip_bad_files), src.key, shard=shard,
                          crops=int(data_cfg.get("crops_per_image", 1)),
                          cache_bytes=int(data_cfg.get("decode_cache_mib", 0)) * 2**20,
                          scale=(data_cfg.get("scale_min", 1.0), data_cfg.get("scale_max", 1.0)))
        # One source keeps the seeds of one-source tasks; several draw their own from (task,
        # source).
        ids = (task_id,) if len(sources) == 1 else (task_id, j, 3)
        streams.append(grain.MapDataset.range(len(source))[process_index::process_count]
                       .shuffle(seed=_seed32(seed, *ids, 1))
                       .repeat()
                       .random_map(fn, seed=_seed32(seed, *ids, process_index, 2)))
        sizes.append(len(source))
    if len(streams) == 1:
        return streams[0]
    # Deterministic weighted interleaving (grain): exact proportions, resumable from the index
    # alone.
    return grain.MapDataset.mix(streams, sizes if mix == "size" else None)


AUTO_WORKERS = -1  # data.num_workers: choose per host (`num_workers`)
MAX_AUTO_WORKERS = 32


def num_workers(data_cfg: ml_collections.ConfigDict, *, accelerator: bool) -> int:
    """data.num_workers, with -1 (auto) resolved: one worker per CPU but one (at most 32) when an
    accelerator runs the step and a training source reads files; in-process otherwise — on a CPU
    run the step needs the same cores, and the built-in photos are decoded once and kept in RAM."""
    workers = int(data_cfg.num_workers)
    if workers != AUTO_WORKERS:
        return workers
    reads_files = any(resolve(src.cfg, src.key).kind != "builtin" for name in task_names(data_cfg)
                      for src in named_sources(data_cfg, name, "train"))
    cpus = os.cpu_count() or 1
    return min(cpus - 1, MAX_AUTO_WORKERS) if accelerator and reads_files and cpus > 2 else 0


def build_train_iterator(data_cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                         process_index: int | None = None, process_count: int | None = None,
                         accelerator: bool = False) -> grain.DatasetIterator:
    """Checkpointable iterator of per-process batches {x0, mu: f32 [B, crop, crop, 3], mask: f32 [B,
    crop, crop, 1] (1 where μ may differ from x0: inpainting holes, else everywhere), task: i32
    [B]}. `accelerator`: the step runs on a GPU/TPU, so data.num_workers=-1 starts worker
    processes."""
    # B = global_batch_size // process_count, split equally over the tasks (task-major order);
    # this process reads the files process_index::process_count of every task's training source(s).
    if process_index is None or process_count is None:
        import jax  # only for the defaults
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    names = task_names(data_cfg)
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ConfigError(
            f"train.batch_size: {global_batch_size} is not a positive multiple of the "
            f"process count {process_count}")
    local = global_batch_size // process_count
    if local % len(names):
        raise ConfigError(
            f"train.batch_size: per-process batch {local} does not split equally over "
            f"{len(names)} tasks {names}")
    per_task = local // len(names)
    mix = data_cfg.get("train_mix", TRAIN_MIXES[0])
    crops = int(data_cfg.get("crops_per_image", 1))
    if per_task % crops:  # depends on the process count: checked here, not in config.validate
        raise ConfigError(f"data.crops_per_image={crops} must divide the per-task batch {per_task}")
    # Each element holds `crops` crops of one decoded image: per_task / crops decodes per batch.
    per_task_ds = [_task_stream(data_cfg, task_id, name, seed=seed, mix=mix,
                                shard=(process_index, process_count))
                   .batch(per_task // crops, drop_remainder=True, batch_fn=concat_batches)
                   for task_id, name in enumerate(names)]
    if len(per_task_ds) == 1:
        ds = per_task_ds[0]
    else:  # equal weights: round-robin over tasks, then one sub-batch of each task per batch
        ds = grain.MapDataset.mix(per_task_ds).batch(len(names), drop_remainder=True,
                                                      batch_fn=concat_batches)
    sizes = mixed_crop_sizes(data_cfg)
    if sizes:  # after batching and mixing tasks: every example of a batch gets the batch's size
        ds = ds.map_with_index(SubCrop(sizes, int(data_cfg.crop_size), _seed32(seed, 4)))
    buffer = int(data_cfg.prefetch_buffer)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=buffer, prefetch_buffer_size=buffer))
    workers = num_workers(data_cfg, accelerator=accelerator)
    if workers > 0:
        from absl import flags  # grain's workers read absl flags: use their defaults if unparsed
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=max(1, buffer)))
    return iter(it_ds)


def mixed_crop_sizes(data_cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
    """data.crop_sizes as ints (empty: off)."""
    text = str(data_cfg.get("crop_sizes", "") or "")
    return tuple(int(x) for x in text.split(",") if x.strip())


class SubCrop:
    """Batch number → the batch cut to one of the mixed crop sizes (data.crop_sizes), drawn from
    (seed, batch number): a random window of each example (the same for x0, μ and mask), so a
    resumed iterator cuts the same sizes and windows."""

    def __init__(self, sizes: tuple[int, ...], crop: int, seed: int):
        self.sizes = sizes
        self.crop = crop
        self.seed = seed

    def __call__(self, index: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        size = int(self.sizes[int(rng.integers(len(self.sizes)))])
        if size == self.crop:
            return batch
        out = {k: [] for k in ("x0", "mu", "mask")}
        for i in range(len(batch["x0"])):
            top, left = (int(v) for v in rng.integers(0, self.crop - size + 1, size=2))
            for k in out:
                out[k].append(batch[k][i, top:top + size, left:left + size])
        return {**batch, **{k: np.stack(v) for k, v in out.items()}}


class EvalSource:
    """Random-access evaluation examples of one test set: {x0, mu: f32 [H, W, 3] in [−1, 1], mask:
    f32 [H, W, 1], name, task_name} (training batches carry the int `task` id instead);
    `degradation` names the synthetic degradation ("none" for real pairs), `spec` its parameters;
    `test_set` is the set's name (the task's for a single eval source), `label` its report name."""

    def __init__(self, task: str, source: ImageSource, degrader: Degrader | None,
                 spec: ml_collections.ConfigDict, test_set: str | None = None,
                 label: str | None = None):
        self.task = task
        self.source = source
        self.degrader = degrader
        self.spec = spec
        self.test_set = test_set or task  # a task's single eval source is named by the task
        self.label = label or task
        self.degradation = spec.degradation if degrader is not None else "none"
        self.seed = int(spec.seed)
        self.size = int(spec.eval_size)
        self.fit = spec.eval_fit

    def __len__(self) -> int:
        return len(self.source)

    def _fit(self, img: np.ndarray) -> np.ndarray:
        if self.fit == "crop":
            return np.ascontiguousarray(center_crop(img, self.size))
        h, w = fit_size(img.shape[0], img.shape[1], self.size)
        return img if (h, w) == img.shape[:2] else resize_float(img, h, w)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.label}: index {index} out of range [0, {len(self)})")
        item = self.source.read(index)
        x0 = self._fit(item.x0)
        if item.mu is not None:
            mu, mask = self._fit(item.mu), np.ones(x0.shape[:2], bool)
        else:
            mu, mask = self.degrader.degrade(x0, np.random.default_rng([self.seed % 2**32, index]),
                                             index=index)
        return {"x0": to_model_range(x0), "mu": to_model_range(mu), "mask": mask_array(mask),
                "name": item.name, "task_name": self.task}

    def known_parameters(self, index: int) -> dict:
        """The synthetic degradation's known parameters of example `index` (for classical
        baselines)."""
        if self.degrader is None:
            return {}
        rng = np.random.default_rng([self.seed % 2**32, index])  # the same draws as __getitem__
        return {"noise_sigma": float(self.spec.noise_sigma), "kernel": self.degrader.kernel(rng)}


def build_eval_sources(data_cfg: ml_collections.ConfigDict, *,
                       max_images: int = 0) -> dict[str, EvalSource]:
    """Report label → EvalSource of every test set: `<task>/<name>` for named eval sources, the task
    alone for a single one (sorted tasks, sorted sets, sorted images; the first `max_images` of each
    set if > 0)."""
    out = {}
    for task in task_names(data_cfg):
        for src in named_sources(data_cfg, task, "eval"):
            source, degrader, spec = _build(data_cfg, src, verify=True, max_images=int(max_images))
            out[src.label] = EvalSource(task, source, degrader, spec, src.name, src.label)
    return out
