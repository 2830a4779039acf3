"""The ablation grid's results: mean ± half-range over seeds, markdown tables, plot, CSV files."""
from __future__ import annotations

import csv
import os
import platform
from typing import Any

import numpy as np

from rdbm_jax.runtime import atomic

PAPER = ("Paper (RDBM-L, 5-task average, NFE 10): π = 0 → 28.21 dB, π = 1 → 30.15 dB, "
         "π = x0 − μ → 31.04 dB; NFE 10 best, NFE 2 collapses, 20–100 slightly worse.")
METRICS = ("psnr", "ssim")

# Same images, every cell.
REFERENCES = (("_baseline", "classical baseline"), ("_input", "degraded input"))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and half-range ((max − min)/2) over seeds per (π, objective, NFE), overall and per task
    (the model's scores, and the baseline's and input's, which every cell shares)."""
    ends = METRICS + tuple(m + sfx for m in METRICS for sfx, _ in REFERENCES)
    keys = [k for k in rows[0] if k.endswith(ends) and k not in ("pi", "objective")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["pi"], r["objective"], r["nfe"]), []).append(r)
    out = []
    for (pi, objective, nfe), rs in groups.items():
        s: dict[str, Any] = {"pi": pi, "objective": objective, "nfe": nfe, "seeds": len(rs)}
        for k in keys:
            v = np.array([r[k] for r in rs], np.float64)
            s[f"{k}_mean"], s[f"{k}_spread"] = float(v.mean()), float((v.max() - v.min()) / 2)
        out.append(s)
    return out


def _rows(summary: list[dict[str, Any]], key: str, fmt: str, nfes: list[int]) -> list[str]:
    """Table rows (π, objective) × NFE of `key` (mean ± half-range), then the baseline and input
    rows."""
    by = {(s["pi"], s["objective"], s["nfe"]): s for s in summary}
    lines = [f"| {pi} | {obj} | " + " | ".join(
        (fmt + " ± " + fmt).format(by[(pi, obj, n)][f"{key}_mean"],
                                   by[(pi, obj, n)][f"{key}_spread"])
        for n in nfes) + " |" for pi, obj in sorted({(s["pi"], s["objective"]) for s in summary})]
    for sfx, label in REFERENCES:
        if f"{key}{sfx}_mean" in summary[0]:
            lines.append(f"| {label} | — | " + " | ".join(fmt.format(summary[0][f"{key}{sfx}_mean"])
                                                        for _ in nfes) + " |")
    return lines


def table(summary: list[dict[str, Any]], refused: list[tuple[str, str]], header: str) -> str:
    """Markdown: PSNR and SSIM tables (overall, then per task), rows (π, objective) and the
    classical baseline and degraded input on the same images, columns NFE, mean ± half-range over
    seeds."""
    nfes = sorted({s["nfe"] for s in summary})
    tasks = sorted({k.split("/")[0] for k in (summary[0] if summary else {}) if "/" in k})
    lines = [header, "", PAPER, ""]
    for scope in ["overall"] + tasks if summary else ():
        for metric, fmt in (("psnr", "{:.2f}"), ("ssim", "{:.4f}")):
            key = metric if scope == "overall" else f"{scope}/{metric}"
            what = "mean over the tasks" if scope == "overall" else f"task {scope}"
            lines += [f"**{metric.upper()}, {what}** (± half the range over seeds)", "",
                      "| π | objective | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "|---|---|" + "---|" * len(nfes)] + _rows(summary, key, fmt, nfes) + [""]
    for pi, obj in refused:
        lines.append(f"- π = {pi} with objective {obj}: refused by the config guard "
                     "(target π⊙ε ≡ 0).")
    return "\n".join(lines) + "\n"


def per_step_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per cell and task, model / skip / inversion PSNR at each t of the NFE-10 grid
    (mean over seeds) and the criterion's margin, min over t of model − skip."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["pi"], r["objective"], r["task"]), []).append(r)
    ts = sorted({r["t"] for r in rows}, reverse=True)
    lines = ["**Per-step diagnostic** (NFE-10 grid, true forward samples; PSNR inside the mask, "
             "model / skip estimate / inversion, mean over seeds)", "",
             "| π | objective | task | " + " | ".join(f"t = {t}" for t in ts)
             + " | min over t of model − skip |", "|---|---|---|" + "---|" * (len(ts) + 1)]
    for (pi, obj, task), rs in sorted(groups.items()):
        mean = {t: {k: float(np.mean([r[k] for r in rs if r["t"] == t]))
                    for k in ("model", "skip", "invert")} for t in ts}
        cells = [f"{m['model']:.1f} / {m['skip']:.1f} / {m['invert']:.1f}" for m in mean.values()]
        gain = min(m["model"] - m["skip"] for m in mean.values())
        lines.append(f"| {pi} | {obj} | {task} | " + " | ".join(cells) + f" | {gain:+.2f} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: str) -> None:
    """PSNR and SSIM against NFE, one line per (π, objective), error bars = half-range over
    seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for pi, obj in sorted({(s["pi"], s["objective"]) for s in summary}):
        sel = sorted((s for s in summary if (s["pi"], s["objective"]) == (pi, obj)),
                     key=lambda s: s["nfe"])
        for ax, m in zip(axes, METRICS):
            ax.errorbar([s["nfe"] for s in sel], [s[f"{m}_mean"] for s in sel],
                        yerr=[s[f"{m}_spread"] for s in sel], marker="o", capsize=3,
                        label=f"π={pi}, {obj}")
    for ax, m in zip(axes, METRICS):  # the classical baseline and the input: flat lines
        for (sfx, label), style in zip(REFERENCES, ("--", ":")):
            if summary and f"{m}{sfx}_mean" in summary[0]:
                ax.axhline(summary[0][f"{m}{sfx}_mean"], ls=style, color="gray", label=label)
    nfes = sorted({s["nfe"] for s in summary})
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # label exactly the NFE values that were run
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.set_xlabel("NFE (sampling steps, η = 0)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes:  # in both panels: cells whose curves coincide still show their colour
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """`rows` as a CSV file with every key any row has as a column (written atomically)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic.open_atomic(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def machine() -> str:
    """The machine, in words (CPU count and model, or the accelerator)."""
    import jax
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        model = platform.processor() or "unknown model"
        return f"{os.cpu_count()}-core {platform.machine()} CPU ({model})"
    return f"{jax.device_count()} × {dev.device_kind}"
