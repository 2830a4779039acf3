"""`--mode=eval`, `--mode=sample` and `--mode=sweep` on a tiny trained checkpoint."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from rdbm_jax import evaluate, sweep
from rdbm_jax.evaluation import reports, scoring, validation
from rdbm_jax.restore_files import run_restore_files
from rdbm_jax.errors import ConfigError, DataError
from tests.helpers import assert_line_plot, config, fid_tolerance, statistics_tolerance


def _png(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_eval_writes_metrics_per_image_csv_and_grids(trained_workdir, caplog):
    cfg = config(**{"eval.num_grid_images": 2, "eval.max_images": 0})
    with caplog.at_level("INFO", logger="rdbm_jax"):
        per_task = evaluate.run_eval(cfg, trained_workdir)
    out = os.path.join(trained_workdir, "eval")
    # the closing line names every file written
    assert caplog.records[-1].getMessage() == "wrote " + ", ".join(
        os.path.join(out, f) for f in ("metrics.json", "per_image.csv", "grid_main.png"))
    report = json.load(open(os.path.join(out, "metrics.json")))
    assert report["step"] == 2 and report["protocol"]["color"] == "rgb"
    # 3 built-in val photos
    assert set(report["tasks"]) == {"main"} and report["overall"]["num_images"] == 3
    for key in ("psnr", "ssim", "psnr_input", "ssim_input"):
        assert np.isfinite(report["tasks"]["main"][key])
    rows = list(csv.DictReader(open(os.path.join(out, "per_image.csv"))))
    assert [r["name"] for r in rows] == ["chelsea", "flower", "rocket"]
    assert float(rows[0]["psnr"]) == pytest.approx(
        float(per_task["main"]["psnr"]) * 3 - sum(float(r["psnr"]) for r in rows[1:]), rel=1e-6)
    grid = Image.open(os.path.join(out, "grid_main.png"))
    # title (test set, step), column labels, two rows, a gap
    assert grid.size[1] == 2 * reports.HEADER_HEIGHT + 2 * reports.GRID_HEIGHT + 4


def test_log_line_and_table_print_the_same_digits():
    """A score quoted from the log and from the eval table reads the same (22.68496 was 22.68 in the
    log's 4 significant digits but 22.6850 in the table, which rounds on to 22.69)."""
    scores = {"psnr": 28.99, "psnr_baseline": 29.7204, "psnr_masked": 21.9638,
              "psnr_masked_baseline": 22.68496, "psnr_masked_input": 3.55949, "ssim": 0.902612,
              "num_images": 3, "baseline": "biharmonic"}
    line = reports.summary_line(scores)
    assert "psnr_masked 21.96 | baseline 22.68 | input 3.56" in line and "ssim 0.9026" in line
    table = reports.comparison_table({"main": scores})
    assert "22.68" in table and "22.6850" not in table and "3.56" in table and "0.9026" in table


def test_grid_names_the_baseline_and_shows_a_title():
    assert reports.grid_labels("biharmonic (true mask)") == (
        "degraded input", "biharmonic (true mask)", "restored", "ground truth")
    assert reports.grid_labels("") == reports.GRID_COLUMNS
    rows = [[np.zeros((8, 8, 3), np.float32)] * 4]
    plain = reports.make_grid(rows)
    titled = reports.make_grid(rows, labels=reports.grid_labels("biharmonic"), title="step 1500")
    assert titled.shape[0] == plain.shape[0] + reports.HEADER_HEIGHT
    assert titled[: reports.HEADER_HEIGHT].min() < 128  # the title is drawn
    np.testing.assert_array_equal(titled[reports.HEADER_HEIGHT:][-reports.GRID_HEIGHT:],
                                  plain[-reports.GRID_HEIGHT:])


def test_eval_with_lpips_weights_and_fid_skipped(trained_workdir, tmp_path, caplog):
    from rdbm_jax.evaluation.perceptual import lpips, weights as weight_files
    rng = np.random.default_rng(0)
    flat = {
        k: rng.normal(0, 0.1, s).astype(np.float32)
        for k, s in lpips.variable_shapes("alex").items()
    }
    flat.update({k: np.abs(v)
                 for k, v in flat.items() if "/lin" in k})  # LPIPS's linear heads are >= 0
    flat.update({"meta/kind": np.array("lpips"), "meta/net": np.array("alex")})
    weights = str(tmp_path / "lpips_alex.npz")
    weight_files.save_npz(weights, flat)
    cfg = config(**{"eval.metrics": "psnr,lpips,fid", "eval.lpips_weights": weights,
                    "data.tasks.main.eval.eval_size": 64})
    with caplog.at_level("WARNING"):
        per_task = evaluate.run_eval(cfg, trained_workdir)
    assert np.isfinite(per_task["main"]["lpips"]) and per_task["main"]["lpips"] > 0
    assert "fid" not in per_task["main"]
    assert any("FID skipped" in r.message for r in caplog.records)


def test_restoring_with_another_bridge_is_refused(trained_workdir):
    with pytest.raises(ConfigError, match="bridge.preset='goub'.*trained with 'rdbm'"):
        evaluate.run_eval(config(**{"bridge.preset": "goub"}), trained_workdir)
    with pytest.raises(ConfigError, match="bridge.parameterization='pi_eps' but the checkpoint"):
        evaluate.run_eval(config(**{"bridge.parameterization": "pi_eps", "sample.fuse": False}),
                          trained_workdir)


def test_sample_mode_restores_tree_survives_corrupt_file_and_keeps_outputs(
        trained_workdir, tmp_path):
    src, dst = str(tmp_path / "in"), str(tmp_path / "out")
    _png(os.path.join(src, "a.png"), 27, 45, 1)
    _png(os.path.join(src, "b.png"), 27, 45, 2)  # same size as a.png: one batch
    _png(os.path.join(src, "sub", "c.png"), 40, 33, 3)
    with open(os.path.join(src, "sub", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    cfg = config(**{"sample.input_dir": src, "sample.output_dir": dst, "sample.batch_size": 4})
    with pytest.raises(DataError, match=r"1 of 4 input\(s\).*broken\.png"):
        run_restore_files(cfg, trained_workdir)
    for name, shape in (("a.png", (27, 45)), ("b.png", (27, 45)), ("sub/c.png", (40, 33))):
        img = np.asarray(Image.open(os.path.join(dst, name)))
        assert img.shape == (*shape, 3)
    before = os.path.getmtime(os.path.join(dst, "a.png"))
    os.remove(os.path.join(src, "sub", "broken.png"))
    result = run_restore_files(cfg, trained_workdir)
    assert result == {"restored": 0, "skipped": 3, "failed": []}
    assert os.path.getmtime(os.path.join(dst, "a.png")) == before
    cfg.sample.overwrite = True
    assert run_restore_files(cfg, trained_workdir)["restored"] == 3


def test_sample_mode_gray_in_gray_out(trained_workdir, tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(src / "gray.png")
    _png(str(src / "rgb.png"), 24, 20, 1)
    run_restore_files(config(**{"sample.input_dir": str(src), "sample.output_dir": str(dst)}),
                      trained_workdir)
    assert (Image.open(dst / "gray.png").mode == "L"
            and Image.open(dst / "gray.png").size == (20, 24))
    assert Image.open(dst / "rgb.png").mode == "RGB"


def test_sample_mode_needs_folders(trained_workdir):
    with pytest.raises(ConfigError, match="sample.input_dir"):
        run_restore_files(config(), trained_workdir)


def test_sweep_writes_csv_and_plot(trained_workdir, caplog):
    # η = 1 needs sample.fuse off with π = x0 − μ (config._check_fused_steps)
    cfg = config(**{"sweep.nfe": "1,2", "sweep.eta": "0,1", "eval.max_images": 1,
                    "sample.fuse": False})
    with caplog.at_level("INFO", logger="rdbm_jax"):
        rows = sweep.run_sweep(cfg, trained_workdir)
    assert [(r["nfe"], r["eta"]) for r in rows] == [(1, 0.0), (2, 0.0), (1, 1.0), (2, 1.0)]
    out = os.path.join(trained_workdir, "sweep")
    assert caplog.records[-1].getMessage() == "wrote " + ", ".join(  # the closing line
        os.path.join(out, f) for f in ("results.csv", "results.png", "protocol.json"))
    assert len(list(csv.DictReader(open(os.path.join(out, "results.csv"))))) == 4
    # η 0 and 1 in each of 3 panels: the demo inpaints, so PSNR inside the holes is the third
    assert_line_plot(os.path.join(out, "results.png"), size=(1800, 456), lines=2, panels=3)
    with pytest.raises(ConfigError, match="sweep.nfe"):
        sweep.run_sweep(config(**{"sweep.nfe": "500"}), trained_workdir)


def _named_sets_config(**overrides):
    """configs/demo.py:tiny with two named test sets in task 'main' and a second task 'other' with
    one."""
    import ml_collections
    from rdbm_jax.data.spec import source_spec, task_spec
    cfg = config(**{"eval.max_images": 0, **overrides})
    kw = dict(kind="builtin", degradation="inpaint", mask_min_ratio=0.1, mask_max_ratio=0.3,
              eval_size=32, eval_fit="crop")
    cfg.data.tasks.main.eval = ml_collections.ConfigDict(
        dict(photos=source_spec(split="val", **kw),
             astronaut=source_spec(split="fold0", max_images=1, **kw)))  # fold0's first photo
    cfg.data.tasks.other = task_spec(train=source_spec(**kw),
                                     eval=source_spec(split="val", seed=1, **kw))
    return cfg


def test_eval_reports_each_test_set_then_its_task_then_overall(trained_workdir):
    per_task = evaluate.run_eval(_named_sets_config(), trained_workdir)
    assert list(per_task) == ["main/astronaut", "main/photos", "main", "other", "overall"]
    a, p, main, other = (per_task[k] for k in ("main/astronaut", "main/photos", "main", "other"))
    assert ((a["num_images"], p["num_images"], main["num_images"], main["num_test_sets"])
            == (1, 3, 4, 2))
    assert "num_test_sets" not in other and set(other) == set(p)  # a one-source task: today's entry
    for key in ("psnr", "ssim", "psnr_baseline", "psnr_input", "psnr_masked_baseline",
                "ssim_input"):
        # a task: the mean over its test sets; overall: the mean over tasks
        assert main[key] == pytest.approx((a[key] + p[key]) / 2)
        assert per_task["overall"][key] == pytest.approx((main[key] + other[key]) / 2)
    # not the mean over images
    assert main["psnr"] != pytest.approx((a["psnr"] + 3 * p["psnr"]) / 4)
    assert a["psnr_input"] != pytest.approx(p["psnr_input"])  # input scores per test set
    out = os.path.join(trained_workdir, "eval")
    report = json.load(open(os.path.join(out, "metrics.json")))
    assert (set(report["tasks"]) == {"main", "other"}
            and report["tasks"]["main"]["num_test_sets"] == 2)
    assert {t: set(s) for t, s in report["test_sets"].items()} == {"main": {"astronaut", "photos"}}
    assert report["test_sets"]["main"]["photos"]["psnr_baseline"] == pytest.approx(
        p["psnr_baseline"])
    assert report["overall"]["num_images"] == 7 and "test sets" in report["protocol"]["task"]
    rows = list(csv.DictReader(open(os.path.join(out, "per_image.csv"))))
    assert list(rows[0])[:3] == ["task", "test_set", "name"]
    assert [(r["task"], r["test_set"], r["name"])
            for r in rows] == [("main", "astronaut", "astronaut"), ("main", "photos", "chelsea"),
                               ("main", "photos", "flower"), ("main", "photos", "rocket"),
                               ("other", "", "chelsea"), ("other", "", "flower"),
                               ("other", "", "rocket")]
    assert np.mean([float(r["psnr"]) for r in rows
                    if r["test_set"] == "photos"]) == pytest.approx(p["psnr"])
    for name in ("grid_main.astronaut.png", "grid_main.photos.png", "grid_other.png"):
        assert os.path.isfile(os.path.join(out, name))
    table = reports.comparison_table(per_task)
    assert ("main/photos (3 images; baseline: biharmonic" in table
            and "main [mean over 2 test sets] (4 images" in table)
    rows = sweep.run_sweep(_named_sets_config(**{"sweep.nfe": "1", "sweep.eta": "0"}),
                           trained_workdir)
    assert {"main/astronaut/psnr", "main/photos/ssim", "main/psnr", "other/psnr",
            "psnr_baseline"} <= set(rows[0])


def test_validation_eval_and_sweep_share_one_seed_rule_at_eta_1(trained_workdir):
    """Validation used PRNGKey(seed + 2), eval and sweep PRNGKey(seed): equal only at η = 0."""
    from rdbm_jax import data, inference
    from rdbm_jax.runtime import distributed
    stochastic = {"sample.eta": 1.0, "sample.fuse": False}  # fusion takes η = 0 only
    cfg = config(**{**stochastic, "eval.max_images": 2, "train.eval_num_images": 2,
                    "sweep.eta": "1"})
    cfg.sweep.nfe = str(cfg.sample.num_steps)
    mesh = distributed.make_mesh()
    params, step = inference.load_trained(cfg, trained_workdir, mesh)[2:]
    sources = data.build_eval_sources(cfg.data, max_images=cfg.train.eval_num_images)
    val, _ = validation.Validator(cfg, mesh, sources)(params, step)
    ev = evaluate.run_eval(cfg, trained_workdir)["overall"]
    sw = sweep.run_sweep(cfg, trained_workdir)[0]
    assert val["val/psnr"] == ev["psnr"] == sw["psnr"]
    assert val["val/ssim"] == ev["ssim"] == sw["ssim"]
    # η = 1 draws noise: another seed gives other numbers (the rule is not vacuous).
    other = evaluate.run_eval(config(**{**stochastic, "eval.max_images": 2, "seed": 5}),
                              trained_workdir)["overall"]
    assert other["psnr"] != ev["psnr"]


def test_compilation_cache_is_on_by_default_for_every_mode(trained_workdir, tmp_path, monkeypatch):
    """train.compilation_cache_dir: "auto" = $JAX_COMPILATION_CACHE_DIR or a per-user folder;
    "" = off; eval (and every mode: they all load through inference.load_trained) compiles into
    it."""
    import jax

    from rdbm_jax import program
    from configs import default
    assert default.get_config().train.compilation_cache_dir == "auto"
    before = program.compilation_cache_dir("auto")
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert program.compilation_cache_dir("auto") == str(tmp_path / "xdg" / "rdbm_jax" / "xla")
        program.use_compilation_cache("")
        assert not jax.config.jax_enable_compilation_cache
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        folder = tmp_path / "cache"
        jax.clear_caches()  # compiled in this process before: compile again, into the new folder
        program._sampler.cache_clear()
        evaluate.run_eval(
            config(**{"train.compilation_cache_dir": str(folder), "eval.max_images": 1}),
            trained_workdir)
        assert jax.config.jax_enable_compilation_cache
        assert jax.config.jax_compilation_cache_dir == str(folder)
        assert any(folder.iterdir())  # the sampler's executables were written there
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
        monkeypatch.undo()
        program.use_compilation_cache(before)


def test_evaluation_keeps_only_the_grid_baselines(monkeypatch):
    """Baselines kept a full-resolution image per example for the whole run: memory grew with the
    test set. Only the grid's images stay; the scores (a few floats) are remembered for every
    example."""
    from rdbm_jax import data

    class Identity:  # a stand-in sampler: the restored image is the input
        uses_mask = False

        def __call__(self, params, mu, rng, mask=None, task=None):
            return np.asarray(mu)

    cfg = config(**{"eval.num_grid_images": 1})
    sources = data.build_eval_sources(cfg.data)
    n = sum(len(s) for s in sources.values())
    assert n >= 2
    calls = []
    real = scoring.baselines.restore
    monkeypatch.setattr(scoring.baselines, "restore",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    baseline = scoring.Baselines(true_mask=False)
    first = scoring.score_sources(Identity(), None, sources, cfg, scoring.sampling_key(0),
                                  baseline=baseline)
    assert len(baseline._cache) == len(sources)  # one grid image per test set
    assert len(baseline._scores) == n and len(calls) == n
    again = scoring.score_sources(Identity(), None, sources, cfg, scoring.sampling_key(0),
                                  baseline=baseline)
    assert len(calls) == n  # a second validation computes no baseline again
    assert first[1] == again[1]


def test_fid_streams_features_and_matches_the_stored_features_computation():
    """FID kept a 2048-d feature vector per image for the whole test set; it now folds them into
    running statistics (n, mean, centred scatter): no earlier image's features stay alive, and the
    FID equals the one computed from every feature stored."""
    import weakref

    from rdbm_jax import data
    from rdbm_jax.evaluation.perceptual import fid as fid_lib

    class Identity:  # a stand-in sampler: the restored image is the input
        uses_mask = False

        def __call__(self, params, mu, rng, mask=None, task=None):
            return np.asarray(mu)

    made, alive_at_call = [], []

    def inception(unit):  # stand-in features: 12 image statistics, offset like pool3's
        alive_at_call.append(sum(r() is not None for r in made))
        u = np.asarray(unit, np.float64)[0]
        f = np.concatenate([u.mean((0, 1)), u.std((0, 1)), u[::7, ::5].mean((0, 1)),
                            (u ** 2)[1::3].mean((0, 1))])[None] + 5.0
        made.append(weakref.ref(f))
        return f

    cfg = config(**{"eval.num_grid_images": 0})
    sources = data.build_eval_sources(cfg.data)
    perceptual = scoring.Perceptual(config(**{"eval.metrics": "psnr"}).eval)
    perceptual.inception = inception
    streamed = []  # the running statistics score_sources hands to the FID
    fid_of = perceptual.fid
    perceptual.fid = lambda restored, targets: streamed.append((restored, targets)) or fid_of(
        restored, targets)
    _, per_task, _ = scoring.score_sources(Identity(), None, sources, cfg,
                                            scoring.sampling_key(0), perceptual=perceptual)
    n = sum(len(s) for s in sources.values())
    assert len(made) == 2 * n >= 6
    assert max(alive_at_call) == 0  # features were dropped once folded in
    # the same features again, stored, through the batch formula
    outs, gts = [], []
    for source in sources.values():
        for i in range(len(source)):
            ex = source[i]
            outs.append(inception(scoring._fid_input(ex["mu"], cfg.eval.quantize)))
            gts.append(inception(scoring._fid_input(ex["x0"], cfg.eval.quantize)))
    # The statistics agree to float64 round-off (a bound of the summation, not a tuned number)...
    ((restored, targets),) = streamed
    stats = []
    for running, features in ((restored, np.concatenate(outs)), (targets, np.concatenate(gts))):
        mean, cov = fid_lib.compute_statistics(features)
        mean_tol, cov_tol = statistics_tolerance(features)
        np.testing.assert_allclose(running.statistics()[0], mean, rtol=0, atol=mean_tol)
        np.testing.assert_allclose(running.statistics()[1], cov, rtol=0, atol=cov_tol)
        stats += [mean, cov]
    # ... and the FID to what its conditioning allows: 3 images of 12 features make rank-2
    # covariances, whose zero eigenvalues sqrtm turns round-off δ into √δ (the two FIDs differ by
    # 3e-9 relative, 1.2e-9 absolute, on an AMD EPYC and on a Xeon; the bound is 1.7e-7, see
    # fid_tolerance).
    stored = fid_lib.frechet_distance(*stats)
    assert per_task["overall"]["fid"] == pytest.approx(stored, rel=0,
                                                       abs=fid_tolerance(*stats, n=len(outs)))


# --- FID on fewer than 2 images -------------------------------------------------------------------

def test_fid_on_one_image_is_one_line_before_anything_runs():
    ev = config(**{"eval.metrics": "psnr,fid", "eval.fid_weights": "inception.npz"}).eval
    scoring.check_fid_sizes(ev, {"main": [0, 1]})
    with pytest.raises(ConfigError, match="test set 'main' has 1 image.*FID needs at least 2"):
        scoring.check_fid_sizes(ev, {"main": [0]})
