"""`--mode=eval`, `--mode=sample` and `--mode=sweep` on a tiny trained checkpoint."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from rdbm_jax import evaluate, sweep
from rdbm_jax.sample import run_sample
from rdbm_jax.errors import ConfigError, DataError
from tests.helpers import config


def _png(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_eval_writes_metrics_per_image_csv_and_grids(trained_workdir):
    cfg = config(**{"eval.num_grid_images": 2, "eval.max_images": 0})
    per_task = evaluate.run_eval(cfg, trained_workdir)
    out = os.path.join(trained_workdir, "eval")
    report = json.load(open(os.path.join(out, "metrics.json")))
    assert report["step"] == 2 and report["protocol"]["color"] == "rgb"
    assert set(report["tasks"]) == {"main"} and report["overall"]["num_images"] == 3  # 3 built-in val photos
    for key in ("psnr", "ssim", "psnr_input", "ssim_input"):
        assert np.isfinite(report["tasks"]["main"][key])
    rows = list(csv.DictReader(open(os.path.join(out, "per_image.csv"))))
    assert [r["name"] for r in rows] == ["chelsea", "flower", "rocket"]
    assert float(rows[0]["psnr"]) == pytest.approx(float(per_task["main"]["psnr"]) * 3
                                                   - sum(float(r["psnr"]) for r in rows[1:]), rel=1e-6)
    grid = Image.open(os.path.join(out, "grid_main.png"))
    assert grid.size[1] == evaluate.HEADER_HEIGHT + 2 * evaluate.GRID_HEIGHT + 4  # labels, two rows, a gap


def test_eval_with_lpips_weights_and_fid_skipped(trained_workdir, tmp_path, caplog):
    from rdbm_jax.perceptual import lpips, weights as weight_files
    rng = np.random.default_rng(0)
    flat = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in lpips.variable_shapes("alex").items()}
    flat.update({k: np.abs(v) for k, v in flat.items() if "/lin" in k})  # LPIPS's linear heads are >= 0
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
    with pytest.raises(ConfigError, match="bridge.parameterization"):
        evaluate.run_eval(config(**{"bridge.parameterization": "pi_eps"}), trained_workdir)


def test_sample_mode_restores_tree_survives_corrupt_file_and_keeps_outputs(trained_workdir, tmp_path):
    src, dst = str(tmp_path / "in"), str(tmp_path / "out")
    _png(os.path.join(src, "a.png"), 27, 45, 1)
    _png(os.path.join(src, "b.png"), 27, 45, 2)  # same size as a.png: one batch
    _png(os.path.join(src, "sub", "c.png"), 40, 33, 3)
    with open(os.path.join(src, "sub", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    cfg = config(**{"sample.input_dir": src, "sample.output_dir": dst, "sample.batch_size": 4})
    with pytest.raises(DataError, match=r"1 of 4 input\(s\).*broken\.png"):
        run_sample(cfg, trained_workdir)
    for name, shape in (("a.png", (27, 45)), ("b.png", (27, 45)), ("sub/c.png", (40, 33))):
        img = np.asarray(Image.open(os.path.join(dst, name)))
        assert img.shape == (*shape, 3)
    before = os.path.getmtime(os.path.join(dst, "a.png"))
    os.remove(os.path.join(src, "sub", "broken.png"))
    result = run_sample(cfg, trained_workdir)
    assert result == {"restored": 0, "skipped": 3, "failed": []}
    assert os.path.getmtime(os.path.join(dst, "a.png")) == before
    cfg.sample.overwrite = True
    assert run_sample(cfg, trained_workdir)["restored"] == 3


def test_sample_mode_needs_folders(trained_workdir):
    with pytest.raises(ConfigError, match="sample.input_dir"):
        run_sample(config(), trained_workdir)


def test_sweep_writes_csv_and_plot(trained_workdir):
    cfg = config(**{"sweep.nfe": "1,2", "sweep.eta": "0,1", "eval.max_images": 1})
    rows = sweep.run_sweep(cfg, trained_workdir)
    assert [(r["nfe"], r["eta"]) for r in rows] == [(1, 0.0), (2, 0.0), (1, 1.0), (2, 1.0)]
    out = os.path.join(trained_workdir, "sweep")
    assert len(list(csv.DictReader(open(os.path.join(out, "results.csv"))))) == 4
    assert Image.open(os.path.join(out, "results.png")).size[0] > 100
    with pytest.raises(ConfigError, match="sweep.nfe"):
        sweep.run_sweep(config(**{"sweep.nfe": "500"}), trained_workdir)
