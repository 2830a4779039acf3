"""`workdir/curves.png`: training loss and validation PSNR against steps, from `metrics.jsonl`."""
from __future__ import annotations

import io
import json

from rdbm_jax import paths

# Validation PSNR series drawn when present in metrics.jsonl: key → legend label.
PSNR_SERIES = {"val/psnr": "model (EMA)", "val/psnr_baseline": "baseline", "val/psnr_input": "degraded input"}


def read_series(metrics_path: str, keys: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    """key → (steps, values) from a metrics.jsonl; a step logged twice (a resume) keeps its last row."""
    latest: dict[str, dict[int, float]] = {k: {} for k in keys}
    with paths.as_path(metrics_path).open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            for k in keys:
                if k in row and "step" in row:
                    latest[k][int(row["step"])] = float(row[k])
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in latest.items() if v}


def plot_curves(metrics_path: str, out_path: str) -> bool:
    """Draw train/loss and the validation PSNR series into `out_path`; False when nothing is logged yet."""
    series = read_series(metrics_path, ["train/loss", *PSNR_SERIES])
    if not series:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)  # one step axis
    if "train/loss" in series:
        steps, values = series["train/loss"]
        ax_loss.plot(steps, values, color="tab:blue", lw=1.2, marker="." if len(steps) < 30 else None)
        if min(values) > 0 and max(values) / min(values) > 10:
            ax_loss.set_yscale("log")
    else:
        ax_loss.text(0.5, 0.5, "no training loss logged yet", ha="center", va="center",
                     transform=ax_loss.transAxes)
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train/loss")
    styles = {"val/psnr": ("tab:red", "o", "-"), "val/psnr_baseline": ("tab:green", "s", "--"),
              "val/psnr_input": ("tab:gray", "^", ":")}
    drawn = [k for k in PSNR_SERIES if k in series]
    for k in drawn:
        color, marker, ls = styles[k]
        ax_psnr.plot(*series[k], color=color, marker=marker, ls=ls, label=PSNR_SERIES[k])
    if drawn:
        ax_psnr.legend(loc="best", fontsize=9)
    else:
        ax_psnr.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_psnr.transAxes)
    ax_psnr.set_title("validation PSNR")
    ax_psnr.set_xlabel("step")
    ax_psnr.set_ylabel("PSNR (dB)")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.tick_params(labelbottom=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    paths.write_bytes(out_path, buffer.getvalue())  # readers never see a half-written file
    return True


def refresh(workdir: str) -> bool:
    """Redraw `workdir/curves.png` from `workdir/metrics.jsonl` (called after every validation)."""
    path = paths.join(workdir, "metrics.jsonl")
    return paths.as_path(path).exists() and plot_curves(path, paths.join(workdir, "curves.png"))
