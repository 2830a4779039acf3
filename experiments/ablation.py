"""The paper's π / objective / NFE ablations in miniature, on the built-in photos (issue 13).

    python -m experiments.ablation --out-dir runs/ablation    # full grid (~1 h on 2 CPU cores)
    python -m experiments.ablation --out-dir /tmp/abl --tiny  # smoke run (seconds)

Two synthetic tasks trained jointly (one model per grid cell, batch split equally): inpainting
(free-form/box masks filled white) and Gaussian noise (σ = 0.1), on random crops of the 8 built-in
training photos; scored on the 3 held-out photos per task. Grid: π ∈ {residual, one, zero} ×
objective (bridge.parameterization, every one sde.PARAMETERIZATIONS offers) × seeds; each trained
model is restored at every NFE of --nfe (η = 0) by `--mode=sweep`'s code. π = 0 with the πε
objective is refused by the config guard (its target is identically 0) and listed as such.

Options beyond the paper's grid (issue 19): --sigma-data (precond's ρ per task; "auto" measures the
rms of x0 − μ per task on 100 training batches, inside the mask with a mask condition), --condition,
--first-step-eta (a first step onto the forward marginal), --eta, --lam, --t-sampling (the training
draw of t); a cell's directory names every option training reads that differs from the default
(sampling-only options reuse trained cells).

Uses the real training program (rdbm_jax.train.train_and_evaluate) and the real sweep
(rdbm_jax.sweep.run_sweep): one workdir per (π, objective, seed) under --out-dir/runs, so an
interrupted run resumes where it stopped. Writes results.csv (every seed), summary.csv and
table.md (mean ± half-range over seeds), ablation.png (PSNR/SSIM against NFE) and command.txt
(the exact command, machine, date, wall time) to --out-dir; `ablation_report.py` makes the
summary, tables and plot.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import sys
import time
from typing import Any, Callable

import ml_collections
import numpy as np

from experiments.ablation_report import (machine, per_step_table, plot, summarize, table,
                                         write_csv)
from rdbm_jax.runtime import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _csv_list(cast):
    return lambda text: [cast(x.strip()) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    from rdbm_jax import sde
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True,
                   help="runs/, results.csv, summary.csv, table.md, ablation.png")
    p.add_argument("--tiny", action="store_true",
                   help="smoke run: 2 steps, 32² crops, 1 image per task")
    p.add_argument("--pi", type=_csv_list(str), default=["residual", "one", "zero"])
    p.add_argument("--objective", type=_csv_list(str), default=list(sde.PARAMETERIZATIONS))
    p.add_argument("--seeds", type=_csv_list(int), default=[0, 1])
    p.add_argument("--nfe", type=_csv_list(int), default=None,
                   help="default 1,2,5,10,20 (tiny: 1,2)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1000; tiny: 2)")
    p.add_argument("--sigma-data", default="auto",
                   help="precond's ρ: a number, task=number,… or auto (measured per task at "
                   "start-up)")
    p.add_argument("--condition", default="mu",
                   help="model.condition (mu | mu_mask | mu_mask_fill)")
    p.add_argument("--first-step-eta", type=float, default=0.0, help="sample.first_step_eta")
    p.add_argument("--eta", type=float, default=0.0, help="η of every sampling step (sweep.eta)")
    p.add_argument("--fuse", action="store_true",
                   help="sample.fuse: each x̂0 updated by what x_t observes (x0 / residual)")
    p.add_argument("--runs-dir", default="", help="the cells' workdirs (default <out-dir>/runs): "
                   "sampling-only options (--eta, --first-step-eta) reuse trained cells from here")
    p.add_argument("--t-sampling", default="uniform",
                   help="train.t_sampling (uniform | weighted: p(t) ∝ (t + 1)^(−1/2))")
    p.add_argument("--lam", type=float, default=None, help="bridge.lam (default 10/255)")
    p.add_argument("--fuse-sigma", default="prior", choices=("prior", "error"),
                   help="with --fuse, the rms error the update assumes: prior = ρ (--sigma-data), "
                   "error = each trained cell's own x̂0 error at t = T−1 on 20 training batches "
                   "(sample.fuse_sigma)")
    p.add_argument("--per-step", action="store_true",
                   help="also the per-step diagnostic of every cell on the NFE-10 grid "
                   "(--mode=eval with eval.per_step): per_step.csv and a table in table.md")
    return p


def measure_sigma_data(cfg: ml_collections.ConfigDict, batches: int = 100) -> str:
    """ρ per task: the rms of x0 − μ over `batches` training batches (inside the mask when the
    condition carries it, where the mask-aware ρ applies), as bridge.sigma_data's task=value
    form."""
    return rms_per_task(cfg, batches, cfg.seed, lambda b: b["x0"] - b["mu"])


def rms_per_task(cfg: ml_collections.ConfigDict, batches: int, seed: int,
                 diff: Callable[[dict], np.ndarray]) -> str:
    """task=rms,… of `diff(batch)` over `batches` training batches (drawn with `seed`), inside
    the mask when the condition carries it: the form bridge.sigma_data and sample.fuse_sigma
    take."""
    from rdbm_jax import conditioning
    from rdbm_jax.data import pipeline
    from rdbm_jax.data.spec import task_names
    names = task_names(cfg.data)
    it = pipeline.build_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size,
                                       seed=seed)
    sums = np.zeros((len(names), 2))
    for _, b in zip(range(batches), it):
        d2 = np.square(diff(b))
        for k in range(len(names)):
            sel = b["task"] == k
            inside = b["mask"][sel] if conditioning.uses_mask(cfg.model.condition) else 1.0
            w = np.broadcast_to(inside, d2[sel].shape)
            sums[k] += (float((d2[sel] * w).sum()), float(w.sum()))
    return ",".join(f"{n}={np.sqrt(s / max(c, 1.0)):.4f}" for n, (s, c) in zip(names, sums))


def reads_rho(objectives: list[str]) -> bool:
    """Whether any of the objectives' maps read ρ (bridge.sigma_data: precond's)."""
    from rdbm_jax import sde
    return any(sde.PARAMETERIZATIONS[o].needs_rho for o in objectives
               if o in sde.PARAMETERIZATIONS)


def cell_name(pi: str, objective: str, seed: int, args: argparse.Namespace) -> str:
    """The cell's workdir name: π, objective, seed, then every non-default option that training
    reads."""
    extra = []
    if args.condition != "mu":
        extra.append(args.condition)
    if args.lam is not None:
        extra.append(f"lam{args.lam:g}")
    if args.t_sampling != "uniform":
        extra.append(f"t{args.t_sampling}")
    if reads_rho([objective]) and args.sigma_data != "auto":
        extra.append("rho" + args.sigma_data.replace("=", "").replace(",", "_"))
    return "_".join([pi, objective] + extra + [f"s{seed}"])


# configs/demo.py's choices that are options of this grid (`apply_options`) or that only its
# validation reads: reset to configs/default.py's values, so a cell is the demo's recipe (size T,
# 64² crops, optimiser, batch) with the grid's own π, objective and options.
NOT_FROM_DEMO = ("model.condition", "bridge.parameterization", "bridge.sigma_data", "sample.fuse",
                 "eval.per_step", "eval.num_grid_images", "train.eval_num_images")


def make_config(pi: str, objective: str, seed: int, nfe: list[int], steps: int, tiny: bool
                ) -> ml_collections.ConfigDict:
    """configs/demo.py's recipe (NOT_FROM_DEMO as configs/default.py has them) with the two
    built-in tasks and one grid cell."""
    from rdbm_jax import config as config_lib
    from rdbm_jax.config_files import sibling
    from rdbm_jax.data.spec import source_spec, task_spec
    from rdbm_jax.schedules import DEFAULT_PI

    c = sibling(os.path.join(REPO, "configs", "demo.py"), "demo").get_config()
    defaults = sibling(os.path.join(REPO, "configs", "default.py")).get_config()
    config_lib.put(c, {key: config_lib.get(defaults, key) for key in NOT_FROM_DEMO})
    shrink = sibling(os.path.join(REPO, "configs", "common.py"), "common").shrink
    inpaint = {k: c.data.tasks.main.train[k]
               for k in ("degradation", "mask_min_ratio", "mask_max_ratio")}  # the demo's task
    degr = {"inpaint": inpaint, "noise": dict(degradation="noise", noise_sigma=0.1)}
    c.data.tasks = ml_collections.ConfigDict({name: task_spec(
        train=source_spec(kind="builtin", split="train", **kw),
        eval=source_spec(kind="builtin", split="val", eval_size=128, **kw))
        for name, kw in degr.items()})
    c.train.update(dict(num_steps=steps, log_every=100, eval_every=0, checkpoint_every=steps))
    c.eval.max_images = 0
    if tiny:  # one image per task and batch: the shapes of configs/demo.py:tiny
        c = shrink(c)
        c.train.update(dict(num_steps=steps, batch_size=len(degr), checkpoint_every=steps,
                            eval_every=0))
        c.eval.max_images = 1
    c.seed = seed
    # The preset's own π is written "" (same model): cells then share compiled programs with other
    # runs.
    c.bridge.pi = "" if pi == DEFAULT_PI[c.bridge.preset] else pi
    c.bridge.parameterization = objective
    c.sweep.nfe, c.sweep.eta = ",".join(map(str, nfe)), "0"
    return c


def apply_options(c: ml_collections.ConfigDict, args: argparse.Namespace, sigma_data: str) -> None:
    """The issue-19 options onto a cell's config (ρ is read by the precond objective only)."""
    c.model.condition = args.condition
    c.sample.first_step_eta = args.first_step_eta
    c.sample.fuse = args.fuse
    c.sweep.eta = f"{args.eta:g}"
    if args.lam is not None:
        c.bridge.lam = args.lam
    c.train.t_sampling = args.t_sampling
    c.bridge.sigma_data = sigma_data


def ensure_trained(cfg: ml_collections.ConfigDict, workdir: str) -> bool:
    """Train (or resume) one grid cell with the real loop unless its final checkpoint exists;
    whether any training step ran in this call."""
    from rdbm_jax.checkpointing import checkpoints
    from rdbm_jax import train
    if checkpoints.Checkpointer(workdir).latest_step() == cfg.train.num_steps:
        return False
    train.train_and_evaluate(cfg, workdir)
    return True


def run_cell(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[list[dict[str, Any]], bool]:
    """Train (or resume) one grid cell, then score it at every NFE with the sweep; returns (sweep
    rows, whether any training step ran in this call)."""
    from rdbm_jax import sweep
    trained = ensure_trained(cfg, workdir)
    return sweep.run_sweep(cfg, workdir), trained


def measure_fuse_sigma(cfg: ml_collections.ConfigDict, workdir: str, batches: int = 20) -> str:
    """The trained cell's x̂0 error per task: rms of x̂0 − x0 at NFE 1 (t = T−1, the network from μ
    alone) over `batches` training batches, inside the mask with a mask condition, as
    sample.fuse_sigma's task=value form."""
    import jax
    from rdbm_jax.runtime import distributed
    from rdbm_jax import inference, program
    probe = ml_collections.ConfigDict(cfg.to_dict())
    probe.sample.fuse = False
    mesh = distributed.make_mesh()
    params = inference.load_trained(probe, workdir, mesh).params
    sampler = program.build_sampler(probe, mesh, num_steps=1)
    restore = jax.jit(lambda p, mu, mask: sampler.sample_padded(p, mu, mask, None))
    # Other crops than training's first (seed + 7).
    return rms_per_task(cfg, batches, cfg.seed + 7,
                        lambda b: np.asarray(restore(params, b["mu"], b["mask"])) - b["x0"])


def per_step_rows(cfg: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """The trained cell's per-step diagnostic on the NFE-10 grid (`--mode=eval`'s code with
    eval.per_step): one row per (task, t) with the model's, the skip estimate's and inversion's
    PSNR inside the mask."""
    import json
    from rdbm_jax import evaluate
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.eval.per_step = True
    cfg.sample.num_steps = 10
    evaluate.run_eval(cfg, workdir)
    with open(os.path.join(workdir, "eval", "per_step.json"), encoding="utf-8") as f:
        doc = json.load(f)
    return [{"task": label, **row} for label, rows in doc["sources"].items() for row in rows]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the grid, write the table, plot and command; return {'rows', 'summary', 'refused',
    'wall_s'}."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    from rdbm_jax import config as config_lib
    from rdbm_jax.errors import ConfigError

    start = time.time()
    nfe = args.nfe or ([1, 2] if args.tiny else [1, 2, 5, 10, 20])
    steps = args.steps or (2 if args.tiny else 1000)
    os.makedirs(args.out_dir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    steps_rows: list[dict[str, Any]] = []  # the per-step diagnostic's (--per-step)
    refused: list[tuple[str, str]] = []
    cells = fresh = 0  # grid cells scored / trained in this invocation (the rest resumed finished)
    sigma_data = args.sigma_data
    if sigma_data == "auto" and (reads_rho(args.objective) or args.fuse):
        probe = make_config("residual", "residual", 0, nfe, steps, args.tiny)
        apply_options(probe, args, "1")
        sigma_data = measure_sigma_data(probe, 2 if args.tiny else 100)
        logging.getLogger("rdbm_jax").info("ablation: measured bridge.sigma_data=%s", sigma_data)
    for pi in args.pi:
        for obj in args.objective:
            for seed in args.seeds:
                cfg = make_config(pi, obj, seed, nfe, steps, args.tiny)
                apply_options(cfg, args, sigma_data if sigma_data != "auto" else "1")
                try:
                    config_lib.validate(cfg)
                except ConfigError as e:
                    if "bridge.parameterization='pi_eps'" not in str(e):
                        raise
                    refused.append((pi, obj))
                    break
                t0 = time.time()
                name = cell_name(pi, obj, seed, args)
                workdir = os.path.join(args.runs_dir or os.path.join(args.out_dir, "runs"), name)
                trained = False
                if args.fuse and args.fuse_sigma == "error":  # needs the trained network
                    trained = ensure_trained(cfg, workdir)
                    cfg.sample.fuse_sigma = measure_fuse_sigma(cfg, workdir)
                    logging.getLogger("rdbm_jax").info("ablation: %s sample.fuse_sigma=%s", name,
                                                       cfg.sample.fuse_sigma)
                cell_rows, trained_now = run_cell(cfg, workdir)
                trained = trained or trained_now
                label = obj + name[len(f"{pi}_{obj}"):-len(f"_s{seed}")]  # objective + options
                label += f"_fse{args.first_step_eta:g}" if args.first_step_eta else ""
                label += f"_eta{args.eta:g}" if args.eta else ""
                label += "_fuse" if args.fuse else ""
                label += "_err" if args.fuse and args.fuse_sigma == "error" else ""
                rows += [{"pi": pi, "objective": label, "seed": seed, **r} for r in cell_rows]
                if args.per_step:
                    steps_rows += [{"pi": pi, "objective": label, "seed": seed, **r}
                                   for r in per_step_rows(cfg, workdir)]
                cells, fresh = cells + 1, fresh + int(trained)
                logging.getLogger("rdbm_jax").info("ablation π=%s %s seed %d: %.1f s", pi, obj,
                                                   seed, time.time() - t0)
    wall = time.time() - start
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m experiments.ablation " + " ".join(shlex.quote(a) for a in argv)
    resumed = (f"; {cells - fresh} of {cells} cells were trained by an earlier invocation"
               if cells > fresh else "")
    rho = (f"; ρ (bridge.sigma_data) {sigma_data}" if reads_rho(args.objective) or args.fuse
           else "")
    length = "tiny smoke run" if args.tiny else f"{steps} steps"
    header = (f"Ablation in miniature ({length}{rho}), {machine()}, {stamp}, wall time "
              f"{wall / 60:.1f} min{resumed} (command.txt lists every invocation). Command: "
              f"`{command}`")
    summary = summarize(rows) if rows else []
    if rows:
        write_csv(os.path.join(args.out_dir, "results.csv"), rows)
        write_csv(os.path.join(args.out_dir, "summary.csv"), summary)
        plot(summary, os.path.join(args.out_dir, "ablation.png"))
    text = table(summary, refused, header)
    if steps_rows:
        write_csv(os.path.join(args.out_dir, "per_step.csv"), steps_rows)
        text += "\n" + per_step_table(steps_rows)
    atomic.write_text(os.path.join(args.out_dir, "table.md"), text)
    # One line per invocation, appended by an atomic replace (a killed run leaves no torn line).
    log_path = os.path.join(args.out_dir, "command.txt")
    before = ""
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8") as f:
            before = f.read()
    atomic.write_text(log_path, before + f"{command}\n# {machine()}; {stamp}; wall time "
                      f"{wall:.1f} s; trained {fresh} of {cells} cells\n")
    return {"rows": rows, "summary": summary, "refused": refused, "wall_s": wall}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    logging.getLogger("rdbm_jax").setLevel(logging.INFO)
    main()
