"""`--mode=sample`: restore every image of a folder with a trained checkpoint, into another folder."""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from rdbm_jax import conditioning, config as config_lib, data, distributed, program, progress
from rdbm_jax.data import image_io
from rdbm_jax.errors import ConfigError, DataError, RDBMError
from rdbm_jax.sampler import check_size

log = logging.getLogger("rdbm_jax")


def _output_path(out_dir: str, in_dir: str, path: str) -> str:
    """The PNG that the restoration of `path` is written to (same relative path, extension .png)."""
    rel = os.path.splitext(os.path.relpath(path, in_dir))[0]
    return os.path.join(out_dir, rel + ".png")


def _input_mask(mask_dir: str, in_dir: str, path: str, img: np.ndarray) -> np.ndarray:
    """The degradation mask [H, W, 1] of one input: the file of the same relative name (any image
    extension) in `mask_dir` (white = hole), else inferred from the input's pure-fill pixels."""
    if not mask_dir:
        return conditioning.infer_mask(img)
    return data.load_mask(_mask_file(mask_dir, in_dir, path), img.shape[0], img.shape[1],
                          "sample.mask_dir")[..., None].astype(np.float32)


def _mask_file(mask_dir: str, in_dir: str, path: str) -> str:
    """The mask file of one input in `mask_dir` (same relative name, any image extension)."""
    stem = os.path.splitext(os.path.relpath(path, in_dir))[0]
    for ext in data.IMAGE_EXTENSIONS:
        candidate = os.path.join(mask_dir, stem + ext)
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"no mask for {path} in {mask_dir} (sample.mask_dir): expected {stem}.png or "
                    f"another image extension (nothing was written)")


def check_distinct_outputs(paths: list[str], out_dir: str, in_dir: str) -> None:
    """Refuse (DataError naming both) two inputs that would be written to the same output file."""
    first: dict[str, str] = {}
    for path in paths:
        out = os.path.normcase(_output_path(out_dir, in_dir, path))
        if out in first:
            raise DataError(f"{first[out]} and {path} would both be restored to {out}; rename one "
                            "(nothing was written)")
        first[out] = path


def run_sample(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`--mode=sample`: restore every image in sample.input_dir into sample.output_dir (PNG)."""
    config_lib.validate(cfg)
    s = cfg.sample
    if not s.input_dir or not s.output_dir:
        raise ConfigError("--mode=sample needs sample.input_dir and sample.output_dir")
    if os.path.abspath(s.input_dir) == os.path.abspath(s.output_dir):
        raise ConfigError("sample.output_dir must differ from sample.input_dir")
    for key in ("input_dir", "mask_dir"):  # a missing folder a key names: a config error (exit 2)
        if s[key] and not os.path.isdir(s[key]):
            raise ConfigError(f"sample.{key}: folder not found: {s[key]}")
    paths = data.list_images(s.input_dir, key="sample.input_dir")
    check_distinct_outputs(paths, s.output_dir, s.input_dir)
    todo = [p for p in paths if s.overwrite or not os.path.exists(_output_path(s.output_dir, s.input_dir, p))]
    if s.mask_dir and conditioning.uses_mask(cfg.model.condition):
        for path in todo:  # every mask is found before anything is restored or written
            _mask_file(s.mask_dir, s.input_dir, path)
    skipped = len(paths) - len(todo)
    if skipped:
        log.info("%d of %d outputs already exist in %s: kept (sample.overwrite=True to redo)",
                 skipped, len(paths), s.output_dir)
    mesh = distributed.make_mesh()
    params = program.load_trained(cfg, workdir, mesh, s.checkpoint).params
    sampler = program.sampler(cfg, mesh)
    rng = jax.random.PRNGKey(cfg.seed)
    failed: list[str] = []
    written = saved = 0  # restored images / files written (by process 0)
    pending: list[tuple[str, np.ndarray]] = []
    pbar = progress.bar(len(todo), "restore")

    def flush():
        nonlocal written, saved
        if not pending:
            return
        masks = np.stack([_input_mask(s.mask_dir, s.input_dir, path, img) for path, img in pending]) \
            if sampler.uses_mask else None
        out = sampler(params, np.stack([img for _, img in pending]), jax.random.fold_in(rng, written),
                       mask=masks)
        for (path, _), img in zip(pending, out):
            if distributed.is_main_process():
                gray = image_io.is_gray_file(path)  # gray in → gray out
                data.save_image(_output_path(s.output_dir, s.input_dir, path),
                                image_io.to_gray(img) if gray else img)
                saved += 1
            written += 1
            pbar.update(1)
        pending.clear()

    for path in todo:
        try:
            img = data.load_image(path)
            check_size(img.shape[0], img.shape[1], path)
        except RDBMError as e:
            log.error("skipped: %s", e)
            failed.append(str(e))  # names the file
            pbar.update(1)
            continue
        if pending and (pending[0][1].shape != img.shape or len(pending) == s.batch_size):
            flush()
        pending.append((path, img))
    flush()
    pbar.close()
    if distributed.is_main_process():
        log.info("restored %d image(s) into %s; %d kept, %d failed", saved, s.output_dir, skipped, len(failed))
    if failed:
        raise DataError(f"{len(failed)} of {len(todo)} input(s) could not be restored (the rest were): "
                        + "; ".join(failed))
    return {"restored": saved, "skipped": skipped, "failed": failed}
