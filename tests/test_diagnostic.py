"""rdbm_jax/evaluation/diagnostic.py: x̂0 per t on true forward samples beside the skip estimate and
inversion."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax.evaluation import diagnostic, metrics
from rdbm_jax import evaluate, sde
from rdbm_jax.sampler import Sampler, SamplingSpec
from tests.helpers import config, read_metrics


def _images(seed=0, shape=(2, 16, 16, 3)):
    r = np.random.default_rng(seed)
    x0 = r.uniform(-0.8, 0.8, shape).astype(np.float32)
    mu = np.clip(x0 + 0.2 * r.standard_normal(shape), -1, 1).astype(np.float32)
    return x0, mu, np.ones(shape[:3] + (1,), np.float32)


def test_a_zero_precond_network_scores_exactly_the_skip_estimate():
    """F ≡ 0 under precond: x̂0 is the skip estimate at every t; a zero residual network is μ;
    inversion at the smallest grid t is near-perfect and at T−1 (Θ = 0) it is μ."""
    s = sde.make_schedule()
    zero = lambda params, x, c, t: jnp.zeros_like(x)
    x0, mu, mask = _images()
    pre = Sampler(zero, s, SamplingSpec(5, sde.X0Rule("precond", pi="one"), rho=(("main", 0.4),)),
                  multiple=8)
    rows = diagnostic.per_step(pre, {}, x0, mu, mask, 0.4, jax.random.PRNGKey(0))
    assert [r["t"] for r in rows] == list(sde.timestep_pairs(100, 5)[:, 0])
    for r in rows:
        assert r["model"] == r["skip"]
    res = Sampler(zero, s, SamplingSpec(5, sde.X0Rule("residual")), multiple=8)
    rows_res = diagnostic.per_step(res, {}, x0, mu, mask, 0.4, jax.random.PRNGKey(0))
    mu_psnr = float(jnp.mean(metrics.psnr(metrics.to_unit(mu), metrics.to_unit(x0))))
    assert all(abs(r["model"] - mu_psnr) < 1e-3 for r in rows_res)
    assert abs(rows_res[0]["invert"] - mu_psnr) < 1e-3 and rows_res[-1]["invert"] > 35
    assert diagnostic.scalars({"a": rows})["val/per_step/min_gain_over_skip"] == 0.0


def test_eval_mode_writes_per_step_json_and_plot(trained_workdir):
    cfg = config(**{"eval.per_step": True, "eval.max_images": 1})
    evaluate.run_eval(cfg, trained_workdir)
    out = os.path.join(trained_workdir, "eval")
    doc = json.load(open(os.path.join(out, "per_step.json")))
    assert ([r["t"] for r in doc["mean"]]
            == list(sde.timestep_pairs(100, cfg.sample.num_steps)[:, 0]))
    assert all(np.isfinite(r[k]) for r in doc["mean"] for k in diagnostic.ESTIMATES)
    assert os.path.getsize(os.path.join(out, "per_step.png")) > 0


@pytest.mark.slow  # trains a tiny model of its own
def test_validation_logs_the_per_step_scalars(tmp_path):
    from rdbm_jax import train
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(
        config(**{"eval.per_step": True, "train.num_steps": 2, "train.eval_every": 2}), workdir)
    rows = [r for r in read_metrics(workdir) if "val/per_step/min_gain_over_skip" in r]
    assert rows and any(k.startswith("val/per_step/t099/") for k in rows[0])
