"""--mode=app's handlers without a browser (and without Gradio): decode an upload, read the painted
holes, restore with the API beside the baseline, write the PNGs, word a failure in one line."""
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

import rdbm_jax
from rdbm_jax import api, app_handlers as handlers, conditioning, sampler as sampler_lib
from rdbm_jax.evaluation import baselines
from rdbm_jax.data import image_io
from rdbm_jax.errors import ConfigError, DataError
from tests.helpers import REPO, config


@pytest.fixture(scope="module")
def model(trained_run):
    return rdbm_jax.load(trained_run)


@pytest.fixture(scope="module")
def page(model):
    return handlers.PageModel(model)


def _photo(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """A photo without pure-white pixels (so no hole is inferred from it)."""
    return (np.random.RandomState(seed).rand(h, w, 3) * 250).astype(np.uint8)


def _layer(h: int, w: int, box: tuple[int, int, int, int], alpha: int = 255) -> np.ndarray:
    """An RGBA editor layer painted (magenta) inside box = (top, left, bottom, right)."""
    layer = np.zeros((h, w, 4), np.uint8)
    t, left, b, r = box
    layer[t:b, left:r] = (255, 0, 255, alpha)
    return layer


# ------------------------------------------------------------------------------------ uploads
@pytest.mark.parametrize("ext,kwargs", [(".png", {}), (".jpg", {"quality": 95}),
                                        (".webp", {"lossless": True})])
def test_decode_upload_reads_png_jpeg_webp_as_uint8_rgb(tmp_path, ext, kwargs):
    photo = _photo()
    path = str(tmp_path / f"photo{ext}")
    Image.fromarray(photo).save(path, **kwargs)
    got = handlers.decode_upload(path)
    assert got.dtype == np.uint8 and got.shape == photo.shape
    with Image.open(path) as img:  # the file's own pixels (JPEG's are not the photo's)
        np.testing.assert_array_equal(got, np.asarray(img.convert("RGB")))
    if ext != ".jpg":
        np.testing.assert_array_equal(got, photo)


def test_decode_upload_gray_and_16_bit_files_become_rgb_uint8(tmp_path):
    levels = (np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    got = handlers.decode_upload(str(tmp_path / "deep.png"))
    assert got.dtype == np.uint8 and got.shape == (24, 32, 3)
    # 16-bit levels → 8 bits by the package's one rounding (to_uint8 of x / 65535 scaled to ±1)
    want = np.round(levels.astype(np.float64) / 65535 * 255)
    assert np.abs(got[..., 0] - want).max() <= 1 and np.array_equal(got[..., 0], got[..., 2])


def test_a_text_file_renamed_png_is_one_line_naming_the_upload_not_the_server_copy(tmp_path):
    path = tmp_path / "upload_cache_1234" / "holiday.png"
    path.parent.mkdir()
    path.write_text("this is not an image\n")
    with pytest.raises(DataError) as e:
        handlers.decode_upload(str(path))
    line = handlers.error_line(e.value)
    assert line == "not an image file (cannot identify format): holiday.png", line


def test_a_1x1_image_is_refused_at_upload(tmp_path):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(DataError, match=r"^dot\.png: 1x1 is too small to restore \(minimum 8x8\)$"):
        handlers.decode_upload(str(tmp_path / "dot.png"))


def test_a_huge_image_is_refused_unread_naming_data_max_image_pixels(tmp_path):
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(tmp_path / "huge.png")
    before = Image.MAX_IMAGE_PIXELS
    try:
        image_io.set_max_pixels(1000)  # 64x80 = 5 120 pixels: over twice the limit, so an error
        with pytest.raises(DataError) as e:
            handlers.decode_upload(str(tmp_path / "huge.png"))
    finally:
        Image.MAX_IMAGE_PIXELS = before
    line = handlers.error_line(e.value)
    assert "5,120 pixels" in line and "data.max_image_pixels" in line
    assert line.endswith(": huge.png") and "\n" not in line


# ------------------------------------------------------------------------------ painted holes
def test_painted_mask_is_the_union_of_the_layers_painted_pixels():
    h, w = 20, 30
    editor = {"background": _photo(h, w), "composite": None,
              "layers": [_layer(h, w, (2, 3, 6, 9)), _layer(h, w, (10, 20, 12, 25), alpha=1)]}
    got = handlers.painted_mask(editor, (h, w))
    want = np.zeros((h, w), bool)
    want[2:6, 3:9] = True
    want[10:12, 20:25] = True  # a faint anti-aliased rim (alpha 1) is a hole too
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("editor", [None, {"layers": []}, {"layers": [None]},
                                    {"layers": [np.zeros((20, 30, 4), np.uint8)]}])
def test_nothing_painted_is_none(editor):
    assert handlers.painted_mask(editor, (20, 30)) is None


def test_a_layer_of_another_size_is_refused():
    with pytest.raises(DataError, match="painted layer is 30x20 but the photo 31x20"):
        handlers.painted_mask({"layers": [_layer(20, 30, (0, 0, 5, 5))]}, (20, 31))


# ------------------------------------------------------------------------------------ restore
def test_restore_is_the_apis_restore_and_the_projects_baseline_on_the_painted_holes(page, model):
    photo = _photo(24, 32)
    holes = np.zeros((24, 32), bool)
    holes[5:12, 8:20] = True
    r = page.restore(photo, holes, num_steps=2, eta=0.0)
    mu = photo.copy()
    mu[holes] = 255  # the training fill: white (data.masks.HOLE_VALUE)
    np.testing.assert_array_equal(r.degraded, mu)
    np.testing.assert_array_equal(r.holes, holes)
    want = model.restore(mu, num_steps=2, eta=0.0, mask=holes.astype(np.float32))
    np.testing.assert_array_equal(r.restored, want)
    base = baselines.restore(mu.astype(np.float32) / 255, "inpaint", mask=holes)
    np.testing.assert_array_equal(r.baseline, image_io.to_uint8(base * 2 - 1))
    np.testing.assert_array_equal(r.restored[~holes], photo[~holes])  # known pixels come back
    assert r.status.startswith("restored 32x24: RDBM ") and "(NFE 2, η 0)" in r.status
    assert "biharmonic (true mask)" in r.status and "holes 10.9 % (painted)" in r.status


def test_unpainted_holes_are_inferred_from_pure_white_as_sample_mode_does(page, model):
    photo = _photo(24, 32, seed=1)
    photo[8:14, 4:12] = 255
    r = page.restore(photo, None, num_steps=2, eta=0.0)
    want = conditioning.infer_mask(photo.astype(np.float32) / 127.5 - 1)[..., 0] > 0.5
    assert want.sum() == 48
    np.testing.assert_array_equal(r.holes, want)
    assert "(inferred from the white fill)" in r.status
    np.testing.assert_array_equal(
        r.restored, model.restore(photo, num_steps=2, eta=0.0, mask=want.astype(np.float32)))


def test_an_empty_mask_is_one_line_and_nothing_runs(page):
    with pytest.raises(DataError, match="^no holes to fill: paint over what should go"):
        page.restore(_photo(), None, num_steps=2, eta=0.0)


def test_bad_nfe_and_eta_get_the_apis_one_line_messages(page):
    holes = np.ones((24, 32), bool)
    with pytest.raises(ConfigError, match=r"^sample\.num_steps=500 exceeds bridge\.num_timesteps"):
        page.restore(_photo(), holes, num_steps=500, eta=0.0)
    with pytest.raises(ConfigError, match=r"^sample\.eta=2\.0 must be in \[0, 1\]$"):
        page.restore(_photo(), holes, num_steps=2, eta=2.0)
    with pytest.raises(ConfigError, match=r"^sample\.eta=0\.5 with sample\.fuse=True"):
        page.restore(_photo(), holes, num_steps=2, eta=0.5)  # the fused demo: η = 0 only


def test_a_photo_too_large_for_memory_gets_the_apis_one_line_message(page, monkeypatch):
    monkeypatch.setattr(sampler_lib, "memory_budget", lambda: 1)  # nothing fits, not even tiles
    holes = np.zeros((40, 56), bool)  # a shape no other test compiled (plans are kept per shape)
    holes[4:9, 4:9] = True
    with pytest.raises(ConfigError) as e:
        page.restore(_photo(40, 56), holes, num_steps=2, eta=0.0)
    line = handlers.error_line(e.value)
    assert "\n" not in line and "over the" in line and "use a device with more memory" in line


def test_other_tasks_take_the_photo_as_it_is(model):
    """A run trained on another degradation gets no brush: the photo is restored as uploaded (a
    mask model with every pixel degraded), beside the input (no blind baseline fits noise)."""
    cfg = ml_collections.ConfigDict(model.config.to_dict())
    for split in ("train", "eval"):
        cfg.data.tasks.main[split].degradation = "noise"
    noisy = api.TrainedModel(cfg, model.model, model.schedule, model.params, model.step,
                             model.mesh)
    page = handlers.PageModel(noisy)
    assert not page.brush and page.baseline == "none" and page.degradations == ("noise",)
    photo = _photo(24, 32, seed=2)
    photo[0:6, 0:6] = 255  # white here is content, not a hole
    r = page.restore(photo, None, num_steps=2, eta=0.0)
    assert r.holes is None and "holes" not in r.status
    np.testing.assert_array_equal(r.degraded, photo)
    np.testing.assert_array_equal(r.baseline, photo)
    np.testing.assert_array_equal(
        r.restored, model.restore(photo, num_steps=2, eta=0.0, mask=np.ones((24, 32), np.float32)))


# ---------------------------------------------------------------------------- files, messages
def test_write_png_round_trips_exactly_and_leaves_no_temporary_file(tmp_path):
    photo = _photo()
    holes = np.zeros((24, 32), bool)
    holes[1:4, 2:7] = True
    a = handlers.write_png(photo, str(tmp_path), "rdbm_restored.png")
    b = handlers.write_png(holes, str(tmp_path), "rdbm_restored.png")
    assert a != b and os.path.basename(a) == "rdbm_restored.png"  # each restore's files apart
    np.testing.assert_array_equal(np.asarray(Image.open(a)), photo)
    np.testing.assert_array_equal(np.asarray(Image.open(b)), np.where(holes, 255, 0))
    left = sorted(f for _, _, files in os.walk(tmp_path) for f in files)
    assert left == ["rdbm_restored.png", "rdbm_restored.png"]


def test_error_line_is_one_line_and_names_unexpected_failures():
    assert handlers.error_line(DataError("a\nb  c")) == "a b c"
    assert handlers.error_line(ValueError("mask: shape (3,)")) == "mask: shape (3,)"
    assert handlers.error_line(KeyError("x")) == "KeyError: 'x'"
    assert handlers.error_line(MemoryError()).startswith("out of host memory")


# ------------------------------------------------------------------------------- command line
def test_app_without_gradio_is_one_line_naming_the_extra_exit_2(tmp_path):
    code = ("import sys; sys.modules['gradio'] = None; from rdbm_jax.main import run; "
            f"sys.argv = ['main', '--config=configs/demo.py:tiny', '--workdir={tmp_path}', "
            "'--mode=app']; run()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'error: --mode=app needs Gradio, an optional extra: pip install -e ".[app]"']


# ------------------------------------------------------------------------------ the page itself
def test_the_page_restores_one_at_a_time(page, tmp_path):
    pytest.importorskip("gradio", reason="the page needs the [app] extra (Gradio)")
    from rdbm_jax import app

    demo = app.build_page(page, str(tmp_path))
    restore = [f for f in demo.fns.values() if f.name == "on_restore"]
    assert len(restore) == 1 and restore[0].queue and restore[0].concurrency_limit == 1
    assert demo._queue.default_concurrency_limit == 1  # uploads wait their turn as well


def test_the_eta_slider_is_locked_at_0_for_a_model_that_refuses_stochastic_steps(page, tmp_path):
    """The fused demo (π = x0 − μ) takes η = 0 only (config.stochastic_steps_allowed): its
    slider cannot move, and its label says why; a model without fusion keeps it free."""
    pytest.importorskip("gradio", reason="the page needs the [app] extra (Gradio)")
    from rdbm_jax import app

    def slider(demo):
        found = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "eta"]
        assert len(found) == 1
        return found[0]

    locked = slider(app.build_page(page, str(tmp_path)))
    assert locked.interactive is False and "0 only" in locked.label and locked.value == 0.0
    page.model.config.sample.fuse = False
    try:
        free = slider(app.build_page(page, str(tmp_path)))
    finally:
        page.model.config.sample.fuse = True
    assert free.interactive is True and "posterior sampling" in free.label


def test_a_taken_port_is_one_line_naming_app_port(trained_run, monkeypatch):
    """In-process (a child process would load jax and the model again): the ConfigError that
    main prints as one line with exit 2."""
    pytest.importorskip("gradio", reason="the page needs the [app] extra (Gradio)")
    from rdbm_jax import app

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # serve sets it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as e:
            app.serve(config(**{"app.port": port}), trained_run)
    assert str(e.value).startswith(f"app.host='127.0.0.1' app.port={port}: cannot serve there (")
    assert "\n" not in str(e.value)


def test_a_step_without_checkpoint_is_one_line_naming_app_step(trained_run, monkeypatch):
    pytest.importorskip("gradio", reason="the page needs the [app] extra (Gradio)")
    from rdbm_jax import app

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # serve sets it
    with pytest.raises(ConfigError, match=r"^app\.step=7: no checkpoint .*\(latest: 2\)$"):
        app.serve(config(**{"app.step": 7}), trained_run)
