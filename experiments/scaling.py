"""Scaling study (issue 28, item 1): how the network's gain inside the holes grows with compute.

    python -m experiments.scaling --out-dir /work/study-results --runs-dir /work/study-runs
    python -m experiments.scaling --out-dir /work/study-results --fit --docs docs/scaling.md
    python -m experiments.scaling --out-dir /tmp/s --runs-dir /tmp/r --tiny   # smoke (seconds)

The demo's inpainting task on the built-in photos, one training run per configuration (`STUDY`),
evaluated along the way: at each point the checkpoint's EMA network restores the 3 validation
photos at 128, 256 and 512 px (experiments/holes.py) at each NFE of the configuration, beside its
pre-fill alone, biharmonic and the input, inside the holes. Each configuration's learning-rate
schedule spans its largest budget (one run evaluated along the way), so an early point is a
checkpoint in mid-schedule, not a run annealed at that budget.

Resumable: every evaluated point appends its rows to <out-dir>/scaling.csv in one atomic replace;
a rerun skips the points already there and resumes each run from the newest checkpoint in its
workdir (<runs-dir>/<configuration>). Points run cheapest first, by estimated cumulative training
CPU time (`cpu_per_step` × steps), so the cheap configurations complete before the dear ones start.
CPU-seconds are process CPU time (all threads) spent training, counted across resumes through
<workdir>/study_cpu.json (written at each checkpoint); work lost after the last checkpoint of a
killed process is not counted. `--fit` writes the fit, the plot and docs/scaling.md from the CSV
(experiments/scaling_fit.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any

import ml_collections

from experiments import cli, holes, report, results_csv
from experiments.scaling_study import (CSV_NAME, DEMO_BASE, FIELDS, NUMERIC, STUDY, TINY_POINTS,
                                       TINY_SIZES, Configuration, points_of)
from rdbm_jax.runtime import atomic, distributed
from rdbm_jax.checkpointing import checkpoints
from rdbm_jax import inference, train
from rdbm_jax import config as config_lib
from rdbm_jax.config_files import load
from rdbm_jax.errors import ConfigError, DataError, TrainingError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_FILE = "study_cpu.json"
log = logging.getLogger("rdbm_jax")


def make_config(conf: Configuration, tiny: bool) -> ml_collections.ConfigDict:
    """The configuration's config: its file, its overrides, then the study's training settings
    (schedule over the last point, no in-training validation, checkpoints at every point)."""
    spec = (conf.spec + ("," if ":" in conf.spec else ":") + "tiny") if tiny else conf.spec
    cfg = load(spec, root=REPO)
    config_lib.put(cfg, {**DEMO_BASE, **dict(conf.overrides)})
    points = points_of(conf, tiny)
    if tiny:
        cfg.data.crop_size = 32
        cfg.eval.max_images = 1
    cfg.train.num_steps = points[-1]
    cfg.train.eval_every = 0  # evaluated at the points, by this script
    # checkpoints at every point and every 500 steps (a killed run loses at most 500 steps)
    cfg.train.checkpoint_every = math.gcd(*points, 500)
    cfg.train.log_every = min(100, cfg.train.checkpoint_every)
    cfg.eval.per_step = False
    return cfg


def settings_hash(cfg: ml_collections.ConfigDict, conf: Configuration, sizes: tuple[int, ...],
                  tiny: bool) -> str:
    """A short hash of everything that makes a point's numbers: config, points, NFEs, sizes."""
    return results_csv.settings_hash(cfg, points_of(conf, tiny), conf.nfes, sizes)


def schedule(confs: list[Configuration], tiny: bool) -> list[tuple[Configuration, int]]:
    """Every (configuration, point), cheapest cumulative training first (ties: STUDY order)."""
    order = {c.name: i for i, c in enumerate(STUDY)}
    pairs = [(c, p) for c in confs for p in points_of(c, tiny)]
    return sorted(pairs, key=lambda cp: (cp[0].cpu_per_step * cp[1], order[cp[0].name]))


# ------------------------------------------------------------------ training to a point, resumable
class _Pause(Exception):
    """Raised by the training hook once the point's checkpoint is saved."""


def read_cpu(workdir: str) -> dict[int, float]:
    """step → cumulative training CPU-s of the run's checkpoints (study_cpu.json), checked."""
    path = os.path.join(workdir, CPU_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            doc = {int(k): float(v) for k, v in json.load(f).items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: unreadable ({e}); remove it to count CPU time from zero"
                        ) from None
    if not all(math.isfinite(v) and v >= 0 for v in doc.values()):
        raise DataError(f"{path}: a CPU time is negative or not finite")
    return doc


def latest_step(workdir: str) -> int:
    """The run's newest complete checkpoint step (0 when none)."""
    if not os.path.isdir(workdir):
        return 0
    return checkpoints.Checkpointer(workdir).latest_step() or 0


def check_workdir(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse a run directory trained with another config (ConfigError naming it)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); use another --runs-dir") from None
    # the sections no experiment reads (sweep grid, page) may change without orphaning a run
    saved = results_csv.what_matters(saved)
    ours = results_csv.what_matters(json.loads(cfg.to_json_best_effort()))
    if saved != ours:
        diff = sorted(f"{s}.{k}" for s in ours if isinstance(ours[s], dict)
                      for k in ours[s] if saved.get(s, {}).get(k) != ours[s][k])
        raise ConfigError(f"{workdir}: trained with another config (differs in {diff[:4]}); "
                          "use another --runs-dir")


def train_to(cfg: ml_collections.ConfigDict, workdir: str, point: int) -> tuple[float, bool]:
    """Train (or resume) the run up to `point` steps of its schedule; (cumulative training CPU-s
    at `point`, whether a step ran here). A stop signal before `point` raises TrainingError."""
    start = latest_step(workdir)
    cpu = read_cpu(workdir)
    if start == point:
        return cpu.get(point, math.nan), False
    if start > point:
        raise TrainingError(f"{workdir}: its newest checkpoint is step {start}, past the point "
                            f"{point} to evaluate (the point's checkpoint is gone)")
    # a checkpoint saved without its count (a stop signal, under an older version of this script):
    # what the run spent before it is unknown, so its later points get no CPU time (NaN: an empty
    # cell), never a partial count
    base, t0 = cpu.get(start, 0.0 if start == 0 else math.nan), time.process_time()
    if math.isnan(base):
        log.warning("%s: no CPU time recorded at its checkpoint %d; its CPU-s are not counted",
                    workdir, start)

    def record(step: int) -> None:
        if math.isnan(base):
            return  # unknown stays unknown (study_cpu.json holds finite counts only)
        cpu[step] = base + time.process_time() - t0
        atomic.write_text(os.path.join(workdir, CPU_FILE),
                          json.dumps({str(k): v for k, v in sorted(cpu.items())}))

    def hook(step: int, state: Any) -> None:
        del state
        # a checkpoint was just saved at `step` (the trainer also saves the last step)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.num_steps:
            record(step)
        if step >= point and step < cfg.train.num_steps:
            raise _Pause()

    try:
        train.train_and_evaluate(cfg, workdir, hooks=[hook])
    except _Pause:
        pass
    reached = latest_step(workdir)
    if reached != point:
        if reached > start and reached not in cpu:
            record(reached)  # a stop signal saved this step after the hooks ran: count it too
        raise TrainingError(f"{workdir}: training stopped at step {reached} before the point "
                            f"{point}; rerun to resume")
    return cpu.get(point, math.nan), True


def evaluate_point(cfg: ml_collections.ConfigDict, workdir: str, conf: Configuration,
                   sizes: tuple[int, ...]) -> tuple[list[dict[str, float]], float]:
    """holes.measure of the run's newest checkpoint; (rows per size, evaluation CPU-s)."""
    t0 = time.process_time()
    params = inference.load_trained(cfg, workdir, distributed.make_mesh()).params
    rows = holes.measure(cfg, params, sizes, conf.nfes)
    for row in rows:  # a non-finite score is a broken point, never a row
        bad = [k for k, v in row.items() if k != "prefill" and not math.isfinite(v)]
        if bad:
            raise DataError(f"{workdir}: non-finite scores {bad} at size {row['size']}")
    return rows, time.process_time() - t0


# ----------------------------------------------------------------------------------- the command
def machine() -> str:
    """The machine, in words (CPU count and architecture)."""
    return f"{os.cpu_count()}-core {platform.machine()} CPU"


def commit() -> str:
    """The repository's commit, `-dirty` with uncommitted changes (the study runs from a fixed
    one), or 'unknown'."""
    try:
        out = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty",
                              "--abbrev=12"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True, help="scaling.csv (+ fit.csv, scaling.png)")
    p.add_argument("--runs-dir", default="", help="one workdir per configuration "
                   "(default <out-dir>/runs)")
    p.add_argument("--configs", default=",".join(c.name for c in STUDY),
                   help="comma-separated configurations to run (default: all)")
    p.add_argument("--max-points", type=int, default=0,
                   help="stop after evaluating this many new points (0: all)")
    p.add_argument("--tiny", action="store_true",
                   help=f"smoke run: configs/demo.py:tiny shapes, points {TINY_POINTS}, "
                   f"sizes {TINY_SIZES}")
    p.add_argument("--fit", action="store_true",
                   help="no training: fit, plot and docs from scaling.csv")
    p.add_argument("--docs", default="", help="with --fit: also write this markdown file")
    return p


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate every missing point; {'evaluated': [(config, step)], 'trained': [...]}."""
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    known = {c.name: c for c in STUDY}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"--configs: unknown {unknown or names}; choose from {sorted(known)}")
    sizes = TINY_SIZES if args.tiny else holes.SIZES
    csv_path = os.path.join(args.out_dir, CSV_NAME)
    rows = results_csv.read_rows(csv_path, FIELDS, NUMERIC)
    runs_dir = args.runs_dir or os.path.join(args.out_dir, "runs")
    cfgs = {n: make_config(known[n], args.tiny) for n in names}
    hashes = {n: settings_hash(cfgs[n], known[n], sizes, args.tiny) for n in names}
    for row in rows:
        if row["config"] in hashes and row["settings"] != hashes[row["config"]]:
            raise ConfigError(f"{csv_path}: configuration {row['config']} was measured with other "
                              f"settings ({row['settings']} ≠ {hashes[row['config']]}); use "
                              "another --out-dir")
    done = {(r["config"], int(r["steps"])) for r in rows}
    out: dict[str, Any] = {"evaluated": [], "trained": []}
    for conf, point in schedule([known[n] for n in names], args.tiny):
        if (conf.name, point) in done:
            continue
        if args.max_points and len(out["evaluated"]) >= args.max_points:
            break
        cfg, workdir = cfgs[conf.name], os.path.join(runs_dir, conf.name)
        check_workdir(cfg, workdir)
        t0 = time.time()
        cpu, trained = train_to(cfg, workdir, point)
        if trained:
            out["trained"].append((conf.name, point))
        scores, eval_cpu = evaluate_point(cfg, workdir, conf, sizes)
        images = point * cfg.train.batch_size
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        new = [{"config": conf.name, "steps": point, "budget": point / conf.base_steps,
                "images_seen": images, "pixels_seen": images * cfg.data.crop_size ** 2,
                "train_cpu_s": cpu, "eval_cpu_s": eval_cpu, **s, "settings": hashes[conf.name],
                "commit": commit(), "machine": machine(), "utc": stamp} for s in scores]
        rows = results_csv.add_rows(csv_path, FIELDS, NUMERIC, new, ("config", "steps", "size"))
        out["evaluated"].append((conf.name, point))
        nfe = f"model_nfe{max(conf.nfes)}"
        log.info("scaling %s step %d: train CPU %.0f s, eval CPU %.0f s, wall %.0f s: %s",
                 conf.name, point, cpu, eval_cpu, time.time() - t0,
                 "; ".join(f"{s['size']:g} px {nfe} {s[nfe]:.2f} biharmonic {s['biharmonic']:.2f}"
                           for s in scores))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the study, or with --fit write the fit, plot and docs."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.fit:
        return report.write_all(args.out_dir, args.docs)
    return run_study(args)


if __name__ == "__main__":
    cli.run(main)
