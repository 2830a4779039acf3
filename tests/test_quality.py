"""Restoration quality plumbing: residual output, mask condition, known-region projection, region
metrics, classical baselines, and their place in validation, eval, grids and sample mode."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rdbm_jax.evaluation import baselines, metrics, reports, scoring
from rdbm_jax import conditioning, data, evaluate, sde
from rdbm_jax.data import degradations
from rdbm_jax.data.spec import source_spec
from tests.helpers import config, read_metrics


def _pair(seed: int, shape=(2, 8, 8, 3)):
    r = np.random.default_rng(seed)
    x0 = jnp.asarray(r.uniform(-0.9, 0.9, shape), jnp.float32)
    mu = jnp.asarray(np.clip(np.asarray(x0) + 0.4 * r.standard_normal(shape), -1, 1), jnp.float32)
    return x0, mu


# ------------------------------------------------------------------------ residual parameterisation

def test_residual_conversions_agree_with_x0_and_pi_eps_forms():
    # the πε form divides by Θ_t ≈ 0.005 near t = T−1: compare in float64
    with jax.enable_x64(True):
        s = sde.make_schedule(dtype=jnp.float64)
        x0, mu = (jnp.asarray(a, jnp.float64) for a in _pair(0))
        eps = jnp.asarray(np.random.default_rng(1).standard_normal(x0.shape), jnp.float64)
        _check_conversions(s, x0, mu, eps)


def _check_conversions(s, x0, mu, eps):
    for tt in (0, 37, 98, 99):
        t = jnp.full((x0.shape[0],), tt)
        x_t = sde.q_sample(s, x0, mu, t, eps)
        r = sde.training_target(s, x0, mu, eps, "residual")
        np.testing.assert_array_equal(r, x0 - mu)
        via_residual = sde.predict_x0(s, r, x_t, mu, t, "residual")
        pi_eps = sde.network_target(s, x0, x_t, mu, t, "pi_eps")
        via_pi_eps = sde.predict_x0(s, pi_eps, x_t, mu, t, "pi_eps")
        np.testing.assert_allclose(via_residual, x0, atol=1e-6)
        np.testing.assert_allclose(via_residual, via_pi_eps, atol=1e-6)
        np.testing.assert_allclose(sde.network_target(s, via_pi_eps, x_t, mu, t, "residual"), r,
                                   atol=1e-6)
        np.testing.assert_array_equal(sde.network_target(s, x0, x_t, mu, t, "x0"), x0)


def test_residual_zero_output_keeps_mu_from_the_first_step():
    """A zero-initialised head (output 0) restores μ itself, bit-exactly, for every step count."""
    s = sde.make_schedule()
    _, mu = _pair(2)
    for steps in (1, 5, 10):
        out = sde.sample(lambda x, m, t: jnp.zeros_like(x), s, mu, steps, None,
                         parameterization="residual")
        np.testing.assert_array_equal(out, mu)


@pytest.mark.parametrize("parameterization", ["x0", "pi_eps", "residual"])
def test_known_pixels_are_projected_onto_mu(parameterization):
    """With `known`, the masked-out pixels end at μ bit-exactly whatever the network says."""
    s = sde.make_schedule()
    x0, mu = _pair(3)
    known = np.random.default_rng(4).uniform(size=mu.shape[:3] + (1,)) < 0.5
    net = lambda x, m, t: (jnp.tanh(3 * x + m)
                           + 0.1 * t[:, None, None, None].astype(jnp.float32) / 100)
    out = sde.sample(net, s, mu, 10, jax.random.PRNGKey(0), eta=1.0,
                     parameterization=parameterization, known=known)
    kb = np.broadcast_to(known, mu.shape)
    np.testing.assert_array_equal(np.asarray(out)[kb], np.asarray(mu)[kb])
    # some land on μ = ±1 by clipping
    assert np.mean(np.asarray(out)[~kb] != np.asarray(mu)[~kb]) > 0.7


# ----------------------------------------------------------------------------- conditioning

def test_fill_holes_keeps_known_pixels_and_interpolates_smoothly():
    h, w = 32, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.stack([xx / w, yy / h, 0.3 * np.ones_like(xx)], -1)[None] * 2 - 1
    mask = np.zeros((1, h, w, 1), np.float32)
    mask[:, 8:20, 10:30] = 1
    holed = np.where(mask > 0, 1.0, ramp)
    filled = np.asarray(conditioning.fill_holes(jnp.asarray(holed), jnp.asarray(mask)))
    known = np.broadcast_to(mask == 0, filled.shape)
    np.testing.assert_array_equal(filled[known], holed[known])
    err_fill = np.abs(filled - ramp)[~known].mean()
    err_white = np.abs(holed - ramp)[~known].mean()
    assert err_fill < 0.15 * err_white, (err_fill, err_white)  # far closer than the white fill
    const = np.full((1, h, w, 3), -0.25, np.float32)
    np.testing.assert_allclose(conditioning.fill_holes(np.where(mask > 0, 1.0, const), mask), const,
                               atol=1e-6)


# slow: scikit-image's inpaint_biharmonic on a photo: ~17 s
@pytest.mark.slow
def test_biharmonic_fill_matches_scikit_image_and_reproduces_quadratics():
    """fill_holes_biharmonic: known pixels unchanged; a quadratic (Δ² = 0) hole comes back to
    1e-3 where the harmonic fill cannot (Δ ≠ 0); on a photo it converges to scikit-image's
    inpaint_biharmonic (0.015 rms inside the holes) and the default iterations land far closer to
    it than the harmonic fill; an empty mask is μ."""
    from skimage import data as skdata
    from skimage.restoration import inpaint_biharmonic
    h, w = 40, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    quad = (((xx - 20) / w) ** 2 + 0.5 * ((yy - 10) / h) ** 2)[None, ..., None] * np.ones(3) - 0.5
    mask = np.zeros((1, h, w, 1), np.float32)
    mask[:, 12:26, 14:32] = 1
    holed = np.where(mask > 0, 1.0, quad).astype(np.float32)
    bi = np.asarray(conditioning.fill_holes_biharmonic(holed, mask))
    harm = np.asarray(conditioning.fill_holes(holed, mask))
    known = np.broadcast_to(mask == 0, bi.shape)
    np.testing.assert_array_equal(bi[known], holed[known])
    assert np.abs(bi - quad).max() < 1e-3 < np.abs(harm - quad).max()
    photo = skdata.astronaut()[::4, ::4].astype(np.float32) / 127.5 - 1.0  # 128², [-1, 1]
    hole = np.zeros(photo.shape[:2], bool)
    hole[30:50, 20:90] = True
    hole[70:110, 60:66] = True
    mu = np.where(hole[..., None], 1.0, photo)[None]
    m = hole[None, ..., None].astype(np.float32)
    ref = inpaint_biharmonic((mu[0] + 1) / 2, hole, channel_axis=-1)[hole] * 2 - 1
    rms = lambda a: float(np.sqrt(np.mean(np.square(a - ref))))
    harmonic = rms(np.asarray(conditioning.fill_holes(mu, m))[0][hole])
    default = rms(np.asarray(conditioning.fill_holes_biharmonic(mu, m))[0][hole])
    converged = rms(np.asarray(conditioning.fill_holes_biharmonic(mu, m, 1000))[0][hole])
    # The remainder once converged is the stencil at the image border; a 20 × 70 box needs more
    # than the default iterations, which still land far closer than the harmonic fill.
    assert converged < 0.015 and default < 0.2 * harmonic, (converged, default, harmonic)
    empty = np.zeros_like(m)
    np.testing.assert_array_equal(conditioning.fill_holes_biharmonic(photo[None], empty),
                                  photo[None])


def test_condition_channels_and_mask_inference():
    mu = np.random.default_rng(0).uniform(-1, 0.9, (2, 8, 8, 3)).astype(np.float32)
    mask = np.zeros((2, 8, 8, 1), np.float32)
    mask[:, 2:5, 3:6] = 1
    mu = np.where(mask > 0, 1.0, mu)
    for kind in conditioning.CONDITIONS:
        c = conditioning.condition(jnp.asarray(mu), jnp.asarray(mask), kind)
        assert c.shape[-1] == conditioning.condition_channels(kind)
        np.testing.assert_array_equal(c[..., :3], mu)
    np.testing.assert_array_equal(conditioning.infer_mask(mu), mask)
    with pytest.raises(ValueError, match="mask"):
        conditioning.condition(jnp.asarray(mu), None, "mu_mask")
    with pytest.raises(ValueError, match="condition"):
        conditioning.check_condition("mask")


def test_mixed_fill_is_the_weighted_average_of_the_two_fills():
    """fill_holes_mixed = MIX_WEIGHT × harmonic + (1 − MIX_WEIGHT) × biharmonic, each computed on
    its own; known pixels unchanged; every hole pixel between the two fills."""
    r = np.random.default_rng(5)
    mu = r.uniform(-1, 0.9, (2, 24, 20, 3)).astype(np.float32)
    mask = np.zeros((2, 24, 20, 1), np.float32)
    mask[0, 5:15, 3:11] = 1
    mask[1, 2:22, 12:16] = 1
    mu = np.where(mask > 0, 1.0, mu)
    # Op by op (not jitted): each fill runs the same primitives on the same inputs, so only the
    # final weighted sum differs in rounding; separate jitted programs could fuse differently.
    harm = np.asarray(conditioning.fill_holes(mu, mask))
    bi = np.asarray(conditioning.fill_holes_biharmonic(mu, mask))
    # through the condition, as the network sees it: [μ, mask, fill]
    c = conditioning.condition(jnp.asarray(mu), jnp.asarray(mask), "mu_mask_mixfill")
    mixed = np.asarray(c[..., 4:])
    w = conditioning.MIX_WEIGHT
    assert 0.0 < w < 1.0
    # Same float32 operations on the same inputs; the weighted sum rounds twice (values <= ~2 in
    # magnitude: float32 ulp 2.4e-7), so a few ulps bound the difference.
    np.testing.assert_allclose(mixed, w * harm + (1 - w) * bi, rtol=0, atol=1e-6)
    known = np.broadcast_to(mask == 0, mu.shape)
    np.testing.assert_array_equal(mixed[known], mu[known])
    low, high = np.minimum(harm, bi), np.maximum(harm, bi)
    assert np.all(mixed >= low - 1e-6) and np.all(mixed <= high + 1e-6)
    assert np.abs(harm - bi)[~known].max() > 1e-2  # the two fills differ, so the test can fail


def test_fill_condition_with_residual_output_starts_from_the_prefill():
    """mu_mask_fill / bifill / mixfill + residual: a zero network restores the pre-fill in the
    holes, μ elsewhere, with or without fusion."""
    from rdbm_jax.sampler import Sampler, SamplingSpec
    r = np.random.default_rng(3)
    mu = r.uniform(-1, 0.9, (1, 16, 24, 3)).astype(np.float32)
    mask = np.zeros((1, 16, 24, 1), np.float32)
    mask[:, 4:10, 6:15] = 1
    mu = np.where(mask > 0, 1.0, mu)
    zero_net = lambda params, x_t, cond, t: jnp.zeros_like(x_t)
    schedule = sde.make_schedule()
    fill = np.asarray(conditioning.fill_holes(mu, mask))
    bifill = np.asarray(conditioning.fill_holes_biharmonic(mu, mask))
    mixfill = np.asarray(conditioning.fill_holes_mixed(mu, mask))
    for kind, param, expected in (("mu_mask_fill", "residual", fill), ("mu_mask", "residual", mu),
                                  ("mu_mask_bifill", "residual", bifill),
                                  ("mu_mask_mixfill", "residual", mixfill),
                                  ("mu_mask_fill", "x0", np.where(mask > 0, 0.0, mu))):
        for fuse in (False, True):  # fused: a network that ignores x_t is the loop's fixed point
            spec = SamplingSpec(3, sde.X0Rule(param, condition=kind, fuse=fuse),
                                rho=(("main", 1.32),))
            restorer = Sampler(zero_net, schedule, spec, multiple=8)
            out = restorer(None, mu, jax.random.PRNGKey(0), mask=mask)
            np.testing.assert_allclose(out, expected, atol=1e-5, err_msg=f"{kind} {param} {fuse}")


# ----------------------------------------------------------------------------- region metrics

def test_masked_metrics_match_scikit_image_on_the_region():
    r = np.random.default_rng(0)
    a = r.uniform(size=(40, 50, 3)).astype(np.float32)
    b = np.clip(a + r.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    m = np.zeros((40, 50), bool)
    m[10:30, 8:30] = True
    assert abs(float(metrics.psnr_masked(a, b, m))
               - peak_signal_noise_ratio(a[m], b[m], data_range=1)) < 1e-4
    _, smap = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1, channel_axis=-1,
                                    full=True)
    assert abs(float(metrics.ssim_masked(a, b, m)) - smap[m].mean()) < 1e-5
    full = np.ones_like(m)  # the whole image: the plain metrics
    assert abs(float(metrics.psnr_masked(a, b, full)) - float(metrics.psnr(a, b))) < 1e-4
    assert abs(float(metrics.ssim_masked(a, b, full)) - float(metrics.ssim(a, b))) < 1e-5
    with pytest.raises(ValueError, match="mask"):
        metrics.psnr_masked(a, b, m[:10])


# ---------------------------------------------------------------------- baselines and masks in data

def _photo(h=64, w=80):
    """A crop of a built-in training photo, in [0, 1]."""
    src = data.build_eval_sources(config(**{"data.tasks.main.eval.split": "train",
                                            "data.tasks.main.eval.eval_size": 0}).data)["main"]
    img = np.asarray(metrics.to_unit(src[0]["x0"]))
    return np.ascontiguousarray(img[200:200 + h, 200:200 + w]).astype(np.float32)


def test_inpaint_baseline_fills_holes_and_keeps_the_rest():
    x = _photo()
    d = degradations.Degrader(
        source_spec(degradation="inpaint", mask_min_ratio=0.2, mask_max_ratio=0.3), "k")
    mu, mask = d.degrade(x, np.random.default_rng(0))
    assert 0.2 <= mask.mean() <= 0.3
    np.testing.assert_array_equal(mu[mask], 1.0)
    np.testing.assert_array_equal(mu[~mask], x[~mask])
    for true_mask in (mask, None):  # None: inferred from the white fill
        out = baselines.restore(mu, "inpaint", mask=true_mask)
        np.testing.assert_allclose(out[~mask], x[~mask], atol=1e-6)
        assert peak_signal_noise_ratio(x[mask], out[mask], data_range=1) > \
            peak_signal_noise_ratio(x[mask], mu[mask], data_range=1) + 10


@pytest.mark.parametrize("kind,params", [("noise", {"noise_sigma": 0.1}),
                                         ("gaussian_blur", {"blur_sigma": 1.5}),
                                         ("motion_blur", {"motion_length": 9})])
def test_classical_baselines_beat_the_input_with_known_parameters(kind, params):
    x = _photo()
    spec = source_spec(degradation=kind, **params)
    d = degradations.Degrader(spec, "k")
    mu, mask = d.degrade(x, np.random.default_rng([0, 5]), index=5)
    assert mask.all()
    known = {"noise_sigma": spec.noise_sigma, "kernel": d.kernel(np.random.default_rng([0, 5]))}
    out = baselines.restore(mu, kind, **known)
    gain = (peak_signal_noise_ratio(x, out, data_range=1)
            - peak_signal_noise_ratio(x, mu, data_range=1))
    assert gain > 1.0, gain


def test_baseline_names_and_identity_fallback():
    x = _photo()
    np.testing.assert_array_equal(baselines.restore(x, "haze"), x)
    assert "true mask" in baselines.describe("inpaint", True)
    assert "inferred" in baselines.describe("inpaint", False)
    assert baselines.describe("rain", True).startswith("input")


def test_sources_pass_the_mask_with_each_example():
    cfg = config()
    src = data.build_eval_sources(cfg.data)["main"]
    ex = src[0]
    assert ex["mask"].shape == ex["mu"].shape[:2] + (1,)
    hole = ex["mask"][..., 0] > 0
    assert 0 < hole.mean() < 1
    np.testing.assert_array_equal(ex["mu"][hole], 1.0)  # the fill, in model range
    np.testing.assert_array_equal(ex["mu"][~hole], ex["x0"][~hole])
    it = data.build_train_iterator(cfg.data, global_batch_size=2, seed=0, process_index=0,
                                   process_count=1)
    batch = next(it)
    assert batch["mask"].shape == batch["mu"].shape[:3] + (1,)
    hole = batch["mask"][..., 0] > 0
    np.testing.assert_array_equal(batch["mu"][hole], 1.0)
    np.testing.assert_array_equal(batch["mu"][~hole], batch["x0"][~hole])
    noisy = config(**{"data.tasks.main.train.degradation": "noise"})
    assert np.all(next(data.build_train_iterator(noisy.data, global_batch_size=2, seed=0,
                                                 process_index=0, process_count=1))["mask"] == 1)


# --------------------------------------------------------------- training, validation, eval, sample

def test_masked_loss_ignores_the_output_outside_the_mask():
    from rdbm_jax import program

    class Fixed:  # a "model" whose output is a fixed array, to probe the loss weighting
        def __init__(self, out):
            self.out = out

        def apply(self, variables, x_t, cond, t, train, rngs):
            assert cond.shape[-1] == 4  # μ and the mask
            return self.out

    cfg = config(**{"model.condition": "mu_mask", "bridge.parameterization": "residual"})
    x0, mu = _pair(6, (2, 8, 8, 3))
    mask = np.zeros((2, 8, 8, 1), np.float32)
    mask[:, :4] = 1
    mu = jnp.where(mask > 0, mu, x0)
    batch = {"x0": x0, "mu": mu, "mask": jnp.asarray(mask)}
    out = jnp.asarray(np.random.default_rng(7).standard_normal(x0.shape), jnp.float32)
    other = jnp.where(mask > 0, out, 5.0)  # differs only outside the mask
    schedule = program.schedule_from_config(cfg.bridge)
    loss = lambda o: float(program.make_loss_fn(Fixed(o), schedule, cfg.bridge, "l1", "mu_mask")(
        {}, batch, jax.random.PRNGKey(1)))
    expected = float(jnp.sum(jnp.abs(out - (x0 - mu)) * mask) / (mask.sum() * 3))
    assert abs(loss(out) - expected) < 1e-6
    assert loss(other) == loss(out)


def test_validation_logs_model_baseline_and_input(tmp_path, caplog):
    from rdbm_jax import train
    workdir = str(tmp_path / "run")
    cfg = config(**{"train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2})
    assert cfg.model.condition == "mu_mask_mixfill"  # the demo's mask-aware model (programs shared)
    with caplog.at_level("INFO", logger="rdbm_jax"):
        last = train.train_and_evaluate(cfg, workdir)
    for key in ("psnr", "psnr_baseline", "psnr_input", "psnr_masked", "psnr_masked_baseline",
                "psnr_masked_input", "psnr_kept", "ssim_masked_baseline"):
        assert f"val/{key}" in last, key
    assert last["val/psnr_kept"] == scoring.KEPT_CAP  # known pixels come back exactly
    assert last["val/psnr_baseline"] > last["val/psnr_input"] + 5
    line = [r.getMessage() for r in caplog.records if " val main " in r.getMessage()][0]
    assert ("baseline: biharmonic (true mask)" in line and "| baseline " in line
            and "| input " in line)
    rows = [r for r in read_metrics(workdir) if "val/psnr_baseline" in r]
    assert rows and rows[-1]["val/psnr_masked_baseline"] == last["val/psnr_masked_baseline"]
    grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_2.png")))
    # four columns (μ │ baseline │ ours │ x0) of equal aspect: the grid is ≥ 4 cells wide
    assert grid.shape[1] > 3.5 * reports.GRID_HEIGHT * 0.6

    with caplog.at_level("INFO", logger="rdbm_jax"):
        per_task = evaluate.run_eval(cfg, workdir)
    table = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval of step")][0]
    assert "baseline" in table and "psnr_masked" in table and "input" in table
    with open(os.path.join(workdir, "eval", "metrics.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert report["tasks"]["main"]["baseline"] == "biharmonic (true mask)"
    assert report["overall"]["psnr_masked_baseline"] > report["overall"]["psnr_masked_input"] + 5
    assert report["overall"]["psnr_masked"] == per_task["overall"]["psnr_masked"]
    with open(os.path.join(workdir, "eval", "per_image.csv"), encoding="utf-8") as f:
        header = f.readline()
    assert "psnr_baseline" in header and "psnr_masked" in header

    # sample mode: masks inferred from the white fill, or read from a folder; known pixels kept
    from rdbm_jax.restore_files import run_restore_files
    from rdbm_jax.errors import DataError
    ex = data.build_eval_sources(cfg.data)["main"][0]
    in_dir, mask_dir = tmp_path / "in", tmp_path / "masks"
    in_dir.mkdir(), mask_dir.mkdir()
    data.save_image(str(in_dir / "a.png"), ex["mu"])
    Image.fromarray((ex["mask"][..., 0] * 255).astype(np.uint8)).save(mask_dir / "a.png")
    keep = ex["mask"][..., 0] == 0
    for masks in ("", str(mask_dir)):
        out_dir = tmp_path / f"out{len(masks)}"
        cfg.sample.input_dir = str(in_dir)
        cfg.sample.output_dir = str(out_dir)
        cfg.sample.mask_dir = masks
        assert run_restore_files(cfg, workdir)["restored"] == 1
        restored = np.asarray(Image.open(out_dir / "a.png"), np.float32) / 127.5 - 1
        np.testing.assert_allclose(restored[keep], ex["mu"][keep], atol=1 / 127.5 + 1e-6)
    # b.png (another size: its own batch, after a.png's) has no mask: refused before a.png
    # is written
    data.save_image(str(in_dir / "b.png"), ex["mu"][:, :-8])
    cfg.sample.output_dir, cfg.sample.mask_dir = str(tmp_path / "out_bad"), str(mask_dir)
    with pytest.raises(DataError, match="b.png.*sample.mask_dir"):
        run_restore_files(cfg, workdir)
    assert not (tmp_path / "out_bad").exists() or not any((tmp_path / "out_bad").iterdir())
