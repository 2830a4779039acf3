"""PSNR against NFE with the exact (posterior-mean) denoiser on a two-mode per-pixel toy (issue 19).

    python -m benchmarks.exact_nfe --out-dir benchmarks/results/exact-nfe-toy

Each pixel's residual r = x0 − μ is one of two modes, a with probability p or b, independently, and
μ varies over the pixels. The denoiser is E[x0 | x_t, μ] under exactly that prior and RDBM's
marginal x_t = μ + Θ_t r + Σ_t π ε (Eq. 12), so every difference between NFEs is the sampler's, not
a network's. NFE 1 returns E[x0 | μ], the minimum-MSE function of μ: no deterministic (η = 0)
schedule can beat it, and the shape of the NFE ≥ 2 curve is what the η = 0 sampler makes of a
perfect denoiser. Writes results.csv, table.md and exact_nfe.png (and command.txt) to --out-dir.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys
import time
from typing import Callable

import numpy as np

MODES = (-0.9, 0.5)  # the two residuals a, b (model range [-1, 1])
PROB = 0.4           # P(r = a)


def posterior_mean_denoiser(schedule, modes=MODES, prob: float = PROB, pi: str = "one") -> Callable:
    """denoise(x_t, μ, t) = E[x0 | x_t, μ] for r ∈ {a (prob), b} per pixel and the marginal of
    `pi`."""
    import jax.numpy as jnp
    a, b = modes

    def denoise(x_t, mu, t):
        th = schedule.Theta[t].reshape(-1, 1, 1, 1)
        sg = schedule.Sigma[t].reshape(-1, 1, 1, 1)
        y = x_t - mu
        logits = []
        for r, w in ((a, prob), (b, 1.0 - prob)):
            scale = sg * (abs(r) if pi == "residual" else 1.0)
            var = scale ** 2
            # var = 0 (Θ = 0 at t = T−1: y = 0 for both modes): the likelihood is flat,
            # weight = prior.
            ll = jnp.where(var > 0, -0.5 * (y - th * r) ** 2 / jnp.where(var > 0, var, 1.0)
                           - jnp.log(jnp.where(var > 0, scale, 1.0)), 0.0)
            logits.append(ll + np.log(w))
        wa = 1.0 / (1.0 + jnp.exp(logits[1] - logits[0]))
        return mu + wa * a + (1.0 - wa) * b

    return denoise


def toy(shape=(1, 64, 64, 1), seed: int = 0, modes=MODES, prob: float = PROB):
    """(x0, μ) of the toy: μ uniform in [−0.05, 0.05], r = a with probability `prob`, else b."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-0.05, 0.05, shape)
    r = np.where(rng.uniform(size=shape) < prob, modes[0], modes[1])
    return (mu + r).astype(np.float32), mu.astype(np.float32)


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB) in model range [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4.0 / np.mean((np.asarray(x, np.float64) - ref) ** 2)))


def run(nfes: list[int], pis: list[str], settings: list[tuple[str, float, float]],
        seed: int = 0) -> list[dict]:
    """PSNR for every (π, sampling setting (label, η, first_step_eta), NFE) with the exact
    denoiser."""
    import jax
    from rdbm_jax import sde
    s = sde.make_schedule()
    x0, mu = toy(seed=seed)
    rows = []
    for pi in pis:
        den = posterior_mean_denoiser(s, pi=pi)
        for label, eta, fse in settings:
            for nfe in nfes:
                out = sde.sample(den, s, mu, nfe, jax.random.PRNGKey(seed), eta=eta, clip=False,
                                 pi=pi, first_step_eta=fse)
                rows.append({"pi": pi, "sampling": label, "nfe": nfe, "psnr": psnr(out, x0),
                             "mse": float(np.mean((np.asarray(out, np.float64) - x0) ** 2))})
    return rows


def plot(rows: list[dict], path: str) -> None:
    """PSNR against NFE, one line per (π, sampling)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for key in dict.fromkeys((r["pi"], r["sampling"]) for r in rows):
        sel = [r for r in rows if (r["pi"], r["sampling"]) == key]
        ax.plot([r["nfe"] for r in sel], [r["psnr"] for r in sel], marker="o",
                label=f"π={key[0]}, {key[1]}")
    nfes = sorted({r["nfe"] for r in rows})
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.set_xlabel("NFE (sampling steps)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("exact posterior-mean denoiser, two-mode toy", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run, write results.csv, table.md, exact_nfe.png and command.txt; return the rows."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--nfe", default="1,2,5,10,20,50,100")
    args = p.parse_args(argv)
    start = time.time()
    settings = [("η=0", 0.0, 0.0), ("η=0, first step on the marginal", 0.0, 1.0), ("η=1", 1.0, 0.0)]
    nfes = [int(n) for n in args.nfe.split(",")]
    rows = run(nfes, ["one", "residual"], settings)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "results.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Exact posterior-mean denoiser, two-mode per-pixel toy (r ∈ {MODES}, P(a) = {PROB}, "
        f"64×64, rdbm preset, T = 100), PSNR (dB, range [-1, 1]) against NFE; {stamp}. "
        f"The input μ scores {psnr(*toy()[::-1]):.2f} dB.",
        "",
        "| π | sampling | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---|" + "---|" * len(nfes)
    ]
    for key in dict.fromkeys((r["pi"], r["sampling"]) for r in rows):
        sel = [r for r in rows if (r["pi"], r["sampling"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | "
                     + " | ".join(f"{r['psnr']:.2f}" for r in sel) + " |")
    with open(os.path.join(args.out_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, os.path.join(args.out_dir, "exact_nfe.png"))
    with open(os.path.join(args.out_dir, "command.txt"), "w", encoding="utf-8") as f:
        f.write(f"python -m benchmarks.exact_nfe {' '.join(argv)}\n"
                f"# {stamp}; {time.time() - start:.1f} s\n")
    return rows


if __name__ == "__main__":
    main()
