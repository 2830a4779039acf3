"""`--mode=sample`: restore every image of a folder with a trained checkpoint, into another folder.

Named for its job, not its mode: "sample" also names `sde.sample` (the reverse loop), the
`Sampler` (sampler.py) that runs it at full resolution and `program.build_sampler` that builds one.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from rdbm_jax.runtime import atomic, distributed
from rdbm_jax import conditioning, config as config_lib, data, inference, program
from rdbm_jax.runtime import progress
from rdbm_jax.data import image_io
from rdbm_jax.errors import ConfigError, DataError, Interrupted, RDBMError, no_space_left
from rdbm_jax.runtime.paths import check_backend, is_remote
from rdbm_jax.sampler import check_size

log = logging.getLogger("rdbm_jax")


def _output_path(out_dir: str, in_dir: str, path: str) -> str:
    """The PNG that the restoration of `path` is written to (same relative path, extension .png)."""
    rel = os.path.splitext(os.path.relpath(path, in_dir))[0]
    return os.path.join(out_dir, rel + ".png")


def _input_mask(s: ml_collections.ConfigDict, path: str, img: np.ndarray) -> np.ndarray:
    """The degradation mask [H, W, 1] of one input: the file of the same relative name (any image
    extension) in `sample.mask_dir` (white = hole; the input's size, else refused), else inferred
    from the input's near-white pixels (`conditioning.infer_mask`), its coverage logged."""
    h, w = img.shape[:2]
    if not s.mask_dir:
        mask = conditioning.infer_mask(img, s.hole_threshold)
        share = float(mask.mean())
        if share == 0.0:
            log.warning("%s: no holes found (no near-white blobs at sample.hole_threshold=%g): the "
                        "output will be the input; lower the threshold or give sample.mask_dir",
                        data.shown(path), s.hole_threshold)
        else:
            log.info("%s: inferred holes cover %.2f %% of the image", data.shown(path), 100 * share)
        return mask
    mask_path = _mask_file(s.mask_dir, s.input_dir, path)
    mh, mw = data.probe_size(mask_path, "sample.mask_dir")
    if (mh, mw) != (h, w):  # a stretched mask would mark the wrong pixels: refused, not resized
        raise DataError(f"mask {data.shown(mask_path)} (sample.mask_dir) is {mh}x{mw} but its "
                        f"input {data.shown(path)} is {h}x{w}")
    return data.load_mask(mask_path, h, w, "sample.mask_dir")[..., None].astype(np.float32)


def _mask_file(mask_dir: str, in_dir: str, path: str) -> str:
    """The mask file of one input in `mask_dir` (same relative name, any image extension)."""
    stem = os.path.splitext(os.path.relpath(path, in_dir))[0]
    for ext in data.IMAGE_EXTENSIONS:
        candidate = os.path.join(mask_dir, stem + ext)
        if image_io.is_file(candidate):
            return candidate
    raise DataError(f"no mask for {data.shown(path)} in {data.shown(mask_dir)} (sample.mask_dir): "
                    f"expected {data.shown(stem + '.png')} or another image extension "
                    "(nothing was written)")


def name_seed(name: str) -> int:
    """A stable 31-bit seed of an input's relative name (the same on every run and machine)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[:4],
                          "big") >> 1


def check_folders(in_dir: str, out_dir: str) -> None:
    """Refuse an output folder that is the input folder or inside it, by real path (a symlink to the
    input folder would otherwise overwrite the inputs; a re-run would restore its own outputs).
    Object-store URLs have no links: they are compared as written, without a trailing '/'."""
    if is_remote(in_dir) or is_remote(out_dir):
        real_in, real_out = in_dir.rstrip("/"), out_dir.rstrip("/")
        inside = real_out.startswith(real_in + "/")
    else:
        real_in, real_out = os.path.realpath(in_dir), os.path.realpath(out_dir)
        inside = os.path.commonpath([real_in, real_out]) == real_in
    if real_out == real_in:
        raise ConfigError(f"sample.output_dir={out_dir!r} is the input folder sample.input_dir="
                          f"{in_dir!r} (real path {real_in}): choose another folder (nothing was "
                          "written)")
    if inside:
        raise ConfigError(f"sample.output_dir={out_dir!r} is inside sample.input_dir={in_dir!r} "
                          f"(real path {real_out}): a later run would restore its own outputs; "
                          "choose a folder outside it (nothing was written)")


def check_distinct_outputs(paths: list[str], out_dir: str, in_dir: str) -> None:
    """Refuse (DataError naming both) two inputs that would be written to the same output file."""
    first: dict[str, str] = {}
    for path in paths:
        out = os.path.normcase(_output_path(out_dir, in_dir, path))
        if out in first:
            raise DataError(f"{first[out]} and {path} would both be restored to {out}; rename one "
                            "(nothing was written)")
        first[out] = path


def run_restore_files(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`--mode=sample`: restore every image in sample.input_dir into sample.output_dir (PNG)."""
    config_lib.validate(cfg)
    s = cfg.sample
    if not s.input_dir or not s.output_dir:
        raise ConfigError("--mode=sample needs sample.input_dir and sample.output_dir")
    for key in ("input_dir", "mask_dir", "output_dir"):  # gs:// without gcsfs: one line, the key
        check_backend(s[key], f"sample.{key}")
    for key in ("input_dir", "mask_dir"):  # a missing folder a key names: a config error (exit 2)
        if s[key] and not image_io.is_folder(s[key]):
            raise ConfigError(f"sample.{key}: folder not found: {s[key]}")
    if not is_remote(s.output_dir) and os.path.lexists(s.output_dir) and \
            not os.path.isdir(s.output_dir):
        raise ConfigError(f"sample.output_dir={s.output_dir!r} is a file, not a folder: name a "
                          "folder (new or existing; nothing was written)")
    check_folders(s.input_dir, s.output_dir)
    data.set_max_pixels(cfg.data.max_image_pixels)
    paths = data.list_images(s.input_dir, key="sample.input_dir")
    check_distinct_outputs(paths, s.output_dir, s.input_dir)
    todo = [
        p for p in paths
        if s.overwrite or not image_io.exists(_output_path(s.output_dir, s.input_dir, p))
    ]
    if s.mask_dir and conditioning.uses_mask(cfg.model.condition):
        for path in todo:  # every mask is found before anything is restored or written
            _mask_file(s.mask_dir, s.input_dir, path)
    skipped = len(paths) - len(todo)
    # temporary files exist only beside local outputs (an object is published whole)
    local_out = not is_remote(s.output_dir) and os.path.isdir(s.output_dir)
    if local_out and distributed.is_main_process():
        stale = atomic.remove_stale(s.output_dir)
        if stale:
            log.info("removed %d temporary file(s) a killed run left in %s", stale, s.output_dir)
    if skipped:
        log.info("%d of %d outputs already exist in %s: kept (sample.overwrite=True to redo)",
                 skipped, len(paths), s.output_dir)
    done: list[str] = []  # the inputs whose output is written (complete), in order
    try:
        failed = _restore_all(cfg, workdir, todo, done)
    except KeyboardInterrupt:
        keep = "kept" if not s.overwrite else "kept with sample.overwrite=False"
        raise Interrupted(f"interrupted (Ctrl-C): {len(done)} of {len(todo)} output(s) were "
                          f"written to {s.output_dir}, each complete; run the same command again "
                          f"to restore the other {len(todo) - len(done)} (finished outputs are "
                          f"{keep})") from None
    saved = len(done)
    if distributed.is_main_process():
        log.info("restored %d image(s) into %s; %d kept, %d failed", saved, s.output_dir, skipped,
                 len(failed))
    if failed:
        raise DataError(
            f"{len(failed)} of {len(todo)} input(s) could not be restored (the rest were): " +
            "; ".join(failed))
    return {"restored": saved, "skipped": skipped, "failed": failed}


def _save_output(s: ml_collections.ConfigDict, path: str, img: np.ndarray, saved: int) -> str:
    """Write the restoration of `path`; "" when written, else why this file alone was not (the run
    goes on). A full disk stops the run (DataError naming the file, its folder and what is done)."""
    out = _output_path(s.output_dir, s.input_dir, path)
    try:
        gray = image_io.is_gray_file(path)  # gray in -> gray out
        data.save_image(out, image_io.to_gray(img) if gray else img)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(no_space_left(data.shown(out), data.shown(os.path.dirname(out)),
                                          f"the {saved} output(s)")) from None
        return f"{data.shown(path)}: its output {data.shown(out)} could not be written " \
               f"({e.strerror or e})"
    return ""


def _restore_all(cfg: ml_collections.ConfigDict, workdir: str, todo: list[str],
                 done: list[str]) -> list[str]:
    """Restore and write `todo`, appending each input whose output is written to `done`; returns
    one message per input that failed."""
    s = cfg.sample
    mesh = distributed.make_mesh()
    params = inference.load_trained(cfg, workdir, mesh, s.checkpoint,
                                  check_saved=config_lib.check_saved).params
    sampler = program.build_sampler(cfg, mesh)
    rng = jax.random.PRNGKey(cfg.seed)
    failed: list[str] = []
    pbar = progress.bar(len(todo), "restore")

    def loaded() -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """(path, image, mask) of every input, read one at a time: a bad input or mask skips that
        image (one error line naming the file); the rest are restored."""
        for path in todo:
            try:
                img = data.load_image(path)
                check_size(img.shape[0], img.shape[1], data.shown(path))
                mask = _input_mask(s, path, img) if sampler.uses_mask else None
            except RDBMError as e:
                log.error("skipped: %s", e)
                failed.append(str(e))  # names the file
                pbar.update(1)
                continue
            yield path, img, mask

    # WHY one image a call when the loop draws noise: its key is then the image's name (a stable
    # hash), so that a re-run keeping finished outputs restores the others as an uninterrupted run
    # did (a batch's noise would depend on which images share the batch).
    size = 1 if sampler.draws_noise else s.batch_size
    for batch in data.same_size_batches(loaded(), size, lambda item: item[1].shape):
        masks = np.stack([m for _, _, m in batch]) if sampler.uses_mask else None
        key = jax.random.fold_in(rng, name_seed(image_io.relative_stem(batch[0][0], s.input_dir)))
        out = sampler(params, np.stack([img for _, img, _ in batch]), key, mask=masks)
        for (path, _, _), img in zip(batch, out):
            if distributed.is_main_process():
                problem = _save_output(s, path, img, len(done))
                if problem:  # this file alone (a name the file system refuses, …): the rest go on
                    log.error("skipped: %s", problem)
                    failed.append(problem)
                else:
                    done.append(path)
            pbar.update(1)
    pbar.close()
    return failed
