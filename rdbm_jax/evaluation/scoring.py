"""Scoring restorations: the protocol, per-image scores beside the baseline's and the input's, and
their aggregation per test set, per task and overall (used by eval, sweep and validation).

Report entries are keyed by label: a task with one eval source by its name, each named test set by
`<task>/<set>` (then its task, the mean over its test sets); "overall" is the mean over tasks.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from rdbm_jax.evaluation import baselines, metrics
from rdbm_jax import config as config_lib
from rdbm_jax.data.batching import same_size_batches
from rdbm_jax.errors import ConfigError
from rdbm_jax.evaluation.perceptual import fid as fid_lib, make_inception, make_lpips
from rdbm_jax.sampler import Sampler

log = logging.getLogger("rdbm_jax")

# Scores of the model, then of the classical baseline and of the degraded input on the same images.
# *_masked: inside the degradation mask only (inpainting holes); psnr_kept: outside it, against
# the input mu (how untouched the known pixels come back; KEPT_CAP dB = identical at the
# protocol's precision).
WHOLE = ("psnr", "ssim")
MASKED = ("psnr_masked", "ssim_masked")
KEPT = ("psnr_kept",)
SCORES = tuple(f"{k}{sfx}" for k in WHOLE + MASKED for sfx in ("", "_baseline", "_input")) + tuple(
    f"{k}{sfx}" for k in KEPT for sfx in ("", "_baseline"))
# Identical pixels have an infinite PSNR; a finite cap keeps means and JSON finite.
KEPT_CAP = 100.0
SSIM_PROTOCOLS = {  # eval.ssim_window -> what it computes (written into every metrics file)
    "gaussian": "skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
                "use_sample_covariance=False), mean over channels",
    "uniform": "skimage structural_similarity default call (7x7 uniform window, sample covariance) "
               "per channel, averaged (DGSolver)",
}
PER_TASK = ("mean over the task's test sets of each set's mean (sets weigh equally, whatever "
            "their size); a task with one eval source: the mean over its images")
_NOT_AVERAGED = ("num_images", "num_test_sets", "baseline")  # report-entry keys that are no scores


def protocol(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The evaluation protocol, written next to every reported number."""
    ev = cfg.eval
    return {"color": ev.color, "crop_border": ev.crop_border, "quantize": ev.quantize,
            "ssim_window": ev.ssim_window, "ssim": SSIM_PROTOCOLS[ev.ssim_window],
            "data_range": "[0, 1]", "sample_num_steps": cfg.sample.num_steps,
            "eta": cfg.sample.eta, "clip": cfg.sample.clip, "use_ema": cfg.sample.use_ema,
            "condition": cfg.model.condition,
            "test_set": "mean over the test set's images",
            "task": PER_TASK,
            "overall": "mean over tasks of the per-task mean",
            "baseline": "a classical method per degradation on the same inputs "
                        "(evaluation/baselines.py); *_input scores the degraded input itself",
            "masked": "*_masked: inside the degradation mask (inpainting holes) only; psnr_kept: "
                      f"outside it against the input (capped at {KEPT_CAP:g} dB = identical)"}


def sampling_key(seed: int) -> jax.Array:
    """The one seed rule of every evaluation (validation, --mode=eval, sweep): the sampling noise
    of batch b of a test set is fold_in(PRNGKey(seed), b), so the three agree image for image at
    any eta."""
    return jax.random.PRNGKey(seed)


def restore_source(sampler: Sampler, params: Any, source: Any, batch_size: int,
                   rng: jax.Array) -> Iterable[tuple[int, dict, np.ndarray]]:
    """Yield (index, example, restored [H, W, 3] in [-1, 1]) for every example of a source, in
    order (every example read once)."""
    examples = ((i, source[i]) for i in range(len(source)))
    batches = same_size_batches(examples, batch_size, lambda pair: pair[1]["mu"].shape)
    for b, group in enumerate(batches):
        idx, batch = zip(*group)
        masks = [e.get("mask") for e in batch]  # sources without masks: inferred where needed
        mask = None if any(m is None for m in masks) else np.stack(masks)
        out = sampler(params, np.stack([e["mu"] for e in batch]), jax.random.fold_in(rng, b),
                      mask=mask, task=batch[0].get("task_name"))  # one source: one task (ρ)
        yield from zip(idx, batch, out)


def _protocol_kw(ev: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `eval` section's colour, border crop and quantisation as metric keyword arguments."""
    return dict(color=ev.color, crop_border=ev.crop_border, quantize=ev.quantize)


def is_partial(mask: np.ndarray | None) -> bool:
    """Whether a degradation mask marks some pixels and not others (inpainting)."""
    return mask is not None and bool(np.any(mask > 0.5)) and bool(np.any(mask <= 0.5))


def score_pair(restored: np.ndarray, target: np.ndarray, ev: ml_collections.ConfigDict,
               mask: np.ndarray | None = None) -> dict[str, float]:
    """PSNR and SSIM of one image (inputs in [-1, 1]) under the `eval` section's protocol; with a
    partial mask also inside it (`*_masked`)."""
    a = metrics.to_unit(restored)
    b = metrics.to_unit(target)
    kw = _protocol_kw(ev)
    out = {"psnr": float(metrics.psnr(a, b, **kw)),
           "ssim": float(metrics.ssim(a, b, window=ev.ssim_window, **kw))}
    if is_partial(mask):
        out["psnr_masked"] = float(metrics.psnr_masked(a, b, mask, **kw))
        out["ssim_masked"] = float(metrics.ssim_masked(a, b, mask, window=ev.ssim_window, **kw))
    return out


def kept_psnr(restored: np.ndarray, mu: np.ndarray, mask: np.ndarray,
              ev: ml_collections.ConfigDict) -> float:
    """PSNR outside the mask against the input mu, capped at KEPT_CAP dB (identical pixels)."""
    value = float(metrics.psnr_masked(metrics.to_unit(restored), metrics.to_unit(mu), 1.0 - mask,
                                      **_protocol_kw(ev)))
    return min(value, KEPT_CAP)


class Baselines:
    """The classical baseline of every evaluation example (evaluation/baselines.py) and the scores
    that never change between validations (baseline's and input's), computed once per example.

    Only the scores (a few floats per example) and the baseline images a grid shows are kept: a
    full-resolution image per example would grow with the test set (GoPro's 1 111 test frames at
    1280x720: ~12 GB of float32).
    """

    def __init__(self, true_mask: bool):
        # inpainting: the true mask, or the one inferred from fill pixels (as the sampler sees it)
        self.true_mask = true_mask
        self._cache: dict[tuple[str, int], np.ndarray] = {}  # grid examples only (`keep=True`)
        self._scores: dict[tuple[str, int], dict[str, float]] = {}

    def name(self, source: Any) -> str:
        """What the baseline of a source is, as reports print it."""
        return baselines.describe(getattr(source, "degradation", "none"), self.true_mask)

    def __call__(self, label: str, source: Any, index: int, example: dict,
                 keep: bool = False) -> np.ndarray:
        """The baseline restoration of example `index` of `source` (test set `label`), in [-1, 1];
        `keep`: remember it for later calls (the examples a grid shows at every validation)."""
        key = (label, index)
        if key in self._cache:
            return self._cache[key]
        known = source.known_parameters(index) if hasattr(source, "known_parameters") else {}
        out = baselines.restore(np.asarray(metrics.to_unit(example["mu"])),
                                getattr(source, "degradation", "none"),
                                mask=example.get("mask") if self.true_mask else None, **known)
        out = out * 2.0 - 1.0
        if keep:
            self._cache[key] = out
        return out

    def reference_scores(self, label: str, source: Any, index: int, example: dict,
                         ev: ml_collections.ConfigDict,
                         base: np.ndarray | None = None) -> dict[str, float]:
        """`*_baseline`, `*_input` (and `psnr_kept_baseline`) of one example under the `ev`
        protocol (`base`: its baseline when the caller has it already)."""
        key = (label, index)
        if key not in self._scores:
            base = self(label, source, index, example) if base is None else base
            mask = example.get("mask")
            x0 = example["x0"]
            out = {f"{k}_baseline": v for k, v in score_pair(base, x0, ev, mask).items()}
            degraded = score_pair(example["mu"], x0, ev, mask)
            out.update({f"{k}_input": v for k, v in degraded.items()})
            if is_partial(mask):
                out["psnr_kept_baseline"] = kept_psnr(base, example["mu"], mask, ev)
            self._scores[key] = out
        return self._scores[key]


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
                log.warning("LPIPS skipped: no weights "
                            "(set eval.lpips_weights to a converted .npz)")
        if "fid" in wanted:
            if ev.fid_weights:
                self.inception = make_inception(ev.fid_weights)
                if ev.fid_ref_stats:
                    self.ref_stats = fid_lib.load_stats(ev.fid_ref_stats)
            else:
                log.warning("FID skipped: no weights (set eval.fid_weights to a converted .npz)")

    def fid(self, restored: fid_lib.RunningStats, targets: fid_lib.RunningStats) -> float:
        """FID of restored images against the reference statistics (or the ground truths)."""
        mu1, s1 = restored.statistics()
        mu2, s2 = self.ref_stats if self.ref_stats is not None else targets.statistics()
        return float(fid_lib.frechet_distance(mu1, s1, mu2, s2))


def _fid_input(img: np.ndarray, quantize: str) -> jax.Array:
    """[-1, 1] image -> [1, H, W, 3] in [0, 1] (uint8 levels when quantising, as FID computed from
    PNG files sees them)."""
    unit = metrics.to_unit(img[None])
    mode = metrics.quantize_mode(quantize)
    return unit if mode == "none" else metrics.quantize_levels(unit, mode=mode)


def check_fid_sizes(ev: ml_collections.ConfigDict, sources: dict[str, Any]) -> None:
    """Refuse (one line) FID on a test set of fewer than 2 images: its covariance is undefined."""
    if "fid" not in config_lib.parse_list(ev, "metrics", str) or not ev.fid_weights:
        return
    for label, source in sources.items():
        if len(source) < 2:
            raise ConfigError(f"eval.metrics includes fid but test set {label!r} has {len(source)} "
                              "image(s); FID needs at least 2 (drop fid from eval.metrics, or "
                              "raise eval.max_images / add images)")


def _ids(source: Any) -> dict[str, str]:
    """The id columns of a test set's per-image rows: its task, and its name when the task has
    named test sets (a single eval source is labelled by its task alone)."""
    ids = {"task": source.task}
    if source.label != source.task:
        ids["test_set"] = source.test_set
    return ids


def score_sources(sampler: Sampler, params: Any, sources: dict[str, Any],
                  cfg: ml_collections.ConfigDict, rng: jax.Array,
                  perceptual: Perceptual | None = None,
                  on_image: Callable[[str, dict, np.ndarray], None] | None = None,
                  baseline: Baselines | None = None
                  ) -> tuple[list[dict], dict[str, dict[str, float]], dict[str, list]]:
    """(per-image rows, report entries by label (`by_task`: test sets, tasks, "overall"), grid rows
    per test set) in deterministic order; `sources` maps labels to `data.EvalSource`s
    (`data.build_eval_sources`).

    Every image is scored for the model, the classical baseline (`baseline`, or a fresh
    `Baselines`) and the degraded input alike; grids show mu | baseline | restored | x0.
    """
    baseline = baseline or Baselines(true_mask=sampler.uses_mask)
    rows_all: list[dict] = []
    per_set: dict[str, dict[str, float]] = {}
    grids: dict[str, list] = {}
    ev = cfg.eval
    for label, source in sources.items():
        rows = []
        # Running statistics, O(D²) whatever the test set's size (not O(N D) stored features).
        feats_out = fid_lib.RunningStats()
        feats_gt = fid_lib.RunningStats()
        grids[label] = []
        ids = _ids(source)
        for index, ex, out in restore_source(sampler, params, source, cfg.sample.batch_size, rng):
            in_grid = len(grids[label]) < ev.num_grid_images
            base = baseline(label, source, index, ex, keep=True) if in_grid else None
            mask = ex.get("mask")
            r = {**ids, "name": ex["name"], **score_pair(out, ex["x0"], ev, mask),
                 **baseline.reference_scores(label, source, index, ex, ev, base)}
            if is_partial(mask):
                r["psnr_kept"] = kept_psnr(out, ex["mu"], mask, ev)
            if perceptual and perceptual.lpips:
                r["lpips"] = float(np.asarray(perceptual.lpips(out[None], ex["x0"][None]))[0])
            if perceptual and perceptual.inception:  # Inception takes [0, 1], as pytorch-fid
                inception = perceptual.inception
                feats_out.add(np.asarray(inception(_fid_input(out, ev.quantize))))
                feats_gt.add(np.asarray(inception(_fid_input(ex["x0"], ev.quantize))))
            rows.append(r)
            if in_grid:
                grids[label].append([ex["mu"], base, out, ex["x0"]])
            if on_image:
                on_image(label, ex, out)
        entry = {k: _mean(rows, k) for k in SCORES + ("lpips",) if any(k in r for r in rows)}
        entry["num_images"] = len(rows)
        entry["baseline"] = baseline.name(source)
        if feats_out.n:
            entry["fid"] = perceptual.fid(feats_out, feats_gt)
        per_set[label] = entry
        rows_all.extend(rows)
    return rows_all, by_task(per_set), grids


# ------------------------------------------------------------------------------- aggregation
def is_test_set(label: str) -> bool:
    """Whether a report label names one of a task's named test sets (`<task>/<set>`)."""
    return "/" in label


def task_of(label: str) -> str:
    """The task of a report label: 'derain/rain100h' -> 'derain'; a task's own label is its name."""
    return label.split("/", 1)[0]


def set_of(label: str) -> str:
    """The test set of a named-set label: 'derain/rain100h' -> 'rain100h'."""
    return label.split("/", 1)[1]


def _mean(rows: list[dict], key: str) -> float:
    """The mean of `key` over the rows that have it (NaN when none has)."""
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else float("nan")


def _mean_over(entries: list[dict]) -> dict[str, float]:
    """The mean of every score over report entries (each entry weighs once)."""
    keys = sorted({k for e in entries for k in e} - set(_NOT_AVERAGED))
    return {k: _mean(entries, k) for k in keys}


def by_task(per_set: dict[str, dict]) -> dict[str, dict]:
    """Per-test-set entries -> report entries: each named test set, then its task (mean over its
    sets); a task with one eval source as it is; then "overall" (mean over tasks)."""
    out: dict[str, dict] = {}
    for task in dict.fromkeys(task_of(label) for label in per_set):
        labels = [label for label in per_set if task_of(label) == task]
        if labels == [task]:
            out[task] = per_set[task]
            continue
        sets = [per_set[label] for label in labels]
        out.update({label: per_set[label] for label in labels})
        names = {s["baseline"] for s in sets}
        out[task] = {**_mean_over(sets),
                     "num_images": sum(s["num_images"] for s in sets),
                     "num_test_sets": len(sets),
                     "baseline": names.pop() if len(names) == 1 else "per test set"}
    tasks = [v for label, v in out.items() if not is_test_set(label)]
    out["overall"] = {**_mean_over(tasks), "num_images": sum(t["num_images"] for t in tasks)}
    return out
