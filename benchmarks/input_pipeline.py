"""Input pipeline throughput: training images per CPU-second, its decode / crop / degrade split,
and per-worker rates, on files generated here (no download).

    python -m benchmarks.input_pipeline [--batches=12] [--workers=0,2] [--out=pipeline.json]

Two workloads, as the paper's datasets: inpainting on 1024² PNGs (clean images, masks drawn per
crop) and 1280x720 JPEG pairs (GoPro-like), 256² crops, batch 16. Each is measured with the
project's own training iterator (`data.build_train_iterator`) under every remedy setting
(crops_per_image, decode_cache_mib). CPU-seconds (time.process_time, and the worker processes'
CPU times for num_workers > 0) make the figures robust to other jobs sharing the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ml_collections
import numpy as np
import psutil
from PIL import Image

from benchmarks import measure
from rdbm_jax.data import pipeline
from rdbm_jax.data.spec import source_spec, task_spec

CROP, BATCH = 256, 16


def _photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colour fields plus fine noise: compresses like a photograph, not like noise."""
    coarse = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def write_files(folder: str, count: int) -> dict[str, str]:
    """`count` 1024² PNGs and `count` 1280x720 JPEG pairs (quality 90; LQ = a blurred GT)."""
    rng = np.random.default_rng(0)
    dirs = {k: os.path.join(folder, k) for k in ("png", "lq", "gt")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    for i in range(count):
        png = Image.fromarray(_photo_like(rng, 1024, 1024))
        png.save(os.path.join(dirs["png"], f"{i:03d}.png"))
        gt = Image.fromarray(_photo_like(rng, 720, 1280))
        gt.save(os.path.join(dirs["gt"], f"{i:03d}.jpg"), quality=90)
        gt.reduce(2).resize(gt.size).save(os.path.join(dirs["lq"], f"{i:03d}.jpg"), quality=90)
    return dirs


def data_config(workload: str, dirs: dict[str, str], **keys) -> ml_collections.ConfigDict:
    """The `data` section of one workload (num_workers, crops_per_image, decode_cache_mib:
    `keys`)."""
    if workload == "inpaint_png":
        train = source_spec(kind="clean", dir=dirs["png"], degradation="inpaint")
    else:
        train = source_spec(kind="paired", lq_dir=dirs["lq"], gt_dir=dirs["gt"])
    cfg = dict(tasks=ml_collections.ConfigDict(dict(main=task_spec(train=train, eval=train))),
               root="", train_mix="size", crop_size=CROP, flip="both", num_workers=0,
               prefetch_buffer=2, skip_bad_files=False, crops_per_image=1, decode_cache_mib=0)
    cfg.update(keys)
    return ml_collections.ConfigDict(cfg)


def _cpu(workers: list[psutil.Process]) -> float:
    """CPU seconds (user + system) of this process and the given worker processes."""
    total = time.process_time()
    for p in workers:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def iterator_rate(data_cfg: ml_collections.ConfigDict, batches: int) -> dict[str, float]:
    """Images per CPU-second (and per wall second) of the training iterator after 2 warm-up
    batches."""
    it = pipeline.build_train_iterator(data_cfg, global_batch_size=BATCH, seed=0, process_index=0,
                                       process_count=1)
    for _ in range(2):
        next(it)
    workers = psutil.Process().children(recursive=True) if data_cfg.num_workers else []
    cpu0, wall0 = _cpu(workers), time.perf_counter()
    for _ in range(batches):
        next(it)
    cpu, wall = _cpu(workers) - cpu0, time.perf_counter() - wall0
    if hasattr(it, "close"):
        it.close()  # stop the worker processes before the next setting
    n = batches * BATCH
    # With workers: every CPU-second counts (the workers' and the main process's, which only
    # unpickles batches), so img_per_cpu_s is the rate one core gives when it runs one worker.
    return {"img_per_cpu_s": round(n / cpu, 1), "img_per_wall_s": round(n / wall, 1)}


def split(data_cfg: ml_collections.ConfigDict, samples: int) -> dict[str, float]:
    """CPU milliseconds per crop in decode, crop (+ float conversion) and degrade, one at a time."""
    src = pipeline.named_sources(data_cfg, "main", "train")[0]
    source, degrader, _ = pipeline._build(data_cfg, src)
    fn = pipeline.TrainExample(source, degrader, 0, CROP, "both", False, src.key)
    rng = np.random.default_rng(0)
    t = {"decode": 0.0, "crop": 0.0, "degrade": 0.0}
    leading = source.LEADING_ROWS  # as TrainExample: a PNG decoded down to the window's last row
    corner: list[tuple[int, int]] = []

    def rows(h: int, w: int) -> int:
        corner[:] = [fn.draw_window(h, w, rng)]
        return min(h, corner[0][0] + CROP)

    for i in range(samples):
        c0 = time.process_time()
        item = fn.read(i % len(source), rng, rows if leading else None)
        c1 = time.process_time()
        x0, mu = fn.crop_window(item, rng, corner[0] if leading else None)
        c2 = time.process_time()
        fn.finish(x0, mu, rng)
        c3 = time.process_time()
        t["decode"] += c1 - c0
        t["crop"] += c2 - c1
        t["degrade"] += c3 - c2  # and the [-1, 1] conversion of the crop
    return {f"{k}_ms": round(1e3 * v / samples, 2) for k, v in t.items()}


SETTINGS = {  # remedy → the data keys it sets (each an honest config choice)
    "default": {},
    "crops_per_image=4": {"crops_per_image": 4},
    "decode_cache": {"decode_cache_mib": 4096},
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=16, help="files of each workload")
    p.add_argument("--batches", type=int, default=12, help="timed batches per setting")
    p.add_argument("--workers", default="0", help="comma-separated num_workers values to time")
    p.add_argument("--out", default="")
    opts = p.parse_args(argv)
    dirs = write_files(tempfile.mkdtemp(prefix="rdbm_pipeline_"), opts.files)
    results: dict = {"crop": CROP, "batch": BATCH, "cpus": os.cpu_count(), "workloads": {}}
    for workload in ("inpaint_png", "pairs_jpeg"):
        res = {"split_default": split(data_config(workload, dirs), 2 * opts.files)}
        print(workload, "split", json.dumps(res["split_default"]), flush=True)
        for name, keys in SETTINGS.items():
            for w in (int(x) for x in opts.workers.split(",")):
                label = f"{name}, num_workers={w}"
                cfg = data_config(workload, dirs, num_workers=w, **keys)
                res[label] = iterator_rate(cfg, opts.batches)
                print(workload, label, json.dumps(res[label]), flush=True)
        results["workloads"][workload] = res
    if opts.out:
        measure.write_json(opts.out, results)
    return results


if __name__ == "__main__":
    main()
