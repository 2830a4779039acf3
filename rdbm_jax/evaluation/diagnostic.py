"""Per-step diagnostic: how good is x̂0 at each t of the sampling grid, on true forward samples?

For every t the sampler visits (`sde.timestep_pairs(T, sample.num_steps)[:, 0]`), the held-out
images' x_t = `sde.q_sample(x0, μ, t, ε)` (the states training sees, not the sampler's own) are fed
to the network; its x̂0 is scored beside two estimates that need no network: the skip estimate
μ + c_skip (x_t − μ) (`sde.skip_estimate`, the Gaussian-prior posterior mean; ρ from
bridge.sigma_data) and the plain inversion μ + (x_t − μ)/Θ_t (μ where Θ_t = 0). PSNR is taken inside
the degradation mask (the whole image for global degradations), in [0, 1], no quantisation. A
network that earns its keep has x̂0 ≥ skip at every t (issue 19's criterion: `min_gain_over_skip`).
Switched on by eval.per_step: validation logs the scalars to metrics.jsonl, --mode=eval writes
eval/per_step.json and eval/per_step.png.
"""
from __future__ import annotations

import functools
import io
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rdbm_jax.evaluation import metrics
from rdbm_jax.runtime import paths, strict_json
from rdbm_jax import sde

ESTIMATES = ("model", "skip", "invert")  # the network's x̂0, the skip estimate, plain inversion


@functools.partial(jax.jit, static_argnums=(0,))
def _estimates(sampler: Any, params: Any, x0, mu, mask, rho, rho_net, t, noise):
    """(x̂0 of the network, skip estimate, inversion) at one t for a batch of true forward
    samples; ρ of the skip estimate, ρ_net the sampler's own (precond's, or fusion's)."""
    s = sampler.schedule
    rule = sampler.rule
    tt = jnp.full((x0.shape[0],), t, jnp.int32)
    x_t = sde.q_sample(s, x0, mu, tt, noise, pi=rule.pi)
    if rule.uses_mask:  # the skip estimate's prior ρ is mask-aware too
        rho = rho * mask
    cond, rho_net, known = rule.prepare(mu, mask, rho_net)
    x_in = rule.network_input(s, x_t, mu, tt, rho_net)
    out = rule.network(lambda x, c, k: sampler.apply_fn(params, x, c, k))(x_in, cond, tt)
    # the x̂0 the sampler steps with, clipped for scoring (a sampler without clip skips it)
    model = jnp.clip(rule.x0(s, out, x_t, mu, tt, rho_net, known), -1.0, 1.0)
    skip = jnp.clip(sde.skip_estimate(s, x_t, mu, tt, rho, rule.pi), -1.0, 1.0)
    invert = sde.invert(s, x_t, mu, tt)
    return model, skip, jnp.clip(invert, -1.0, 1.0)


def per_step(sampler: Any, params: Any, x0: np.ndarray, mu: np.ndarray, mask: np.ndarray,
             rho: float, key: jax.Array, rho_net: float | None = None) -> list[dict[str, float]]:
    """Rows {t, model, skip, invert} (mean PSNR inside the mask, dB) for one batch of same-size
    images, cropped to the UNet's multiple; ε drawn from `key` per t. ρ: the skip estimate's;
    ρ_net: the sampler's (default ρ)."""
    m = sampler.multiple
    h, w = (x0.shape[1] // m) * m, (x0.shape[2] // m) * m
    x0, mu, mask = (jnp.asarray(a[:, :h, :w], jnp.float32) for a in (x0, mu, mask))
    rho_b = jnp.full((x0.shape[0], 1, 1, 1), rho, jnp.float32)
    rho_net_b = rho_b if rho_net is None else jnp.full_like(rho_b, rho_net)
    rows = []
    for t in sde.timestep_pairs(sampler.schedule.num_timesteps, sampler.num_steps)[:, 0]:
        noise = jax.random.normal(jax.random.fold_in(key, int(t)), x0.shape, jnp.float32)
        est = _estimates(sampler, params, x0, mu, mask, rho_b, rho_net_b, int(t), noise)
        row: dict[str, float] = {"t": int(t)}
        for name, x in zip(ESTIMATES, est):
            psnr = metrics.psnr_masked(metrics.to_unit(x), metrics.to_unit(x0), mask)
            row[name] = float(jnp.nanmean(psnr))
        rows.append(row)
    return rows


def run(sampler: Any, params: Any, sources: dict[str, Any], num_images: int,
        key: jax.Array) -> dict[str, list[dict[str, float]]]:
    """Per source label: `per_step` on its first `num_images` images of the first image's size (ρ
    of the skip estimate: `SamplingSpec.prior_of(task)`; the source's examples carry x0, mu, mask
    and task_name)."""
    out = {}
    for label, source in sources.items():
        first = source[0]
        shape = first["x0"].shape
        examples = [first] + [source[i] for i in range(1, min(len(source), num_images))]
        examples = [e for e in examples if e["x0"].shape == shape]
        ones = np.ones(shape[:2] + (1,), np.float32)  # a source without masks: every pixel
        stack = lambda k: np.stack([e[k] if e.get(k) is not None else ones for e in examples])
        task = first.get("task_name")
        out[label] = per_step(sampler, params, stack("x0"), stack("mu"), stack("mask"),
                              sampler.spec.prior_of(task), key, sampler.rho(task))
    return out


def scalars(results: dict[str, list[dict[str, float]]],
            prefix: str = "val/per_step") -> dict[str, float]:
    """metrics.jsonl scalars: <prefix>/t<t>/<estimate> (mean over sources) and min_gain_over_skip
    (min over t of model − skip: ≥ 0 when the criterion holds)."""
    rows = mean_over_sources(results)
    out = {f"{prefix}/t{r['t']:03d}/{name}": r[name] for r in rows for name in ESTIMATES}
    out[f"{prefix}/min_gain_over_skip"] = min(r["model"] - r["skip"] for r in rows)
    return out


def mean_over_sources(results: dict[str, list[dict[str, float]]]) -> list[dict[str, float]]:
    """Rows per t averaged over the sources (every source visits the same t)."""
    per = list(results.values())
    return [{"t": rs[0]["t"], **{n: float(np.mean([r[n] for r in rs])) for n in ESTIMATES}}
            for rs in zip(*per)]


def write(out_dir: str, results: dict[str, list[dict[str, float]]], info: dict) -> list[str]:
    """per_step.json (per source and the mean, with `info`) and per_step.png, each written whole
    (local or object store, `paths`); returns their paths."""
    mean = mean_over_sources(results)
    doc = {
        **info, "psnr": "dB inside the degradation mask, [0, 1], not quantised", "sources": results,
        "mean": mean, "min_gain_over_skip": min(r["model"] - r["skip"] for r in mean)
    }
    written = [paths.join(out_dir, "per_step.json"), paths.join(out_dir, "per_step.png")]
    paths.write_text(written[0], strict_json.dumps(doc, indent=2))
    plot(results, written[1])
    return written


def plot(results: dict[str, list[dict[str, float]]], path: str) -> None:
    """PSNR of x̂0 / skip / inversion against t, one panel per source (written whole)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.5), squeeze=False)
    for ax, (label, rows) in zip(axes[0], results.items()):
        for name, style in zip(ESTIMATES, ("o-", "s--", ":")):
            ax.plot([r["t"] for r in rows], [r[name] for r in rows], style, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("t (sampling grid; true forward samples)")
        ax.set_ylabel("PSNR inside the mask (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    paths.write_bytes(path, buffer.getvalue())
