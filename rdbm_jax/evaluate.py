"""`--mode=eval` and the periodic validation: restore test splits in order and score them.

Reports are keyed by label: a task with one eval source by its name, each named test set by
`<task>/<set>` (then its task, the mean over its test sets); "overall" is the mean over tasks.
"""
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

from rdbm_jax import baselines, config as config_lib, data, distributed, metrics, program, progress
from rdbm_jax.perceptual import fid as fid_lib, make_inception, make_lpips
from rdbm_jax import diagnostic
from rdbm_jax.sampler import Sampler

log = logging.getLogger("rdbm_jax")

GRID_HEIGHT = 192  # every cell of a PNG grid is resized to this height
# Scores of the model, then of the classical baseline and of the degraded input on the same images.
# *_masked: inside the degradation mask only (inpainting holes); psnr_kept: outside it, against the
# input μ (how untouched the known pixels come back; KEPT_CAP dB = identical at the protocol's precision).
WHOLE = ("psnr", "ssim")
MASKED = ("psnr_masked", "ssim_masked")
KEPT = ("psnr_kept",)
SCORES = tuple(f"{k}{sfx}" for k in WHOLE + MASKED for sfx in ("", "_baseline", "_input")) + tuple(
    f"{k}{sfx}" for k in KEPT for sfx in ("", "_baseline"))
KEPT_CAP = 100.0
SSIM_PROTOCOLS = {  # eval.ssim_window → what it computes (written into every metrics file)
    "gaussian": "skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
                "use_sample_covariance=False), mean over channels",
    "uniform": "skimage structural_similarity default call (7x7 uniform window, sample covariance) "
               "per channel, averaged (DGSolver)",
}


def batches_by_shape(source: Any, batch_size: int) -> Iterable[list[tuple[int, dict]]]:
    """Consecutive (index, example) pairs of a source, grouped into batches of equal image shape
    (order kept; every example is read once)."""
    group: list[tuple[int, dict]] = []
    for i in range(len(source)):
        example = source[i]
        if group and (example["mu"].shape != group[0][1]["mu"].shape or len(group) == batch_size):
            yield group
            group = []
        group.append((i, example))
    if group:
        yield group


def restore_source(sampler: Sampler, params: Any, source: Any, batch_size: int,
                   rng: jax.Array) -> Iterable[tuple[int, dict, np.ndarray]]:
    """Yield (index, example, restored [H, W, 3] in [-1, 1]) for every example of a source, in order."""
    for b, group in enumerate(batches_by_shape(source, batch_size)):
        idx, examples = zip(*group)
        masks = [e.get("mask") for e in examples]  # sources without masks: inferred where needed
        out = sampler(params, np.stack([e["mu"] for e in examples]), jax.random.fold_in(rng, b),
                      mask=None if any(m is None for m in masks) else np.stack(masks),
                      task=examples[0].get("task_name"))  # one source: one task (precond's ρ)
        yield from zip(idx, examples, out)


def score_pair(restored: np.ndarray, target: np.ndarray, ev: ml_collections.ConfigDict,
               mask: np.ndarray | None = None) -> dict[str, float]:
    """PSNR and SSIM of one image (inputs in [-1, 1]) under the `eval` section's protocol; with a
    partial mask also inside it (`*_masked`)."""
    a, b = metrics.to_unit(restored), metrics.to_unit(target)
    kw = _protocol_kw(ev)
    out = {"psnr": float(metrics.psnr(a, b, **kw)),
           "ssim": float(metrics.ssim(a, b, window=ev.ssim_window, **kw))}
    if is_partial(mask):
        out["psnr_masked"] = float(metrics.psnr_masked(a, b, mask, **kw))
        out["ssim_masked"] = float(metrics.ssim_masked(a, b, mask, window=ev.ssim_window, **kw))
    return out


def _protocol_kw(ev: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `eval` section's colour, border crop and quantisation as metric keyword arguments."""
    return dict(color=ev.color, crop_border=ev.crop_border, quantize=ev.quantize)


def is_partial(mask: np.ndarray | None) -> bool:
    """Whether a degradation mask marks some pixels and not others (inpainting)."""
    return mask is not None and bool(np.any(mask > 0.5)) and bool(np.any(mask <= 0.5))


def kept_psnr(restored: np.ndarray, mu: np.ndarray, mask: np.ndarray,
              ev: ml_collections.ConfigDict) -> float:
    """PSNR outside the mask against the input μ, capped at KEPT_CAP dB (identical pixels)."""
    value = float(metrics.psnr_masked(metrics.to_unit(restored), metrics.to_unit(mu), 1.0 - mask,
                                      **_protocol_kw(ev)))
    return min(value, KEPT_CAP)


class Baselines:
    """The classical baseline of every evaluation example (rdbm_jax/baselines.py) and the scores that
    never change between validations (baseline's and input's), computed once per example."""

    def __init__(self, true_mask: bool):
        self.true_mask = true_mask  # inpainting: the true mask, or the one inferred from fill pixels
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        self._scores: dict[tuple[str, int], dict[str, float]] = {}

    def name(self, source: Any) -> str:
        """What the baseline of a source is, as reports print it."""
        return baselines.describe(getattr(source, "degradation", "none"), self.true_mask)

    def __call__(self, label: str, source: Any, index: int, example: dict) -> np.ndarray:
        """The baseline restoration of example `index` of `source` (the test set `label`), in [-1, 1]."""
        key = (label, index)
        if key not in self._cache:
            known = source.known_parameters(index) if hasattr(source, "known_parameters") else {}
            out = baselines.restore(np.asarray(metrics.to_unit(example["mu"])),
                                    getattr(source, "degradation", "none"),
                                    mask=example.get("mask") if self.true_mask else None, **known)
            self._cache[key] = out * 2.0 - 1.0
        return self._cache[key]

    def reference_scores(self, label: str, source: Any, index: int, example: dict,
                         ev: ml_collections.ConfigDict) -> dict[str, float]:
        """`*_baseline`, `*_input` (and `psnr_kept_baseline`) of one example under the `ev` protocol."""
        key = (label, index)
        if key not in self._scores:
            base, mask = self(label, source, index, example), example.get("mask")
            out = {f"{k}_baseline": v for k, v in score_pair(base, example["x0"], ev, mask).items()}
            out.update({f"{k}_input": v for k, v in score_pair(example["mu"], example["x0"], ev, mask).items()})
            if is_partial(mask):
                out["psnr_kept_baseline"] = kept_psnr(base, example["mu"], mask, ev)
            self._scores[key] = out
        return self._scores[key]


def summary_line(scores: dict[str, float], prefix: str = "") -> str:
    """'psnr 24.10 | baseline 22.31 | input 10.59; ssim …' for the scores present (one line)."""
    parts = []
    for key in WHOLE + MASKED + KEPT:
        if f"{prefix}{key}" not in scores:
            continue
        values = [f"{key} {scores[prefix + key]:.4g}"]
        values += [f"{sfx} {scores[prefix + key + '_' + sfx]:.4g}" for sfx in ("baseline", "input")
                   if f"{prefix}{key}_{sfx}" in scores]
        parts.append(" | ".join(values))
    return "; ".join(parts)


def protocol(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The evaluation protocol, written next to every reported number."""
    ev = cfg.eval
    return {"color": ev.color, "crop_border": ev.crop_border, "quantize": ev.quantize,
            "ssim_window": ev.ssim_window, "ssim": SSIM_PROTOCOLS[ev.ssim_window],
            "data_range": "[0, 1]", "sample_num_steps": cfg.sample.num_steps, "eta": cfg.sample.eta,
            "clip": cfg.sample.clip, "use_ema": cfg.sample.use_ema, "condition": cfg.model.condition,
            "test_set": "mean over the test set's images",
            "task": PER_TASK,
            "overall": "mean over tasks of the per-task mean",
            "baseline": "a classical method per degradation on the same inputs (rdbm_jax/baselines.py); "
                        "*_input scores the degraded input itself",
            "masked": "*_masked: inside the degradation mask (inpainting holes) only; psnr_kept: outside "
                      f"it against the input (capped at {KEPT_CAP:g} dB = identical)"}


def to_cell(img: np.ndarray) -> np.ndarray:
    """[-1, 1] image → uint8 resized to GRID_HEIGHT rows."""
    u8 = data.to_uint8(img)
    h, w = u8.shape[:2]
    return np.asarray(Image.fromarray(u8).resize((max(1, round(w * GRID_HEIGHT / h)), GRID_HEIGHT),
                                                 Image.BICUBIC))


GRID_COLUMNS = ("degraded input", "classical baseline", "restored", "ground truth")  # every grid row
HEADER_HEIGHT = 24  # the white strip with the column labels


def make_grid(rows: list[list[np.ndarray]], gap: int = 4, labels: tuple[str, ...] = GRID_COLUMNS) -> np.ndarray:
    """Rows of [-1, 1] images (μ │ baseline │ restored │ x0) → one uint8 grid, white gaps, column labels on top."""
    white = np.full((GRID_HEIGHT, gap, 3), 255, np.uint8)
    cells = [[to_cell(c) for c in row] for row in rows]
    rendered = [np.concatenate([part for c in row for part in (c, white)][:-1], axis=1) for row in cells]
    width = max(r.shape[1] for r in rendered)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rendered]
    grid = np.concatenate(padded, axis=0)[:-gap]
    return np.concatenate([_header(labels, [c.shape[1] for c in cells[0]], width, gap), grid]) if labels else grid


def _header(labels: tuple[str, ...], widths: list[int], total: int, gap: int) -> np.ndarray:
    """A white strip with each label centred over its column of the first row."""
    from PIL import ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    strip = Image.new("RGB", (total, HEADER_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    x = 0
    for label, w in zip(labels, widths):
        draw.text((x + w / 2, HEADER_HEIGHT / 2), label, fill="black", font=font, anchor="mm")
        x += w + gap
    return np.asarray(strip)


def _fid_input(img: np.ndarray, quantize: str) -> jax.Array:
    """[-1, 1] image → [1, H, W, 3] in [0, 1] (uint8 levels when quantising, as FID from PNG files)."""
    unit = metrics.to_unit(img[None])
    mode = metrics.quantize_mode(quantize)
    return unit if mode == "none" else metrics.quantize_levels(unit, mode=mode)


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else float("nan")


PER_TASK = ("mean over the task's test sets of each set's mean (sets weigh equally, whatever their size); "
            "a task with one eval source: the mean over its images")
_NOT_AVERAGED = ("num_images", "num_test_sets", "baseline")  # report-entry keys that are no scores


def is_test_set(label: str) -> bool:
    """Whether a report label names one of a task's named test sets (`<task>/<set>`)."""
    return "/" in label


def task_of(label: str) -> str:
    """The task of a report label: 'derain/rain100h' → 'derain'; a task's own label is its name."""
    return label.split("/", 1)[0]


def set_of(label: str) -> str:
    """The test set of a named-set label: 'derain/rain100h' → 'rain100h'."""
    return label.split("/", 1)[1]


def _mean_over(entries: list[dict]) -> dict[str, float]:
    """The mean of every score over report entries (each entry weighs once)."""
    keys = sorted({k for e in entries for k in e} - set(_NOT_AVERAGED))
    return {k: _mean(entries, k) for k in keys}


def by_task(per_set: dict[str, dict]) -> dict[str, dict]:
    """Per-test-set entries → report entries: each named test set, then its task (mean over its sets);
    a task with one eval source as it is; then "overall" (mean over tasks)."""
    out: dict[str, dict] = {}
    for task in dict.fromkeys(task_of(label) for label in per_set):
        labels = [label for label in per_set if task_of(label) == task]
        if labels == [task]:
            out[task] = per_set[task]
            continue
        sets = [per_set[label] for label in labels]
        out.update({label: per_set[label] for label in labels})
        names = {s["baseline"] for s in sets}
        out[task] = {**_mean_over(sets), "num_images": sum(s["num_images"] for s in sets),
                     "num_test_sets": len(sets), "baseline": names.pop() if len(names) == 1 else "per test set"}
    tasks = [v for label, v in out.items() if not is_test_set(label)]
    out["overall"] = {**_mean_over(tasks), "num_images": sum(t["num_images"] for t in tasks)}
    return out


def title(label: str, entry: dict) -> str:
    """A report entry's name as logs and tables print it (a task with named test sets says it averages them)."""
    n = entry.get("num_test_sets")
    return f"{label} [mean over {n} test set{'s' if n > 1 else ''}]" if n else label


class Perceptual:
    """LPIPS and FID when their weights are configured; skipped with a one-line notice otherwise."""

    def __init__(self, ev: ml_collections.ConfigDict):
        wanted = set(config_lib.parse_list(ev, "metrics", str))
        self.lpips: Callable | None = None
        self.inception: Callable | None = None
        self.ref_stats = None
        if "lpips" in wanted:
            if ev.lpips_weights:
                self.lpips = make_lpips(ev.lpips_weights, ev.lpips_net)
            else:
                log.warning("LPIPS skipped: no weights (set eval.lpips_weights to a converted .npz)")
        if "fid" in wanted:
            if ev.fid_weights:
                self.inception = make_inception(ev.fid_weights)
                self.ref_stats = fid_lib.load_stats(ev.fid_ref_stats) if ev.fid_ref_stats else None
            else:
                log.warning("FID skipped: no weights (set eval.fid_weights to a converted .npz)")

    def fid(self, restored_features: list[np.ndarray], target_features: list[np.ndarray]) -> float:
        """FID of restored images against the reference statistics (or the ground truths)."""
        mu1, s1 = fid_lib.compute_statistics(np.concatenate(restored_features))
        mu2, s2 = self.ref_stats if self.ref_stats is not None else fid_lib.compute_statistics(
            np.concatenate(target_features))
        return float(fid_lib.frechet_distance(mu1, s1, mu2, s2))


def score_sources(sampler: Sampler, params: Any, sources: dict[str, Any], cfg: ml_collections.ConfigDict,
                  rng: jax.Array, perceptual: Perceptual | None = None,
                  on_image: Callable[[str, dict, np.ndarray], None] | None = None,
                  baseline: Baselines | None = None
                  ) -> tuple[list[dict], dict[str, dict[str, float]], dict[str, list]]:
    """(per-image rows, report entries by label (`by_task`: test sets, tasks, "overall"), grid rows per
    test set) in deterministic order; `sources` maps labels (`data.build_eval_sources`) to sources.

    Every image is scored for the model, the classical baseline (`baseline`, or a fresh `Baselines`)
    and the degraded input alike; grids show μ │ baseline │ restored │ x0.
    """
    baseline = baseline or Baselines(true_mask=sampler.uses_mask)
    rows_all: list[dict] = []
    per_set: dict[str, dict[str, float]] = {}
    grids: dict[str, list] = {}
    for label, source in sources.items():
        rows, feats_out, feats_gt = [], [], []
        grids[label] = []
        ids = {"task": task_of(label)}
        if is_test_set(label):
            ids["test_set"] = set_of(label)
        for index, ex, out in restore_source(sampler, params, source, cfg.sample.batch_size, rng):
            base = baseline(label, source, index, ex)
            mask = ex.get("mask")
            r = {**ids, "name": ex["name"], **score_pair(out, ex["x0"], cfg.eval, mask),
                 **baseline.reference_scores(label, source, index, ex, cfg.eval)}
            if is_partial(mask):
                r["psnr_kept"] = kept_psnr(out, ex["mu"], mask, cfg.eval)
            if perceptual and perceptual.lpips:
                r["lpips"] = float(np.asarray(perceptual.lpips(out[None], ex["x0"][None]))[0])
            if perceptual and perceptual.inception:  # Inception takes [0, 1], as pytorch-fid
                feats_out.append(np.asarray(perceptual.inception(_fid_input(out, cfg.eval.quantize))))
                feats_gt.append(np.asarray(perceptual.inception(_fid_input(ex["x0"], cfg.eval.quantize))))
            rows.append(r)
            if len(grids[label]) < cfg.eval.num_grid_images:
                grids[label].append([ex["mu"], base, out, ex["x0"]])
            if on_image:
                on_image(label, ex, out)
        per_set[label] = {k: _mean(rows, k) for k in SCORES + ("lpips",) if any(k in r for r in rows)}
        per_set[label]["num_images"] = len(rows)
        per_set[label]["baseline"] = baseline.name(source)
        if feats_out:
            per_set[label]["fid"] = perceptual.fid(feats_out, feats_gt)
        rows_all.extend(rows)
    return rows_all, by_task(per_set), grids


class Validator:
    """Periodic validation during training: EMA restoration of held-out images, PSNR/SSIM, a grid."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh: Any, sources: dict[str, Any]):
        self.cfg, self.sources = cfg, sources
        self.sampler = program.sampler(cfg, mesh)
        self.baseline = Baselines(true_mask=self.sampler.uses_mask)  # computed at the first call only
        log.info("validation protocol (val/* scores): %s", json.dumps(protocol(cfg)))

    def __call__(self, params: Any, step: int) -> tuple[dict[str, float], np.ndarray]:
        _, per_task, grids = score_sources(self.sampler, params, self.sources, self.cfg,
                                           jax.random.PRNGKey(self.cfg.seed + 2), baseline=self.baseline)
        scores = {f"val/{k}": v for k, v in per_task["overall"].items() if k in SCORES}
        if len(self.sources) > 1:  # val/<task>/… and val/<task>/<set>/…
            scores.update({f"val/{t}/{k}": v for t, s in per_task.items() if t != "overall"
                           for k, v in s.items() if k in SCORES})
        if distributed.is_main_process():
            for label, s in per_task.items():
                if label != "overall" or len(self.sources) > 1:
                    log.info("step %d val %s (%s; baseline: %s): %s", step, title(label, s),
                             protocol_name(self.cfg), s.get("baseline", "mean over tasks"), summary_line(s))
        if self.cfg.eval.per_step:  # issue 19's per-step diagnostic (rdbm_jax/diagnostic.py)
            scores.update(diagnostic.scalars(diagnostic.run(
                self.sampler, params, self.sources, diagnostic.rho_of(self.cfg),
                self.cfg.sample.batch_size,
                jax.random.PRNGKey(self.cfg.seed + 3))))
        rows = [r for g in grids.values() for r in g][: self.cfg.eval.num_grid_images]
        return scores, make_grid(rows)


def protocol_name(cfg: ml_collections.ConfigDict) -> str:
    """The evaluation protocol in a few words, e.g. 'RGB, quantize round, SSIM gaussian, border 0, NFE 10'."""
    ev = cfg.eval
    return (f"{ev.color.upper()}, quantize {ev.quantize}, SSIM {ev.ssim_window}, border {ev.crop_border}, "
            f"NFE {cfg.sample.num_steps}")


ID_COLUMNS = ("task", "test_set", "name")  # the first columns of per_image.csv (test_set: named sets only)


def write_report(out_dir: str, rows: list[dict], per_task: dict, info: dict) -> None:
    """`metrics.json` (per task, per named test set as test_sets.<task>.<set>, overall; with the protocol)
    and `per_image.csv`."""
    os.makedirs(out_dir, exist_ok=True)
    tasks = {k: v for k, v in per_task.items() if k != "overall" and not is_test_set(k)}
    test_sets: dict[str, dict] = {}
    for label, v in per_task.items():
        if is_test_set(label):
            test_sets.setdefault(task_of(label), {})[set_of(label)] = v
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({**info, "tasks": tasks, **({"test_sets": test_sets} if test_sets else {}),
                   "overall": per_task["overall"]}, f, indent=2)
    present = {k for r in rows for k in r}
    fields = [k for k in dict.fromkeys(ID_COLUMNS + tuple(k for r in rows for k in r)) if k in present]
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def run_eval(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`--mode=eval`: restore every configured test split, write eval/metrics.json, per_image.csv, grids."""
    config_lib.validate(cfg)
    mesh = distributed.make_mesh()
    params, step = program.load_trained(cfg, workdir, mesh, cfg.sample.checkpoint)[2:]
    sources = data.build_eval_sources(cfg.data, max_images=cfg.eval.max_images)
    sampler = program.sampler(cfg, mesh)
    with progress.bar(sum(len(s) for s in sources.values()), "eval") as pbar:
        rows, per_task, grids = score_sources(sampler, params, sources, cfg, jax.random.PRNGKey(cfg.seed),
                                              Perceptual(cfg.eval), on_image=lambda *_: pbar.update(1))
    out_dir = os.path.join(workdir, "eval")
    if distributed.is_main_process():
        write_report(out_dir, rows, per_task, {"step": step, "protocol": protocol(cfg)})
        for label, g in grids.items():  # grid_<task>.png, grid_<task>.<set>.png
            if g:
                Image.fromarray(make_grid(g)).save(os.path.join(out_dir, f"grid_{label.replace('/', '.')}.png"))
        log.info("eval of step %d (%s):\n%s", step, protocol_name(cfg), comparison_table(per_task))
    if cfg.eval.per_step and distributed.is_main_process():  # eval/per_step.json + .png
        results = diagnostic.run(sampler, params, sources, diagnostic.rho_of(cfg),
                                 cfg.sample.batch_size, jax.random.PRNGKey(cfg.seed + 3))
        diagnostic.write(out_dir, results, {"step": step})
    return per_task


def comparison_table(per_task: dict[str, dict]) -> str:
    """A plain-text table: one block per test set, task and overall (`by_task` order), rows model │
    baseline │ input, a column per score."""
    lines = []
    for label, s in per_task.items():
        cols = [k for k in WHOLE + MASKED + KEPT if k in s]
        lines.append(f"{title(label, s)} ({s.get('num_images', 0)} images; "
                     f"baseline: {s.get('baseline', 'per task')})")
        lines.append(f"  {'':<10}" + "".join(f"{c:>14}" for c in cols))
        for row, sfx in (("model", ""), ("baseline", "_baseline"), ("input", "_input")):
            cells = [f"{s[c + sfx]:>14.4f}" if c + sfx in s else f"{'—':>14}" for c in cols]
            lines.append(f"  {row:<10}" + "".join(cells))
    return "\n".join(lines)
