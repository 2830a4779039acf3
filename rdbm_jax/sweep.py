"""`--mode=sweep`: one checkpoint across NFE × η (the paper's sampling ablation) → CSV + PNG plot."""
from __future__ import annotations

import csv
import io
import json
import logging
from typing import Any

import ml_collections

from rdbm_jax import config as config_lib, data, distributed, paths, program, progress
from rdbm_jax.errors import ConfigError
from rdbm_jax.evaluate import SCORES, Baselines, protocol, sampling_key, score_sources, summary_line

log = logging.getLogger("rdbm_jax")


def figure(rows: list[dict]) -> Any:
    """PSNR and SSIM against NFE, one line per η, the baseline and input as flat lines, ticks at the
    NFE values run (matplotlib, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    nfes = sorted({r["nfe"] for r in rows})
    step = rows[0].get("step")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for eta in sorted({r["eta"] for r in rows}):
        sel = sorted((r for r in rows if r["eta"] == eta), key=lambda r: r["nfe"])
        for ax, key in zip(axes, ("psnr", "ssim")):
            ax.plot([r["nfe"] for r in sel], [r[key] for r in sel], marker="o", label=f"η = {eta:g}")
    for ax, metric in zip(axes, ("psnr", "ssim")):  # the classical baseline and the input: flat lines
        for sfx, style in (("_baseline", "--"), ("_input", ":")):
            if metric + sfx in rows[0]:
                ax.axhline(rows[0][metric + sfx], ls=style, color="gray", label=sfx[1:])
    for ax, key in zip(axes, ("PSNR (dB)", "SSIM")):
        if len(nfes) > 1 and nfes[-1] / nfes[0] >= 8:
            ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # no minor-tick labels (they overlapped on log axes)
        ax.set_xticks(nfes, [str(n) for n in nfes])  # label exactly the NFE values that were run
        ax.set_xlabel("NFE (sampling steps)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"sampling sweep{f' (checkpoint step {step})' if step is not None else ''}", fontsize=10)
    fig.tight_layout()
    return fig


def plot(rows: list[dict], path: str) -> None:
    """Save `figure(rows)` as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(rows)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    paths.write_bytes(path, buffer.getvalue())


def run_sweep(cfg: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Evaluate one checkpoint for every (NFE, η) in sweep.nfe × sweep.eta; write sweep/results.csv + plot."""
    config_lib.validate(cfg)
    nfes, etas = config_lib.parse_list(cfg, "sweep.nfe", int), config_lib.parse_list(cfg, "sweep.eta", float)
    for n in nfes:
        if not 1 <= n <= cfg.bridge.num_timesteps:
            raise ConfigError(f"sweep.nfe: {n} is outside 1..bridge.num_timesteps={cfg.bridge.num_timesteps}")
    for e in etas:
        if not 0.0 <= e <= 1.0:
            raise ConfigError(f"sweep.eta: {e} is outside [0, 1]")
    mesh = distributed.make_mesh()
    params, step = program.load_trained(cfg, workdir, mesh, cfg.sample.checkpoint)[2:]
    sources = data.build_eval_sources(cfg.data, max_images=cfg.eval.max_images)
    rows: list[dict[str, Any]] = []
    pbar = progress.bar(len(etas) * len(nfes), "sweep", unit="setting")
    baseline = None  # the classical baseline does not depend on the setting: computed once
    for eta in etas:
        for nfe in nfes:
            sampler = program.sampler(cfg, mesh, num_steps=nfe, eta=eta)
            baseline = baseline or Baselines(true_mask=sampler.uses_mask)
            _, per_task, _ = score_sources(sampler, params, sources, cfg, sampling_key(cfg.seed),
                                           baseline=baseline)
            row = {"step": step, "nfe": nfe, "eta": eta}
            row.update({k: v for k, v in per_task["overall"].items() if k in SCORES})
            if len(sources) > 1:
                row.update({f"{t}/{k}{sfx}": v[k + sfx] for t, v in per_task.items() if t != "overall"
                            for k in ("psnr", "ssim") for sfx in ("", "_baseline", "_input") if k + sfx in v})
            rows.append(row)
            log.info("sweep nfe=%d eta=%g: %s", nfe, eta, summary_line(per_task["overall"]))
            pbar.update(1)
    pbar.close()
    out_dir = paths.join(workdir, "sweep")
    if distributed.is_main_process():  # each file written whole, locally or to an object store
        table = io.StringIO(newline="")
        w = csv.DictWriter(table, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        paths.write_text(paths.join(out_dir, "results.csv"), table.getvalue())
        plot(rows, paths.join(out_dir, "results.png"))
        paths.write_text(paths.join(out_dir, "protocol.json"),  # NFE/η: per row
                         json.dumps({"step": step, "protocol": protocol(cfg)}, indent=2))
    return rows
