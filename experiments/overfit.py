"""Can the network learn at all? It trains on ONE fixed batch of training crops and restores that
batch at NFE 1; PSNR inside the holes beside its pre-fill alone and the input (issue 28).

    python -m experiments.overfit --out-dir experiments/results/overfit --machine "..."

The folds' networks add nothing over their pre-fill even on the photos they trained on
(docs/fit_gap.md): they under-fit. Two readings fit that: a broken chain between the loss and the
sampler (the sampler does not read the output as the loss trained it, so nothing the network
learns reaches the restored photo), or a working chain whose network has not had the compute to
learn a correction that carries to new crops. A working chain restores a batch it has memorised
far above its pre-fill; a broken one does not, however long it trains.

Protocol: the config's (default: the demo's) first training batch (the training iterator at the
config's seed: `train.batch_size` crops with their masks, fixed), `--steps` steps of the config's
own training program on that batch alone (t and noise drawn afresh each step, as in training),
and every `--every` steps the config's sampler at NFE 1 with the raw and the EMA weights on the
batch's μ and masks, beside the pre-fill alone, scikit-image's biharmonic (true mask) and the
input. PSNR inside the holes is pooled over the batch's hole pixels (RGB in [0, 1],
uint8-quantised): a crop's own PSNR is infinite where its hole lies in a flat region that the
pre-fill reproduces exactly, so the per-crop mean of the project's protocol is not defined here.
Writes overfit.csv and summary.md (atomically; a rerun replaces both).
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

from experiments import cli, scaling
from rdbm_jax import conditioning, data, program
from rdbm_jax.config_files import load
from rdbm_jax.errors import ConfigError
from rdbm_jax.evaluation import baselines
from rdbm_jax.evaluation.metrics import quantize_levels, to_unit
from rdbm_jax.runtime import atomic, distributed

COLUMNS = ("step", "loss", "model_raw", "model_ema", "prefill", "biharmonic", "input", "cpu_s")


def fixed_batch(cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The first batch of cfg's training iterator (seed `cfg.seed`), as numpy arrays."""
    it = data.build_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size,
                                   seed=cfg.seed)
    return {k: np.asarray(v) for k, v in next(it).items()}


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


def train_on_batch(cfg: ml_collections.ConfigDict, steps: int, every: int,
                   sampler_cfg: ml_collections.ConfigDict | None = None
                   ) -> list[dict[str, float]]:
    """One row per `every` steps (and step 0): the mean loss since the last row, the NFE-1
    restoration's PSNR inside the holes with the raw and the EMA weights, the pre-fill's,
    biharmonic's and the input's, and the CPU seconds spent (process time, compiles included).
    `sampler_cfg`: the config whose sampler restores (default `cfg`; the tests read the output
    with another rule)."""
    if cfg.model.condition not in conditioning.PREFILLS:
        raise ConfigError(f"model.condition={cfg.model.condition!r}: no pre-fill to compare with "
                          f"(one of {tuple(conditioning.PREFILLS)})")
    mesh = distributed.make_mesh()
    batch = fixed_batch(cfg)
    prog = program.program(cfg, mesh)
    sampler = program.build_sampler(sampler_cfg or cfg, mesh, num_steps=1)
    fill = conditioning.PREFILLS[cfg.model.condition](batch["mu"], batch["mask"])
    prefill = holes_psnr(fill, batch["x0"], batch["mask"])
    given = holes_psnr(batch["mu"], batch["x0"], batch["mask"])
    classical = holes_psnr(biharmonic(batch), batch["x0"], batch["mask"])
    # K = 1 step per call: the batch is repeated along the steps-per-dispatch axis the step reads.
    stacked = {k: np.repeat(v[None], cfg.train.steps_per_dispatch, axis=0)
               for k, v in batch.items()}
    state = prog.init(program.init_key(cfg.seed))
    key = jax.random.PRNGKey(cfg.seed + 1)  # the training loop's step key differs from init's

    def restored(params: Any) -> float:
        out = sampler(params, batch["mu"], jax.random.PRNGKey(0), mask=batch["mask"])
        return holes_psnr(out, batch["x0"], batch["mask"])

    def row(step: int, losses: list[float]) -> dict[str, float]:
        return {"step": step, "loss": float(np.mean(losses)) if losses else float("nan"),
                "model_raw": restored(state.params), "model_ema": restored(state.ema_params),
                "prefill": prefill, "biharmonic": classical, "input": given,
                "cpu_s": time.process_time() - start}

    start = time.process_time()
    rows = [row(0, [])]
    losses: list[float] = []
    for step in range(1, steps + 1):
        state, metrics, _ = prog.step(state, stacked, key)
        losses.append(float(metrics.compute()["loss"]))
        if step % every == 0 or step == steps:
            rows.append(row(int(state.step), losses))
            losses = []
    return rows


def summary(rows: list[dict[str, float]], config: str, machine: str, commit: str = "") -> str:
    """Markdown: the table of `rows` with the gain over the pre-fill, and the protocol."""
    head = ["step", "loss", "NFE 1 raw", "NFE 1 EMA", "pre-fill", "biharmonic", "input",
            "raw − pre-fill", "CPU s"]
    lines = ["# One fixed batch, memorised: does the sampler show what the network learns?", "",
             "Generated by `experiments/overfit.py`; do not edit by hand. "
             + " ".join(__doc__.split("\n\n")[3].split()), "",
             f"Config: `{config}`" + (f", commit {commit}" if commit else "") + "."
             + (f" Measured on {machine}." if machine else ""), "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [f"{int(r['step'])}", f"{r['loss']:.4f}", f"{r['model_raw']:.2f}",
                 f"{r['model_ema']:.2f}", f"{r['prefill']:.2f}", f"{r['biharmonic']:.2f}",
                 f"{r['input']:.2f}",
                 f"{r['model_raw'] - r['prefill']:+.2f}", f"{r['cpu_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out_dir: str, rows: list[dict[str, float]], config: str, machine: str,
          commit: str = "") -> None:
    """overfit.csv and summary.md under `out_dir`, each in one atomic replace."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.4f}" if k != "step" else int(r[k])) for k in COLUMNS})
    atomic.write_text(os.path.join(out_dir, "overfit.csv"), buf.getvalue())
    atomic.write_text(os.path.join(out_dir, "summary.md"), summary(rows, config, machine, commit))


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--config", default="configs/demo.py", help="config file[:variant]")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100, help="score every this many steps")
    p.add_argument("--machine", default="", help="where it was measured, for summary.md")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.steps < 1 or a.every < 1:
        raise ConfigError(f"--steps and --every must be >= 1, got {a.steps} and {a.every}")
    cfg = load(a.config)
    cfg.train.num_steps = a.steps  # the LR schedule spans the steps this run takes
    rows = train_on_batch(cfg, a.steps, a.every)
    commit = scaling.commit()
    write(a.out_dir, rows, a.config, a.machine, commit)
    print(summary(rows, a.config, a.machine, commit))
    return rows


if __name__ == "__main__":
    cli.run(main)
