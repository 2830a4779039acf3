"""`--mode=sweep`: one checkpoint across NFE × η (the paper's sampling ablation) → CSV + PNG
plot."""
from __future__ import annotations

import csv
import io
import logging
from typing import Any

import ml_collections

from rdbm_jax import config as config_lib, data, inference, program
from rdbm_jax.runtime import distributed, paths, progress, strict_json
from rdbm_jax.data import spec as data_spec
from rdbm_jax.evaluation.reports import summary_line
from rdbm_jax.evaluation.scoring import SCORES, Baselines, protocol, sampling_key, score_sources

log = logging.getLogger("rdbm_jax")


def figure(rows: list[dict]) -> Any:
    """PSNR, SSIM (and, for inpainting, PSNR inside the holes) against NFE, one line per η, the
    baseline and input as flat lines, ticks at the NFE values run (matplotlib, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    nfes = sorted({r["nfe"] for r in rows})
    step = rows[0].get("step")
    panels = {"psnr": "PSNR (dB)", "ssim": "SSIM"}
    if "psnr_masked" in rows[0]:
        panels["psnr_masked"] = "PSNR inside the holes (dB)"
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for eta in sorted({r["eta"] for r in rows}):
        sel = sorted((r for r in rows if r["eta"] == eta), key=lambda r: r["nfe"])
        for ax, key in zip(axes, panels):
            ax.plot([r["nfe"] for r in sel], [r[key] for r in sel], marker="o",
                    label=f"η = {eta:g}")
    for ax, metric in zip(axes, panels):  # the classical baseline and the input: flat lines
        for sfx, style in (("_baseline", "--"), ("_input", ":")):
            if metric + sfx in rows[0]:
                ax.axhline(rows[0][metric + sfx], ls=style, color="gray", label=sfx[1:])
    for ax, key in zip(axes, panels.values()):
        if len(nfes) > 1 and nfes[-1] / nfes[0] >= 8:
            ax.set_xscale("log")
        # no minor-tick labels (they overlapped on log axes)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(nfes, [str(n) for n in nfes])  # label exactly the NFE values that were run
        ax.set_xlabel("NFE (sampling steps)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"sampling sweep{f' (checkpoint step {step})' if step is not None else ''}",
                 fontsize=10)
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
    """Evaluate one checkpoint for every (NFE, η) in sweep.nfe × sweep.eta; write sweep/results.csv
    + plot."""
    config_lib.validate(cfg)
    data_spec.check_folders(cfg.data, ("eval",))
    nfes = config_lib.parse_list(cfg, "sweep.nfe", int)
    etas = config_lib.parse_list(cfg, "sweep.eta", float)
    mesh = distributed.make_mesh()
    trained = inference.load_trained(cfg, workdir, mesh, cfg.sample.checkpoint,
                                   check_saved=config_lib.check_saved)
    params, step = trained.params, trained.step
    sources = data.build_eval_sources(cfg.data, max_images=cfg.eval.max_images)
    rows: list[dict[str, Any]] = []
    pbar = progress.bar(len(etas) * len(nfes), "sweep", unit="setting")
    baseline = None  # the classical baseline does not depend on the setting: computed once
    for eta in etas:
        for nfe in nfes:
            sampler = program.build_sampler(cfg, mesh, num_steps=nfe, eta=eta)
            baseline = baseline or Baselines(true_mask=sampler.uses_mask)
            _, per_task, _ = score_sources(sampler, params, sources, cfg, sampling_key(cfg.seed),
                                           baseline=baseline)
            row = {"step": step, "nfe": nfe, "eta": eta}
            row.update({k: v for k, v in per_task["overall"].items() if k in SCORES})
            if len(sources) > 1:
                row.update({
                    f"{t}/{k}{sfx}": v[k + sfx]
                    for t, v in per_task.items() if t != "overall" for k in ("psnr", "ssim")
                    for sfx in ("", "_baseline", "_input") if k + sfx in v
                })
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
                         strict_json.dumps({"step": step, "protocol": protocol(cfg)}, indent=2))
        log.info("wrote %s", ", ".join(paths.join(out_dir, f)
                                       for f in ("results.csv", "results.png", "protocol.json")))
    return rows
