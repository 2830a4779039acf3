"""The scaling study's fit, plot and report (experiments/scaling.py --fit), from scaling.csv alone.

Per configuration, size and NFE (one step, and the configuration's largest), the gain inside the
holes (the model minus biharmonic, and minus its own pre-fill) is fitted by least squares as
gain = a + b·log2(images seen): b is the slope in dB per doubling of images seen, with its
standard error from the points' residuals (n − 2 degrees of freedom; undefined with 2 points).
From the fit: the images seen that would give +1 dB over biharmonic, log2 N = (1 − a)/b, ± its
standard error by the delta method (none when b ≤ 0), and the gain the line predicts at the
paper's budget.

The paper's budget: 500 k iterations × batch 20 = 10⁷ training images of 256² pixels. A run on
c² crops sees (256/c)² times fewer pixels per image, so the paper's budget is given two ways: the
same number of images (10⁷, "images" column) and the same number of pixels (10⁷ × (256/c)² crops
of c², "pixels" column: 1.6·10⁸ crops of 64², 4·10⁷ of 128²).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from rdbm_jax.runtime import atomic

PAPER_STEPS, PAPER_BATCH, PAPER_CROP = 500_000, 20, 256
PAPER_IMAGES = PAPER_STEPS * PAPER_BATCH
REFERENCES = (("biharmonic", "biharmonic"), ("prefill", "pre-fill"))
FIT_FIELDS = ("config", "size", "reference", "nfe", "points", "slope_db_per_doubling", "slope_se",
              "intercept_db", "log2_images_for_1db", "log2_images_for_1db_se",
              "gain_at_paper_images", "gain_at_paper_images_se", "gain_at_paper_pixels",
              "gain_at_paper_pixels_se")


def line_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares y = a + b x: a, b, the standard error of b and the covariance of (a, b)
    (NaN where n − 2 < 1 leaves no residual degrees of freedom)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return dict(a=math.nan, b=math.nan, se_b=math.nan, cov=np.full((2, 2), math.nan), n=n)
    design = np.stack([np.ones(n), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = n - 2
    s2 = float(np.sum((y - a - b * x) ** 2) / dof) if dof > 0 else math.nan
    cov = s2 * np.linalg.inv(design.T @ design)
    return dict(a=float(a), b=float(b), se_b=float(math.sqrt(cov[1, 1])), cov=cov, n=n)


def budget_for(fit: dict[str, Any], target: float = 1.0) -> tuple[float, float]:
    """(log2 of the images seen where the line reaches `target` dB, its delta-method standard
    error); (inf, NaN) when the slope is not positive (the line never gets there going up)."""
    a, b = fit["a"], fit["b"]
    if not b > 0:
        return math.inf, math.nan
    x = (target - a) / b
    grad = np.array([-1.0 / b, -(target - a) / b ** 2])  # d x / d(a, b)
    return float(x), float(math.sqrt(grad @ fit["cov"] @ grad))


def predict(fit: dict[str, Any], x: float) -> tuple[float, float]:
    """(the line's value at x, its standard error from the covariance of (a, b))."""
    g = np.array([1.0, x])
    return fit["a"] + fit["b"] * x, float(math.sqrt(max(g @ fit["cov"] @ g, 0.0)))


def fitted_nfes(mine: list[dict[str, Any]]) -> tuple[int, ...]:
    """The NFEs fitted and drawn for one configuration's rows: 1 and its largest measured (the
    bridge's steps pay only if the second line lies above the first)."""
    measured = [n for n in (1, 2, 10) if all(math.isfinite(r[f"model_nfe{n}"]) for r in mine)]
    return tuple(sorted({min(measured), max(measured)}))


def _fit_row(conf: str, size: float, ref: str, nfe: int, pts: list[dict[str, Any]],
             crop: float) -> dict[str, Any]:
    """One FIT_FIELDS row: the line through `pts`' gain of NFE `nfe` over `ref`, and what it
    predicts (+1 dB budget, the paper's images and pixels)."""
    x = np.log2([r["images_seen"] for r in pts])
    y = np.array([r[f"model_nfe{nfe}"] - r[ref] for r in pts])
    f = line_fit(x, y)
    need, need_se = budget_for(f)
    by_img = predict(f, math.log2(PAPER_IMAGES))
    by_px = predict(f, math.log2(PAPER_IMAGES * (PAPER_CROP / crop) ** 2))
    return dict(zip(FIT_FIELDS, (conf, int(size), ref, nfe, len(pts), f["b"], f["se_b"], f["a"],
                                 need, need_se, *by_img, *by_px)))


def fits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One fit per (configuration, size, reference, NFE) with at least 2 points and a pre-fill
    where the reference is the pre-fill; at NFE 1 and each configuration's largest NFE."""
    out = []
    for conf in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == conf]
        crop = math.sqrt(mine[0]["pixels_seen"] / mine[0]["images_seen"])
        nfes = fitted_nfes(mine)
        for size in sorted({r["size"] for r in mine}):
            at = sorted((r for r in mine if r["size"] == size), key=lambda r: r["steps"])
            for ref, _ in REFERENCES:
                pts = [r for r in at if math.isfinite(r[ref])]
                if len(pts) >= 2:
                    out += [_fit_row(conf, size, ref, nfe, pts, crop) for nfe in nfes]
    return out


def figure(rows: list[dict[str, Any]]) -> Any:
    """One figure: gain over biharmonic (top) and over the pre-fill (bottom) inside the holes
    against images seen (log x), one panel per size, one colour per configuration (solid: its
    largest NFE, dashed: NFE 1)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.4), squeeze=False,
                             sharex=True)
    # one colour per configuration in every panel (some have no pre-fill panel line)
    for k, conf in enumerate(dict.fromkeys(r["config"] for r in rows)):
        mine = [r for r in rows if r["config"] == conf]
        nfes = fitted_nfes(mine)
        for j, size in enumerate(sizes):
            at = sorted((r for r in mine if r["size"] == size), key=lambda r: r["steps"])
            for i, (ref, _) in enumerate(REFERENCES):
                pts = [r for r in at if math.isfinite(r[ref])]
                if not pts:
                    continue
                for nfe in nfes:  # the largest NFE solid, NFE 1 dashed
                    largest = nfe == nfes[-1]
                    axes[i, j].plot([r["images_seen"] for r in pts],
                                    [r[f"model_nfe{nfe}"] - r[ref] for r in pts],
                                    marker="o" if largest else ".", ls="-" if largest else "--",
                                    color=f"C{k % 10}", label=f"{conf} (NFE {nfe})")
    for i, (_, label) in enumerate(REFERENCES):
        for j, size in enumerate(sizes):
            ax = axes[i, j]
            ax.set_xscale("log")
            ax.axhline(0.0, color="gray", lw=0.8)
            ax.set_title(f"{size:g} px", fontsize=9)
            if i == len(REFERENCES) - 1:
                ax.set_xlabel("training images seen")
            if j == 0:
                ax.set_ylabel(f"gain over {label},\ninside the holes (dB)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """`figure(rows)` as a PNG, written atomically."""
    import io

    import matplotlib.pyplot as plt

    fig = figure(rows)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
