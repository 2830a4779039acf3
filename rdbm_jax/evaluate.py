"""`--mode=eval` and the periodic validation: restore test splits in order and score them."""
from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np
from PIL import Image

from rdbm_jax import config as config_lib, data, distributed, metrics
from rdbm_jax.restore import Restorer, from_config

log = logging.getLogger("rdbm_jax")

GRID_HEIGHT = 192  # every cell of a PNG grid is resized to this height
SCORES = ("psnr", "ssim", "psnr_input", "ssim_input")
SSIM_PROTOCOLS = {  # eval.ssim_window → what it computes (written into every metrics file)
    "gaussian": "skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
                "use_sample_covariance=False), mean over channels",
    "uniform": "skimage structural_similarity default call (7x7 uniform window, sample covariance) "
               "per channel, averaged (DGSolver)",
}


def batches_by_shape(source: Any, batch_size: int) -> Iterable[list[int]]:
    """Consecutive indices of a source, grouped into batches of equal image shape (order kept)."""
    group: list[int] = []
    shape = None
    for i in range(len(source)):
        s = source[i]["mu"].shape
        if group and (s != shape or len(group) == batch_size):
            yield group
            group = []
        group.append(i)
        shape = s
    if group:
        yield group


def restore_source(restorer: Restorer, params: Any, source: Any, batch_size: int,
                   rng: jax.Array) -> Iterable[tuple[dict, np.ndarray]]:
    """Yield (example, restored [H, W, 3] in [-1, 1]) for every example of a source, in order."""
    for b, idx in enumerate(batches_by_shape(source, batch_size)):
        examples = [source[i] for i in idx]
        out = restorer(params, np.stack([e["mu"] for e in examples]), jax.random.fold_in(rng, b))
        yield from zip(examples, out)


def score_pair(restored: np.ndarray, target: np.ndarray, ev: ml_collections.ConfigDict) -> dict[str, float]:
    """PSNR and SSIM of one image (inputs in [-1, 1]) under the `eval` section's protocol."""
    a, b = metrics.to_unit(restored), metrics.to_unit(target)
    kw = dict(color=ev.color, crop_border=ev.crop_border, quantize=ev.quantize)
    return {"psnr": float(metrics.psnr(a, b, **kw)),
            "ssim": float(metrics.ssim(a, b, window=ev.ssim_window, **kw))}


def protocol(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The evaluation protocol, written next to every reported number."""
    ev = cfg.eval
    return {"color": ev.color, "crop_border": ev.crop_border, "quantize": ev.quantize,
            "ssim_window": ev.ssim_window, "ssim": SSIM_PROTOCOLS[ev.ssim_window],
            "data_range": "[0, 1]", "sample_num_steps": cfg.sample.num_steps, "eta": cfg.sample.eta,
            "clip": cfg.sample.clip, "use_ema": cfg.sample.use_ema,
            "overall": "mean over tasks of the per-task mean"}


def to_cell(img: np.ndarray) -> np.ndarray:
    """[-1, 1] image → uint8 resized to GRID_HEIGHT rows."""
    u8 = np.asarray(np.rint(np.asarray(metrics.to_unit(img)) * 255), np.uint8)
    h, w = u8.shape[:2]
    return np.asarray(Image.fromarray(u8).resize((max(1, round(w * GRID_HEIGHT / h)), GRID_HEIGHT),
                                                 Image.BICUBIC))


def make_grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Rows of [-1, 1] images (e.g. μ │ restored │ x0) → one uint8 grid, white gaps."""
    white = np.full((GRID_HEIGHT, gap, 3), 255, np.uint8)
    rendered = [np.concatenate([part for c in row for part in (to_cell(c), white)][:-1], axis=1)
                for row in rows]
    width = max(r.shape[1] for r in rendered)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rendered]
    return np.concatenate(padded, axis=0)[:-gap]


def _fid_input(img: np.ndarray, quantize: str) -> jax.Array:
    """[-1, 1] image → [1, H, W, 3] in [0, 1] (uint8 levels when quantising, as FID from PNG files)."""
    unit = metrics.to_unit(img[None])
    mode = metrics.quantize_mode(quantize)
    return unit if mode == "none" else metrics.quantize_levels(unit, mode=mode)


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else float("nan")


class Perceptual:
    """LPIPS and FID when their weights are configured; skipped with a one-line notice otherwise."""

    def __init__(self, ev: ml_collections.ConfigDict):
        wanted = set(config_lib.parse_list(ev, "metrics", str))
        self.lpips: Callable | None = None
        self.inception: Callable | None = None
        self.ref_stats = None
        if "lpips" in wanted:
            if ev.lpips_weights:
                from rdbm_jax import perceptual
                self.lpips = perceptual.make_lpips(ev.lpips_weights, ev.lpips_net)
            else:
                log.warning("LPIPS skipped: no weights (set eval.lpips_weights to a converted .npz)")
        if "fid" in wanted:
            if ev.fid_weights:
                from rdbm_jax import perceptual
                from rdbm_jax.perceptual import fid
                self.inception = perceptual.make_inception(ev.fid_weights)
                self.ref_stats = fid.load_stats(ev.fid_ref_stats) if ev.fid_ref_stats else None
            else:
                log.warning("FID skipped: no weights (set eval.fid_weights to a converted .npz)")

    def fid(self, restored_features: list[np.ndarray], target_features: list[np.ndarray]) -> float:
        """FID of restored images against the reference statistics (or the ground truths)."""
        from rdbm_jax.perceptual import fid
        mu1, s1 = fid.compute_statistics(np.concatenate(restored_features))
        mu2, s2 = self.ref_stats if self.ref_stats is not None else fid.compute_statistics(
            np.concatenate(target_features))
        return float(fid.frechet_distance(mu1, s1, mu2, s2))


def score_sources(restorer: Restorer, params: Any, sources: dict[str, Any], cfg: ml_collections.ConfigDict,
                  rng: jax.Array, perceptual: Perceptual | None = None,
                  on_image: Callable[[str, dict, np.ndarray], None] | None = None
                  ) -> tuple[list[dict], dict[str, dict[str, float]], dict[str, list]]:
    """(per-image rows, per-task means + "overall", grid rows per task) in deterministic order."""
    rows_all: list[dict] = []
    per_task: dict[str, dict[str, float]] = {}
    grids: dict[str, list] = {}
    for task, source in sources.items():
        rows, feats_out, feats_gt = [], [], []
        grids[task] = []
        for ex, out in restore_source(restorer, params, source, cfg.sample.batch_size, rng):
            r = {"task": task, "name": ex["name"], **score_pair(out, ex["x0"], cfg.eval)}
            r.update({f"{k}_input": v for k, v in score_pair(ex["mu"], ex["x0"], cfg.eval).items()})
            if perceptual and perceptual.lpips:
                r["lpips"] = float(np.asarray(perceptual.lpips(out[None], ex["x0"][None]))[0])
            if perceptual and perceptual.inception:  # Inception takes [0, 1], as pytorch-fid
                feats_out.append(np.asarray(perceptual.inception(_fid_input(out, cfg.eval.quantize))))
                feats_gt.append(np.asarray(perceptual.inception(_fid_input(ex["x0"], cfg.eval.quantize))))
            rows.append(r)
            if len(grids[task]) < cfg.eval.num_grid_images:
                grids[task].append([ex["mu"], out, ex["x0"]])
            if on_image:
                on_image(task, ex, out)
        per_task[task] = {k: _mean(rows, k) for k in SCORES + ("lpips",) if any(k in r for r in rows)}
        per_task[task]["num_images"] = len(rows)
        if feats_out:
            per_task[task]["fid"] = perceptual.fid(feats_out, feats_gt)
        rows_all.extend(rows)
    keys = sorted({k for t in per_task.values() for k in t} - {"num_images"})
    per_task["overall"] = {k: _mean(list(per_task.values()), k) for k in keys}  # mean over tasks
    per_task["overall"]["num_images"] = len(rows_all)
    return rows_all, per_task, grids


class Validator:
    """Periodic validation during training: EMA restoration of held-out images, PSNR/SSIM, a grid."""

    def __init__(self, model: Any, schedule: Any, cfg: ml_collections.ConfigDict, mesh: Any,
                 sources: dict[str, Any]):
        self.cfg, self.sources = cfg, sources
        self.restorer = from_config(model, schedule, cfg, mesh)
        log.info("validation protocol (val/* scores): %s", json.dumps(protocol(cfg)))

    def __call__(self, params: Any, step: int) -> tuple[dict[str, float], np.ndarray]:
        _, per_task, grids = score_sources(self.restorer, params, self.sources, self.cfg,
                                           jax.random.PRNGKey(self.cfg.seed + 2))
        scores = {f"val/{k}": v for k, v in per_task["overall"].items() if k in SCORES}
        if len(self.sources) > 1:
            scores.update({f"val/{t}/{k}": v for t, s in per_task.items() if t != "overall"
                           for k, v in s.items() if k in SCORES})
        rows = [r for g in grids.values() for r in g][: self.cfg.eval.num_grid_images]
        return scores, make_grid(rows).astype(np.float32) / 255.0


def write_report(out_dir: str, rows: list[dict], per_task: dict, info: dict) -> None:
    """`metrics.json` (per task + overall, with the protocol) and `per_image.csv`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({**info, "tasks": {k: v for k, v in per_task.items() if k != "overall"},
                   "overall": per_task["overall"]}, f, indent=2)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def run_eval(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`--mode=eval`: restore every configured test split, write eval/metrics.json, per_image.csv, grids."""
    from rdbm_jax.inference import load_trained

    config_lib.validate(cfg)
    mesh = distributed.make_mesh()
    model, schedule, params, step = load_trained(cfg, workdir, mesh, cfg.sample.checkpoint)
    sources = data.build_eval_sources(cfg.data, max_images=cfg.eval.max_images)
    restorer = from_config(model, schedule, cfg, mesh)
    rows, per_task, grids = score_sources(restorer, params, sources, cfg, jax.random.PRNGKey(cfg.seed),
                                          Perceptual(cfg.eval))
    out_dir = os.path.join(workdir, "eval")
    if distributed.is_main_process():
        write_report(out_dir, rows, per_task, {"step": step, "protocol": protocol(cfg)})
        for task, g in grids.items():
            if g:
                Image.fromarray(make_grid(g)).save(os.path.join(out_dir, f"grid_{task}.png"))
        for task, s in per_task.items():
            log.info("eval %s: %s", task, "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in s.items()))
    return per_task
