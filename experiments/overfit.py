"""Can the network learn at all, and does what it learns carry? It trains on a fixed pool of
training batches and restores them at NFE 1, and fresh crops it never saw; PSNR inside the holes
beside its pre-fill alone, biharmonic and the input (issue 28).

    python -m experiments.overfit --pool 1 --out-dir experiments/results/overfit/pool1

The folds' networks add nothing over their pre-fill even on the photos they trained on
(docs/fit_gap.md): they under-fit. Two readings fit that: a broken chain between the loss and the
sampler (the sampler does not read the output as the loss trained it, so nothing the network
learns reaches the restored photo), or a working chain whose network has not had the compute to
learn a correction that carries to new crops. A working chain restores a batch it has memorised
far above its pre-fill; a broken one does not, however long it trains. Growing the pool shows
where memorising stops and whether fitting the pool carries to crops outside it.

Protocol: the config's (default: the demo's) training iterator at the config's seed; its first
`--pool` batches (`train.batch_size` crops each, with their masks) are the pool, fixed, and the
next `--held-out` batches are fresh crops of the same photos, never trained on. `--steps` steps of
the config's own training program cycle through the pool (t and noise drawn afresh each step, as
in training); every `--every` steps the config's sampler at NFE 1 restores, with the raw and the
EMA weights, the pool's first SCORED batches (all of a smaller pool) and the held-out batches,
beside the pre-fill alone, scikit-image's biharmonic (true mask) and the input. PSNR inside the
holes is pooled over the scored crops' hole pixels (RGB in [0, 1], uint8-quantised): a crop's own
PSNR is infinite where its hole lies in a flat region that the pre-fill reproduces exactly, so the
per-crop mean of the project's protocol is not defined here. `--loss-at-t 0,50,99` adds, per
row, the training loss of the raw weights at each of those steps on the scored pool crops, with
noise drawn once and kept (the mean of the batches' losses): which steps has it learned? Near
t = 0, x_t shows x0 inside the holes; at t = T − 1 it shows μ, and there the one-step restorer
reads x̂0. Writes overfit.csv and summary.md (atomically; a rerun replaces both).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import cli, holes, scaling
from rdbm_jax import conditioning, data, program
from rdbm_jax import config as config_lib
from rdbm_jax.config_files import load
from rdbm_jax.errors import ConfigError
from rdbm_jax.evaluation import baselines
from rdbm_jax.evaluation.metrics import quantize_levels, to_unit
from rdbm_jax.runtime import atomic, distributed

SCORED = 16  # pool batches scored per row: the pool is cycled evenly, so these stand for it
SETS = ("pool", "held")  # the scored sets: the trained pool, the fresh crops
SCORES = ("raw", "ema", "prefill", "biharmonic", "input")
COLUMNS = ("step", "loss", *(f"{s}_{k}" for s in SETS for k in SCORES), "cpu_s")
Batch = dict[str, np.ndarray]


def columns(loss_ts: tuple[int, ...] = ()) -> tuple[str, ...]:
    """The CSV's columns: COLUMNS, then the loss at each fixed t (`--loss-at-t`)."""
    return COLUMNS + tuple(f"loss_t{t}" for t in loss_ts)


def parse_steps(text: str) -> tuple[int, ...]:
    """--loss-at-t's comma-separated steps, e.g. "0,50,99" (checked against T by train_on_pool)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--loss-at-t {text!r}: expected steps like 0,50,99") from None


def fixed_batches(cfg: ml_collections.ConfigDict, count: int) -> list[Batch]:
    """The first `count` batches of cfg's training iterator (seed `cfg.seed`), as numpy arrays."""
    it = data.build_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size,
                                   seed=cfg.seed)
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(count)]


def joined(batches: list[Batch]) -> Batch:
    """The batches as one (scored together: PSNR pooled over all their hole pixels)."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def holes_psnr(x: np.ndarray, x0: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) of x against x0 over all the batch's hole pixels, RGB in [0, 1], uint8-quantised
    ([-1, 1] inputs; `mask` [B, H, W, 1], 1 inside the holes)."""
    err = quantize_levels(to_unit(x)) - quantize_levels(to_unit(x0))
    weight = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), err.shape)
    mse = float(jnp.sum(jnp.square(err) * weight) / jnp.maximum(jnp.sum(weight), 1.0))
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def biharmonic(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The project's classical baseline (scikit-image's biharmonic, the true mask) per crop, in
    [-1, 1]."""
    unit = np.asarray(to_unit(batch["mu"]))
    return np.stack([baselines.restore(u, "inpaint", mask=m) for u, m in zip(unit, batch["mask"])
                     ]) * 2.0 - 1.0


def classical_scores(cfg: ml_collections.ConfigDict, crops: Batch) -> dict[str, float]:
    """PSNR inside the holes of the network's pre-fill alone, biharmonic and the input."""
    fill = conditioning.PREFILLS[cfg.model.condition](crops["mu"], crops["mask"])
    return {"prefill": holes_psnr(fill, crops["x0"], crops["mask"]),
            "biharmonic": holes_psnr(biharmonic(crops), crops["x0"], crops["mask"]),
            "input": holes_psnr(crops["mu"], crops["x0"], crops["mask"])}


def train_on_pool(cfg: ml_collections.ConfigDict, steps: int, every: int, pool: int = 1,
                  held_out: int = 4, sampler_cfg: ml_collections.ConfigDict | None = None,
                  loss_ts: tuple[int, ...] = ()) -> list[dict[str, float]]:
    """One row per `every` steps (and step 0): the mean loss since the last row; for the pool and
    the held-out crops (`SETS`) the NFE-1 restoration's PSNR inside the holes with the raw and
    the EMA weights, the pre-fill's, biharmonic's and the input's; the CPU seconds spent
    (process time, compiles included). `sampler_cfg`: the config whose sampler restores (default
    `cfg`; the tests read the output with another rule). `loss_ts`: steps t at which each row
    also holds the raw weights' loss on the scored pool crops (`loss_t<t>`), at fixed noise."""
    if cfg.model.condition not in conditioning.PREFILLS:
        raise ConfigError(f"model.condition={cfg.model.condition!r}: no pre-fill to compare with "
                          f"(one of {tuple(conditioning.PREFILLS)})")
    if pool < 1 or held_out < 1:
        raise ConfigError(f"--pool and --held-out must be >= 1, got {pool} and {held_out}")
    outside = [t for t in loss_ts if not 0 <= t < cfg.bridge.num_timesteps]
    if outside:
        raise ConfigError(f"--loss-at-t: steps {outside} outside 0 … "
                          f"{cfg.bridge.num_timesteps - 1} (bridge.num_timesteps)")
    mesh = distributed.make_mesh()
    batches = fixed_batches(cfg, pool + held_out)
    scored = {"pool": batches[:min(pool, SCORED)], "held": batches[pool:]}
    fixed = {name: classical_scores(cfg, joined(sets)) for name, sets in scored.items()}
    prog = program.program(cfg, mesh)
    sampler = program.build_sampler(sampler_cfg or cfg, mesh, num_steps=1)
    # K = 1 step per call: each batch is repeated along the steps-per-dispatch axis the step reads.
    stacked = [{k: np.repeat(v[None], cfg.train.steps_per_dispatch, axis=0) for k, v in b.items()}
               for b in batches[:pool]]
    # one noise draw per scored pool batch, kept for every row: the rows differ by weights only
    noises = [jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 2), i),
                                b["x0"].shape) for i, b in enumerate(scored["pool"])]
    state = prog.init(program.init_key(cfg.seed))
    key = jax.random.PRNGKey(cfg.seed + 1)  # the training loop's step key differs from init's

    def restored(params: Any, sets: list[Batch]) -> float:
        # one batch shape per call: the sampler compiles once
        out = np.concatenate([sampler(params, b["mu"], jax.random.PRNGKey(0), mask=b["mask"])
                              for b in sets])
        crops = joined(sets)
        return holes_psnr(out, crops["x0"], crops["mask"])

    def loss_at(t: int) -> float:
        per_batch = [prog.loss_at_t(state.params, b, jnp.full(len(b["x0"]), t, jnp.int32), n,
                                    jax.random.PRNGKey(0))  # dropout key (the demo has none)
                     for b, n in zip(scored["pool"], noises)]
        return float(np.mean(per_batch))

    def row(step: int, losses: list[float]) -> dict[str, float]:
        out = {"step": step, "loss": float(np.mean(losses)) if losses else float("nan")}
        out.update({f"loss_t{t}": loss_at(t) for t in loss_ts})
        for name, sets in scored.items():
            out[f"{name}_raw"] = restored(state.params, sets)
            out[f"{name}_ema"] = restored(state.ema_params, sets)
            out.update({f"{name}_{k}": v for k, v in fixed[name].items()})
        return {**out, "cpu_s": time.process_time() - start}

    start = time.process_time()
    rows = [row(0, [])]
    losses: list[float] = []
    for step in range(1, steps + 1):
        state, metrics, _ = prog.step(state, stacked[(step - 1) % pool], key)
        losses.append(float(metrics.compute()["loss"]))
        if step % every == 0 or step == steps:
            rows.append(row(int(state.step), losses))
            losses = []
    return rows


def _loss_ts(rows: list[dict[str, float]]) -> list[int]:
    """The fixed steps whose loss the rows hold (`loss_t<t>` keys), in their order."""
    return [int(k[len("loss_t"):]) for k in rows[0] if k.startswith("loss_t")]


def summary(rows: list[dict[str, float]], about: str) -> str:
    """Markdown: per row each set's scores and the gain over the pre-fill, the loss at each fixed
    t; the protocol and `about` (config, pool, commit, machine)."""
    names = ["NFE 1 raw", "NFE 1 EMA", "pre-fill", "biharmonic", "input", "raw − pre-fill"]
    loss_ts = _loss_ts(rows)
    head = ["step", "loss", *(f"{s}: {n}" for s in ("pool", "held out") for n in names), "CPU s",
            *(f"loss at t = {t}" for t in loss_ts)]
    lines = ["# A fixed pool of training crops: does the network learn it, and does it carry?", "",
             "Generated by `experiments/overfit.py`; do not edit by hand. "
             + " ".join(__doc__.split("\n\n")[3].split()), "", about, "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [f"{int(r['step'])}", f"{r['loss']:.4f}"]
        for name in SETS:
            cells += [f"{r[f'{name}_{k}']:.2f}" for k in SCORES]
            cells.append(f"{r[f'{name}_raw'] - r[f'{name}_prefill']:+.2f}")
        cells.append(f"{r['cpu_s']:.0f}")
        cells += [f"{r[f'loss_t{t}']:.4f}" for t in loss_ts]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out_dir: str, rows: list[dict[str, float]], about: str) -> None:
    """overfit.csv and summary.md under `out_dir`, each in one atomic replace."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.StringIO()
    names = columns(tuple(_loss_ts(rows)))
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.4f}" if k != "step" else int(r[k])) for k in names})
    atomic.write_text(os.path.join(out_dir, "overfit.csv"), buf.getvalue())
    atomic.write_text(os.path.join(out_dir, "summary.md"), summary(rows, about))


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--config", default="configs/demo.py", help="config file[:variant]")
    p.add_argument("--pool", type=int, default=1, help="training batches, cycled")
    p.add_argument("--held-out", type=int, default=4, help="fresh batches scored, never trained")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=250, help="score every this many steps")
    p.add_argument("--set", action="append", default=[], type=holes.parse_setting,
                   metavar="KEY=VALUE", help="a config setting, e.g. train.t_sampling=late "
                   "(repeatable)")
    p.add_argument("--loss-at-t", default="", metavar="T1,T2,…",
                   help="also the loss at these fixed steps t on the pool (e.g. 0,50,99)")
    p.add_argument("--machine", default="", help="where it was measured, for summary.md")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.steps < 1 or a.every < 1:
        raise ConfigError(f"--steps and --every must be >= 1, got {a.steps} and {a.every}")
    cfg = config_lib.put(load(a.config), dict(a.set))
    cfg.train.num_steps = a.steps  # the LR schedule spans the steps this run takes
    config_lib.validate(cfg)
    loss_ts = parse_steps(a.loss_at_t)
    rows = train_on_pool(cfg, a.steps, a.every, a.pool, a.held_out, loss_ts=loss_ts)
    size = cfg.train.batch_size
    settings = "".join(f", `{key}={value!r}`" for key, value in a.set)
    about = (f"Config `{a.config}`{settings}, {a.steps} steps; pool: {a.pool} batch(es) of "
             f"{size} crops ({a.pool * size} crops, {min(a.pool, SCORED) * size} scored); "
             f"held out: {a.held_out * size} crops; commit {scaling.commit()}."
             + (f" Measured on {a.machine}." if a.machine else ""))
    write(a.out_dir, rows, about)
    print(summary(rows, about))
    return rows


if __name__ == "__main__":
    cli.run(main)
