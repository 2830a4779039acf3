"""Faults, round 3 (issue 20): outputs never land on inputs, reports are written atomically, bad
masks / names / sizes / checkpoint configs give one line, JPEG holes are found. Each test fails
without its fix."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rdbm_jax.runtime import atomic, paths
from rdbm_jax import conditioning, export, export_loader
from rdbm_jax.evaluation import reports, scoring
from rdbm_jax.data import image_io
from rdbm_jax.errors import ConfigError, DataError
from rdbm_jax.restore_files import run_restore_files
from tests.helpers import REPO, config


def _png(path, h=16, w=16, value=128) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _sample_cfg(src, out, **overrides):
    return config(**{"sample.input_dir": str(src), "sample.output_dir": str(out), **overrides})


# --- 1. the output folder is never the input folder (real paths) ----------------------------------

def test_output_dir_symlinked_to_the_input_dir_is_refused_and_inputs_are_untouched(tmp_path):
    src = tmp_path / "in"
    _png(src / "a.png")
    before = (src / "a.png").read_bytes()
    os.symlink(src, tmp_path / "link")
    cfg = _sample_cfg(src, tmp_path / "link", **{"sample.overwrite": True})
    with pytest.raises(ConfigError, match="sample.output_dir.*is the input folder"):
        run_restore_files(cfg, str(tmp_path / "no_workdir_needed"))
    assert (src / "a.png").read_bytes() == before and os.listdir(src) == ["a.png"]


def test_output_dir_inside_the_input_dir_is_refused(tmp_path):
    src = tmp_path / "in"
    _png(src / "a.png")
    with pytest.raises(ConfigError, match="inside sample.input_dir"):
        run_restore_files(_sample_cfg(src, src / "restored"), str(tmp_path / "no_workdir_needed"))
    assert not (src / "restored").exists()


# --- 5. atomic reports ----------------------------------------------------------------------------

def _killed_at_fsync(monkeypatch):
    """Make the next atomic write die as a kill would: its bytes written, not yet renamed."""
    def die(fd):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(atomic.os, "fsync", die)


def test_a_killed_eval_report_keeps_the_previous_metrics_json(tmp_path, monkeypatch):
    out = str(tmp_path / "eval")
    per_task = {"main": {"psnr": 20.0}, "overall": {"psnr": 20.0}}
    reports.write_report(out, [{"task": "main", "name": "a", "psnr": 20.0}], per_task, {"step": 1})
    before = {f: open(os.path.join(out, f), "rb").read() for f in ("metrics.json", "per_image.csv")}
    _killed_at_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        reports.write_report(out, [{"task": "main", "name": "a", "psnr": 30.0}],
                              {"main": {"psnr": 30.0}, "overall": {"psnr": 30.0}}, {"step": 2})
    after = {f: open(os.path.join(out, f), "rb").read() for f in ("metrics.json", "per_image.csv")}
    assert after == before  # whole, and the previous results
    assert sorted(os.listdir(out)) == ["metrics.json", "per_image.csv"]  # no temporary left


def test_export_killed_between_artifact_and_metadata_is_refused_by_the_loader(tmp_path,
                                                                           monkeypatch):
    out = str(tmp_path / "export")
    os.makedirs(out)
    export.write_unit(out, b"old artifact", {"artifact_sha256": export_loader.hashlib.sha256(
        b"old artifact").hexdigest(), "step": 1})
    real_write_text = paths.write_text

    def write_text(path, text):
        if path.endswith(export.METADATA):
            raise KeyboardInterrupt("killed after the artifact's rename")
        real_write_text(path, text)

    monkeypatch.setattr(paths, "write_text", write_text)
    with pytest.raises(KeyboardInterrupt):
        export.write_unit(out, b"new artifact", {"artifact_sha256": export_loader.hashlib.sha256(
            b"new artifact").hexdigest(), "step": 2})
    with pytest.raises(ValueError, match="describes another artifact.*run --mode=export again"):
        export_loader.load(os.path.join(out, export.ARTIFACT))


def test_sample_removes_the_temporary_files_a_killed_run_left(tmp_path, trained_workdir, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "a.png")
    _png(out / "sub" / "keep.png")
    # a writer that died (exited) with its temporary file in place
    code = ("import sys; from rdbm_jax import atomic; "
            "f = open(atomic.temp_path(sys.argv[1]), 'wb'); f.write(b'half a png'); "
            "print(f.name)")
    stale = subprocess.run([sys.executable, "-c", code, str(out / "sub" / "b.png")], cwd=REPO,
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": REPO}).stdout.strip()
    assert os.path.exists(stale)
    (out / "notes.tmp").write_text("the user's own")
    (out / "sub" / ".b.png.4242.tmp").write_text("the user's own too")  # the old temp pattern
    with caplog.at_level(logging.INFO, logger="rdbm_jax"):
        run_restore_files(_sample_cfg(src, out), trained_workdir)
    assert not os.path.exists(stale) and (out / "notes.tmp").exists() and (out / "a.png").exists()
    assert (out / "sub" / ".b.png.4242.tmp").exists()
    assert "removed 1 temporary file(s)" in caplog.text


# --- 9. masks: one unreadable mask skips one image; a mask of another size is refused -------------

def test_one_unreadable_mask_skips_only_its_image(tmp_path, trained_workdir):
    src, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    for name in ("a", "b", "c"):
        _png(src / f"{name}.png")
    _png(masks / "a.png", value=0)
    (masks / "b.png").write_bytes(b"not a png")
    _png(masks / "c.png", 8, 8, value=255)  # another size
    with pytest.raises(DataError) as err:
        run_restore_files(_sample_cfg(src, out, **{"sample.mask_dir": str(masks)}), trained_workdir)
    assert str(masks / "b.png") in str(err.value) and "2 of 3" in str(err.value)
    assert f"mask {masks / 'c.png'} (sample.mask_dir) is 8x8 but its input" in str(err.value)
    assert sorted(os.listdir(out)) == ["a.png"]


# --- 13. names with a newline are quoted ----------------------------------------------------------

def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path, trained_workdir):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "a.png")
    (src / "bad\nname.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        run_restore_files(_sample_cfg(src, out), trained_workdir)
    assert "\n" not in str(err.value) and repr(str(src / "bad\nname.png")) in str(err.value)


# --- 3. the pixel limit is a key, and says so -----------------------------------------------------

def test_the_pixel_limit_is_named_and_can_be_raised(tmp_path):
    path = str(tmp_path / "big.png")
    _png(path, 40, 40)
    default = Image.MAX_IMAGE_PIXELS
    try:
        for limit in (1000, 700):  # PIL warns above the limit, refuses above twice it: both named
            image_io.set_max_pixels(limit)
            with pytest.raises(DataError, match=rf"1,600 pixels, above the limit of {limit:,} "
                                                r"\(data.max_image_pixels") as err:
                image_io.decode_image(path)
            assert "corrupt" not in str(err.value)
        image_io.set_max_pixels(1600)
        assert image_io.decode_image(path).shape == (40, 40, 3)
    finally:
        Image.MAX_IMAGE_PIXELS = default


# --- 4. symlink loops are read once ---------------------------------------------------------------

def test_a_symlink_loop_is_read_once_and_said_once(tmp_path, caplog):
    _png(tmp_path / "photos" / "a.png")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "loop")
    with caplog.at_level(logging.WARNING, logger="rdbm_jax"):
        found = image_io.list_images(str(tmp_path / "photos"))
    assert found == [str(tmp_path / "photos" / "a.png")]
    assert len([r for r in caplog.records if "symbolic links" in r.getMessage()]) == 1


# --- 10. EXIF orientation -------------------------------------------------------------------------

def test_exif_orientation_is_applied_on_read(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # white on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate by 90° clockwise: white comes on top
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    img = image_io.decode_image(path)
    assert img.shape == (40, 20, 3) and image_io.probe_size(path) == (40, 20)
    assert img[:20].mean() > 0.9 and img[20:].mean() < 0.1


# --- 12. FID on fewer than 2 images ---------------------------------------------------------------

def test_fid_on_one_image_is_one_line_before_anything_runs():
    ev = config(**{"eval.metrics": "psnr,fid", "eval.fid_weights": "inception.npz"}).eval
    scoring.check_fid_sizes(ev, {"main": [0, 1]})
    with pytest.raises(ConfigError, match="test set 'main' has 1 image.*FID needs at least 2"):
        scoring.check_fid_sizes(ev, {"main": [0]})


# --- JPEG-robust hole inference -------------------------------------------------------------------

def _jpeg(x01: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.round(x01 * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf), np.float32) / 255.0


def test_holes_are_inferred_from_jpeg_compressed_strokes():
    """>= 95 % of the stroke area found at JPEG quality 75–95 on every built-in photo; false holes
    (outside the strokes) <= 1 % of the pixels on average over the photos (real white content —
    china's sky, the astronaut's suit — is the rest; see docs/evaluation.md, "Holes")."""
    from rdbm_jax.data.builtin import builtin_files
    from rdbm_jax.data.masks import apply_mask, free_form_mask

    false = []
    for i, (name, path) in enumerate(builtin_files("train") + builtin_files("val")):
        x = image_io.decode_image(path)
        hole = free_form_mask(x.shape[0], x.shape[1], np.random.default_rng(i), 0.05, 0.2)
        for quality in (75, 85, 95):
            mu = _jpeg(apply_mask(x, hole), quality) * 2 - 1
            found = conditioning.infer_mask(mu)[..., 0] > 0
            assert (found & hole).sum() >= 0.95 * hole.sum(), (name, quality)
            false.append((found & ~hole).mean())
    assert np.mean(false) <= 0.01, np.round(false, 4)


# --- 6. the checkpoint check covers every key that builds the network -----------------------------

def _other(key: str, value):
    """A valid value of `key` different from `value`."""
    from rdbm_jax import config as config_lib
    if key in config_lib.CHOICES:
        return next(v for v in config_lib.CHOICES[key] if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return value + "x"


def test_every_network_key_is_checked_against_the_checkpoint():
    from rdbm_jax import inference, program
    saved = config().to_dict()
    spec = program.network_spec(config())
    keys = [f"{section}.{name}" for section in spec for name in spec[section]]
    assert "model.attention" in inference.must_match(config())  # the key once missed
    for key in keys:
        ours = config(**{key: _other(key, config()[key.split(".")[0]][key.split(".")[1]])})
        if key == "bridge.sigma_data":  # ρ is read by the precond parameterisation only
            inference.check_compatible(ours, saved, "ckpt/2")
            precond = {"bridge.parameterization": "precond"}
            with pytest.raises(ConfigError, match=rf"^{key}=.*different bridge is refused"):
                inference.check_compatible(config(**precond, **{key: "2.5"}),
                                         config(**precond).to_dict(), "ckpt/2")
            continue
        if key in inference.INFERENCE_ONLY:
            inference.check_compatible(ours, saved, "ckpt/2")  # same weights, computed another way
            continue
        what = "bridge" if key.startswith("bridge.") else "network"
        refused = rf"^{key}=.*restoring with a different {what} is refused"
        with pytest.raises(ConfigError, match=refused):
            inference.check_compatible(ours, saved, "ckpt/2")


# --- 8. a checkpoint config of the wrong shape ----------------------------------------------------

@pytest.mark.parametrize("content", ["[1, 2]", '{"model": 3, "bridge": {}, "sample": {}}'])
def test_a_checkpoint_config_of_the_wrong_shape_is_one_line_naming_it(tmp_path, trained_workdir,
                                                                       content):
    import shutil
    from rdbm_jax import api
    from rdbm_jax.checkpointing import checkpoints
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    directory, step = checkpoints.resolve(workdir)
    with open(os.path.join(directory, str(step), "config", "metadata"), "w") as f:
        f.write(content)
    where = os.path.join(directory, str(step), "config")
    with pytest.raises(ConfigError, match=rf"checkpoint config {where} is not a saved run config"):
        api.load(workdir)
    _png(tmp_path / "in" / "a.png")
    with pytest.raises(ConfigError, match=rf"checkpoint config {where} is not a saved run config"):
        run_restore_files(_sample_cfg(tmp_path / "in", tmp_path / "out"), workdir)


# --- 7. restore() refuses floats out of [0, 1] and non-finite values ------------------------------

@pytest.mark.parametrize("values, message", [
    (np.full((16, 16, 3), 200.0, np.float32),
     r"span \[200, 200\].*\[0, 1\].*divide 0–255 floats by 255"),
    (np.full((16, 16, 3), -0.5, np.float32), r"span \[-0.5, -0.5\].*must lie in \[0, 1\]"),
    (np.where(np.eye(16)[..., None] > 0, np.nan, 0.5).repeat(3, -1).astype(np.float32),
     r"NaN or infinite"),
])
def test_restore_refuses_floats_out_of_range_and_nan(trained_workdir, values, message):
    from rdbm_jax import api, program
    model = api.load(trained_workdir)
    with pytest.raises(ValueError, match=message):
        model.restore(values)
    with pytest.raises(ValueError, match=message.split(".*")[0]):
        export_loader.ExportedRestorer(None, {})(values)  # refused before the artifact runs
    with pytest.raises(DataError, match="NaN|must lie in"):  # the sampler (eval, sample mode)
        program.build_sampler(config())(model.params, values[None] * 2 - 1, np.zeros(2, np.uint32))


# --- 14. messages: the full unknown key; step= in the API -----------------------------------------

def test_an_unknown_override_names_the_full_key_as_unknown(tmp_path):
    from tests.helpers import run_cli
    proc = run_cli("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--config.optim.lr=1")
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key optim.lr (--config.optim.lr): no such key "
        "(configs/default.py lists every key)"], proc.stderr


def test_api_errors_name_step_not_the_cli_key(tmp_path, trained_workdir):
    from rdbm_jax import api
    with pytest.raises(ConfigError) as err:
        api.load(str(tmp_path))
    assert "sample.checkpoint" not in str(err.value) and "pass step=" in str(err.value)


def test_main_never_splits_an_error_line(capsys):
    from rdbm_jax import main
    with pytest.raises(SystemExit):
        main._fail("cannot read /in/bad\nname.png")
    assert capsys.readouterr().err == "error: cannot read /in/bad\\nname.png\n"


# --- 2. memory predicted before running; tiles chosen automatically or one line -------------------

def test_an_image_predicted_not_to_fit_is_tiled_automatically_or_refused_in_one_line(
        trained_workdir, monkeypatch, caplog):
    import dataclasses

    from rdbm_jax import api, sampler as sampler_lib, sde
    model = api.load(trained_workdir)
    rule = sde.X0Rule(condition=model.config.model.condition)
    spec = sampler_lib.SamplingSpec(2, rule, tile_overlap=4, auto_tile=False)
    s = sampler_lib.Sampler(model.sampler().apply_fn, model.schedule, spec,
                            multiple=model.multiple)
    mu = np.zeros((1, 64, 64, 3), np.float32)
    # The whole image's need, from XLA's analysis of its compiled loop; the budget just under it.
    args = (model.params, mu, np.ones((1, 64, 64, 1), np.float32), np.zeros(2, np.uint32),
            np.ones((1, 1, 1, 1), np.float32))  # (params, μ, mask, key, precond's ρ per image)
    whole = s._compile(0, args)[1]
    assert whole > 0
    monkeypatch.setattr(sampler_lib, "memory_budget", lambda: whole - 1)
    with pytest.raises(ConfigError, match=r"64x64 .*needs ~.* GiB, over the .* GiB available; "
                                          r"set sample.tile_size"):
        s(model.params, mu, np.zeros(2, np.uint32))
    s = sampler_lib.Sampler(s.apply_fn, model.schedule, dataclasses.replace(spec, auto_tile=True),
                            multiple=model.multiple)
    with caplog.at_level(logging.INFO, logger="rdbm_jax"):
        out = s(model.params, mu, np.zeros(2, np.uint32))
    assert out.shape == mu.shape and np.all(np.isfinite(out))
    lines = [r.getMessage() for r in caplog.records if "restoring in tiles of" in r.getMessage()]
    assert len(lines) == 1 and "tiles of 32 px (sample.tile_size" in lines[0], lines


# --- 11. a huge train.batch_size is one line; SIGTERM stops a run still building its pipeline -----

def test_a_batch_too_large_for_memory_is_one_line_before_anything_is_built(tmp_path, monkeypatch):
    from rdbm_jax.runtime import memory
    from rdbm_jax import train
    monkeypatch.setattr(memory, "host_available", lambda: 2**30)
    monkeypatch.setattr(train.data, "build_train_iterator", lambda *a, **k: pytest.fail("built"))
    cfg = config(**{"train.batch_size": 100_000})
    with pytest.raises(ConfigError, match=r"^train.batch_size=100000: .* need ~.* GiB of host "
                                          r"memory, "
                                          r"1.00 GiB is available; lower train.batch_size"):
        train.train_and_evaluate(cfg, str(tmp_path / "run"))


def test_sigterm_stops_a_run_still_building_its_pipeline(tmp_path):
    import time
    from tests.helpers import train_in_subprocess
    hook = """
from rdbm_jax import data
_real_build = data.build_train_iterator
def _slow_build(*args, **kwargs):  # a pipeline build that takes minutes, signalled meanwhile
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(120)
    return _real_build(*args, **kwargs)
data.build_train_iterator = _slow_build
def hook(step, state):
    raise AssertionError("trained a step")
"""
    start = time.time()
    proc = train_in_subprocess(str(tmp_path / "run"), {"train.num_steps": 2}, hook, timeout=100)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.time() - start < 100 and "Traceback" not in proc.stderr
    assert ("signal 15 while building the input pipeline: stopped before the first step"
            in proc.stderr)


def test_the_exported_loader_infers_the_same_holes_without_scipy():
    """export_loader.infer_holes (numpy shifts) against conditioning.infer_mask (scipy.ndimage)."""
    from rdbm_jax.data.builtin import builtin_files
    from rdbm_jax.data.masks import apply_mask, free_form_mask
    x = image_io.decode_image(dict(builtin_files("val") + builtin_files("train"))["coffee"])
    hole = free_form_mask(x.shape[0], x.shape[1], np.random.default_rng(3), 0.05, 0.2)
    mu = _jpeg(apply_mask(x, hole), 80)
    ours = export_loader.infer_holes(mu[None])[0]
    np.testing.assert_array_equal(ours, conditioning.infer_mask(mu * 2 - 1)[..., 0] > 0)
    assert (ours & hole).sum() >= 0.95 * hole.sum()


def test_an_exact_white_fill_gives_exactly_its_holes():
    """A lossless file: the pure-white pixels, nothing grown into bright known pixels."""
    from rdbm_jax.data.builtin import builtin_files
    from rdbm_jax.data.masks import apply_mask, free_form_mask
    for i, (name, path) in enumerate(builtin_files("train") + builtin_files("val")):
        x = image_io.decode_image(path)
        hole = free_form_mask(x.shape[0], x.shape[1], np.random.default_rng(i), 0.05, 0.2)
        mu = apply_mask(x, hole)
        exact = np.all(mu >= 1 - 0.5 / 255, axis=-1)
        np.testing.assert_array_equal(conditioning.infer_mask(mu * 2 - 1)[..., 0] > 0, exact, name)
        np.testing.assert_array_equal(export_loader.infer_holes(mu[None])[0], exact, name)
