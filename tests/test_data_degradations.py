"""Synthetic degradations and inpainting masks: each degrades, is deterministic for eval, in
range."""
from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest
from PIL import Image

from rdbm_jax.data import build_eval_sources
from rdbm_jax.data import degradations as deg
from rdbm_jax.data.spec import source_spec, task_spec
from rdbm_jax.data.builtin import builtin_files
from rdbm_jax.data.image_io import decode_image
from rdbm_jax.data.masks import free_form_mask

SYNTHETIC = ("inpaint", "noise", "gaussian_blur", "motion_blur", "lowlight", "haze", "rain", "jpeg")
RANDOM = ("inpaint", "noise", "motion_blur", "haze", "rain")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    path = dict(builtin_files("train"))["astronaut"]
    return decode_image(path)[100:196, 180:276]  # a 96x96 crop with edges and texture


def _psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.mark.parametrize("kind", SYNTHETIC)
def test_each_degradation_degrades_and_is_deterministic(photo, kind):
    d = deg.Degrader(source_spec(degradation=kind), "data.tasks.t.train")
    out = d.degrade(photo, np.random.default_rng([0, 3]), index=3)[0]
    assert out.shape == photo.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert _psnr(out, photo) < 30.0, kind  # clearly degraded (clean PSNR is +inf)
    again = d.degrade(photo, np.random.default_rng([0, 3]), index=3)[0]
    np.testing.assert_array_equal(out, again)
    other = d.degrade(photo, np.random.default_rng([1, 3]), index=3)[0]
    assert (not np.array_equal(out, other)) == (kind in RANDOM)


def test_degradation_formulas(photo):
    np.testing.assert_allclose(deg.lowlight(photo, 2.0, 0.35), photo ** 2 * 0.35, rtol=1e-6)
    gray = np.full((64, 64, 3), 0.5, np.float32)
    n = deg.add_noise(gray, 0.05, np.random.default_rng(0))
    assert abs(float(n.std()) - 0.05) < 0.003 and abs(float(n.mean()) - 0.5) < 0.003
    np.testing.assert_allclose(deg.gaussian_blur(gray, 2.0), gray, atol=1e-6)  # mean preserved
    assert deg.gaussian_blur(photo, 2.0).std() < photo.std()
    k = deg.line_kernel(9, 0.0)  # horizontal: all mass in the middle row, spread over ~9 px
    assert abs(k.sum() - 1) < 1e-6 and abs(k[k.shape[0] // 2].sum() - 1) < 1e-6
    assert np.count_nonzero(k[k.shape[0] // 2] > 1e-3) in (9, 10)
    assert _psnr(deg.jpeg(photo, 90), photo) > _psnr(deg.jpeg(photo, 10), photo)


def test_haze_follows_atmospheric_scattering():
    black = np.zeros((50, 40, 3), np.float32)
    out = deg.haze(black, 1.2, 0.9, np.random.default_rng(0))  # J = 0: I = A (1 − t)
    t = 1 - out / 0.9
    depth = -np.log(t) / 1.2
    assert depth.min() >= -1e-5 and depth.max() <= 1 + 1e-5
    assert out[:5].mean() > out[-5:].mean()  # the top of the frame is farther, hence hazier
    white = np.ones_like(black)
    np.testing.assert_allclose(deg.haze(white, 1.2, 1.0, np.random.default_rng(0)), 1.0, atol=1e-6)


@pytest.mark.parametrize("lo,hi,shape", [(0.1, 0.4, (64, 64)), (0.3, 0.32, (40, 56)),
                                         (0.0, 0.05, (32, 32)), (0.5, 0.9, (48, 48))])
def test_mask_ratio_within_configured_range(lo, hi, shape):
    ratios = [
        free_form_mask(*shape, np.random.default_rng([7, i]), lo, hi).mean() for i in range(40)
    ]
    assert min(ratios) >= lo - 1e-9 and max(ratios) <= hi + 1e-9
    if hi - lo > 0.1:
        assert max(ratios) - min(ratios) > 0.05  # targets are spread over the range


def _mask_recounting_the_canvas(h, w, rng, min_ratio, max_ratio):
    """free_form_mask as it was: the whole canvas re-read after every segment (the oracle of the
    box-wise count; same shapes, same draws)."""
    import math

    from PIL import Image, ImageDraw

    from rdbm_jax.data import masks
    n = h * w
    lo, hi = int(math.ceil(min_ratio * n)), int(math.floor(max_ratio * n))
    target = max(lo, min(hi, int(round(rng.uniform(min_ratio, max_ratio) * n))))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    prev = cur = np.zeros((h, w), bool)
    count = 0
    for _ in range(masks._MAX_SHAPES):
        shape = masks._stroke_segments if rng.uniform() < 0.7 else masks._box
        for _box in shape(draw, h, w, rng):
            cur = np.asarray(canvas) > 0
            count = int(cur.sum())
            if count >= target:
                break
            prev = cur
        if count >= target:
            break
    cur = cur.copy()
    if count > hi:
        cur.flat[np.flatnonzero(cur & ~prev)[:count - hi]] = False
    elif count < lo:
        cur.flat[np.flatnonzero(~cur)[:lo - count]] = True
    return cur


# (100, 30, 0.9, 1.0) is slow (~13 s: masks covering 90-100 % take many boxes); four cases stay fast
@pytest.mark.parametrize("h,w,lo,hi", [(256, 256, 0.1, 0.4), (17, 40, 0.0, 1.0),
                                       (64, 48, 0.3, 0.31), (8, 8, 0.5, 0.9),
                                       pytest.param(100, 30, 0.9, 1.0, marks=pytest.mark.slow)])
def test_mask_counted_box_wise_equals_recounting_the_whole_canvas(h, w, lo, hi):
    """Masks count the pixels of each segment's box only (2x cheaper at 256²): the same masks and
    the same random draws as re-reading the whole canvas after every segment."""
    for seed in range(30 if h * w > 10_000 else 150):
        mine, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(free_form_mask(h, w, mine, lo, hi),
                                      _mask_recounting_the_canvas(h, w, theirs, lo, hi))
        assert mine.uniform() == theirs.uniform()  # as many draws taken


def test_each_segment_draws_inside_the_box_it_yields():
    """The box-wise count is exact only if a segment draws nothing outside its box."""
    from PIL import Image, ImageDraw

    from rdbm_jax.data import masks
    for seed in range(60):
        rng = np.random.default_rng(seed)
        h, w = int(rng.integers(8, 200)), int(rng.integers(8, 200))
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        before = np.zeros((h, w), bool)
        for shape in (masks._stroke_segments, masks._box) * 3:
            for left, top, right, bottom in shape(draw, h, w, rng):
                now = np.asarray(canvas) > 0
                outside = now != before
                outside[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = False
                assert not outside.any(), (seed, shape.__name__)
                before = now


def test_inpaint_fills_hole_white_and_eval_masks_repeat():
    spec = source_spec(kind="builtin", split="val", degradation="inpaint", eval_size=48,
                       mask_min_ratio=0.2, mask_max_ratio=0.3)
    data = ml_collections.ConfigDict(dict(tasks=ml_collections.ConfigDict(dict(
        t=task_spec(spec, spec))), crop_size=8, flip="none", num_workers=0, prefetch_buffer=1,
        skip_bad_files=False))
    a, b = build_eval_sources(data)["t"], build_eval_sources(data)["t"]
    for i in range(len(a)):
        ea, eb = a[i], b[i]
        np.testing.assert_array_equal(ea["mu"], eb["mu"])  # same (seed, index) → same mask
        hole = np.all(ea["mu"] == 1.0, axis=-1) & np.any(ea["x0"] != 1.0, axis=-1)
        kept = ~np.all(ea["mu"] == 1.0, axis=-1)
        np.testing.assert_array_equal(ea["mu"][kept], ea["x0"][kept])
        assert 0.15 < hole.mean() <= 0.3
    assert not np.array_equal(a[0]["mu"] == 1, a[1]["mu"][:, :a[0]["mu"].shape[1]] == 1)
    spec.seed = 1
    c = build_eval_sources(data)["t"]
    assert not np.array_equal(c[0]["mu"], a[0]["mu"])


def test_mask_folder_instead_of_generated(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((16, 20, 3), 60, np.uint8)).save(tmp_path / "clean" / "a.png")
    m = np.zeros((8, 10), np.uint8)
    m[2:5, 3:7] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "m0.png")  # half size: nearest-resized
    spec = source_spec(kind="clean", dir=str(tmp_path / "clean"), degradation="inpaint",
                       mask_dir=str(tmp_path / "masks"))
    data = ml_collections.ConfigDict(dict(tasks=ml_collections.ConfigDict(dict(
        t=task_spec(spec, spec))), crop_size=8, flip="none", num_workers=0, prefetch_buffer=1,
        skip_bad_files=False))
    mu = build_eval_sources(data)["t"][0]["mu"]
    expect = np.zeros((16, 20), bool)
    expect[4:10, 6:14] = True
    np.testing.assert_array_equal(mu[..., 0] == 1.0, expect)
