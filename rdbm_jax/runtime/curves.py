"""`workdir/curves.png`: training loss and validation PSNR (whole image, and inside the holes for
inpainting) against steps, from `metrics.jsonl`."""
from __future__ import annotations

import io
import json

from rdbm_jax.runtime import paths

# Validation PSNR series drawn when present in metrics.jsonl: key → legend label.
PSNR_SERIES = {
    "val/psnr": "model (EMA)", "val/psnr_baseline": "baseline", "val/psnr_input": "degraded input"
}
# ... and inside the inpainting holes (the score the README leads with), in a panel of its own.
MASKED_SERIES = {k.replace("val/psnr", "val/psnr_masked"): v for k, v in PSNR_SERIES.items()}
# model, baseline, input
STYLES = (("tab:red", "o", "-"), ("tab:green", "s", "--"), ("tab:gray", "^", ":"))


def read_series(metrics_path: str, keys: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    """key → (steps, values) from a metrics.jsonl; a step logged twice (a resume) keeps its last
    row."""
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
                if k in row and "step" in row:  # null: a score that was not a number (NaN)
                    latest[k][int(row["step"])] = float("nan" if row[k] is None else row[k])
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in latest.items() if v}


def plot_curves(metrics_path: str, out_path: str) -> bool:
    """Draw train/loss and the validation PSNR series into `out_path`; False when nothing is logged
    yet."""
    series = read_series(metrics_path, ["train/loss", *PSNR_SERIES, *MASKED_SERIES])
    if not series:
        return False
    import matplotlib.pyplot as plt

    fig = figure(series)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    paths.write_bytes(out_path, buffer.getvalue())  # readers never see a half-written file
    return True


def figure(series: dict[str, tuple[list[int], list[float]]]):
    """The loss panel, the validation PSNR panel and, when logged, the inside-the-holes panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masked = any(k in series for k in MASKED_SERIES)
    fig, axes = plt.subplots(1, 3 if masked else 2, figsize=(15 if masked else 10, 3.8),
                             sharex=True)  # one step axis
    ax_loss, ax_psnr = axes[:2]
    if "train/loss" in series:
        steps, values = series["train/loss"]
        ax_loss.plot(steps, values, color="tab:blue", lw=1.2,
                     marker="." if len(steps) < 30 else None)
        if min(values) > 0 and max(values) / min(values) > 10:
            ax_loss.set_yscale("log")
    else:
        ax_loss.text(0.5, 0.5, "no training loss logged yet", ha="center", va="center",
                     transform=ax_loss.transAxes)
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train/loss")
    _psnr_panel(ax_psnr, series, PSNR_SERIES, "validation PSNR")
    if masked:
        _psnr_panel(axes[2], series, MASKED_SERIES,
                    "validation PSNR inside the holes (psnr_masked)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.tick_params(labelbottom=True)
    fig.tight_layout()
    return fig


def _psnr_panel(ax, series: dict, keys: dict[str, str], title: str) -> None:
    """Model, baseline and input PSNR series (those logged) in one panel."""
    drawn = [k for k in keys if k in series]
    for k, (color, marker, ls) in zip(keys, STYLES):
        if k in series:
            ax.plot(*series[k], color=color, marker=marker, ls=ls, label=keys[k])
    if drawn:
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")


def refresh(workdir: str) -> bool:
    """Redraw `workdir/curves.png` from `workdir/metrics.jsonl` (called after every validation)."""
    path = paths.join(workdir, "metrics.jsonl")
    return paths.as_path(path).exists() and plot_curves(path, paths.join(workdir, "curves.png"))
