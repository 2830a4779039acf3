"""PSNR / SSIM: parity with scikit-image, golden values, the Y / crop / quantise protocol,
errors."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from rdbm_jax.evaluation import metrics
from rdbm_jax.errors import ConfigError

Y_ROW = np.array([65.481, 128.553, 24.966])


def sk_ssim_ref(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """The restoration-protocol SSIM in scikit-image (Wang et al. settings)."""
    channel_axis = -1 if a.ndim == 3 else None
    return sk_ssim(a, b, data_range=data_range, channel_axis=channel_axis, gaussian_weights=True,
                   sigma=1.5, use_sample_covariance=False)


def y_ref(x: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr luma of [0, 1] float RGB, in float64, on [0, 1]."""
    return (16.0 + x.astype(np.float64) @ Y_ROW) / 255.0


def crop(x: np.ndarray, c: int) -> np.ndarray:
    """Drop `c` pixels from every side."""
    return x[c:-c, c:-c] if c else x


@pytest.fixture(scope="module")
def astronaut_pair() -> tuple[np.ndarray, np.ndarray]:
    """A real photo (non-square crop) and a noisy copy, float32 in [0, 1]."""
    rng = np.random.default_rng(0)
    a = data.astronaut()[40:240, 100:370].astype(np.float32) / 255.0
    b = np.clip(a + rng.normal(0, 0.04, a.shape), 0, 1).astype(np.float32)
    return a, b


@pytest.mark.parametrize("shape", [(32, 32, 3), (37, 53, 3), (64, 21, 3)])
def test_random_images_match_skimage(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.uniform(0, 1, shape).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
    assert float(metrics.psnr(a, b)) == pytest.approx(sk_psnr(a, b, data_range=1.0), abs=1e-4)
    assert float(metrics.ssim(a, b)) == pytest.approx(sk_ssim_ref(a, b, 1.0), abs=1e-4)


@pytest.mark.parametrize("border", [0, 9])
def test_real_image_rgb_matches_skimage(astronaut_pair, border):
    a, b = astronaut_pair
    ca, cb = crop(a, border), crop(b, border)
    assert float(metrics.psnr(a, b, crop_border=border)) == pytest.approx(
        sk_psnr(ca, cb, data_range=1.0), abs=1e-4)
    assert float(metrics.ssim(a, b, crop_border=border)) == pytest.approx(
        sk_ssim_ref(ca, cb, 1.0), abs=1e-4)


@pytest.mark.parametrize("border", [0, 4])
def test_real_image_y_channel_matches_skimage(astronaut_pair, border):
    a, b = astronaut_pair
    ya, yb = crop(y_ref(a), border), crop(y_ref(b), border)
    assert float(metrics.psnr(a, b, color="y", crop_border=border)) == pytest.approx(
        sk_psnr(ya, yb, data_range=1.0), abs=1e-4)
    assert float(metrics.ssim(a, b, color="y", crop_border=border)) == pytest.approx(
        sk_ssim_ref(ya, yb, 1.0), abs=1e-4)


@pytest.mark.parametrize("color", ["rgb", "y"])
def test_quantize_equals_uint8_measurement(astronaut_pair, color):
    a, b = astronaut_pair
    ua, ub = np.round(a * 255).astype(np.uint8), np.round(b * 255).astype(np.uint8)
    if color == "y":  # BasicSR: Y of the uint8 image, on the 0..255 scale, not re-rounded
        ra, rb = y_ref(ua / 255.0) * 255, y_ref(ub / 255.0) * 255
    else:
        ra, rb = ua, ub
    kw = dict(color=color, crop_border=2, quantize=True)
    assert float(metrics.psnr(a, b, **kw)) == pytest.approx(
        sk_psnr(crop(ra, 2), crop(rb, 2), data_range=255), abs=1e-4)
    assert float(metrics.ssim(a, b, **kw)) == pytest.approx(
        sk_ssim_ref(crop(ra, 2).astype(np.float64), crop(rb, 2).astype(np.float64), 255), abs=1e-4)
    # quantisation really changes the numbers (the flag is not ignored)
    assert abs(
        float(metrics.psnr(a, b, **kw)) -
        float(metrics.psnr(a, b, color=color, crop_border=2))) > 1e-3


def test_data_range_scales_consistently(astronaut_pair):
    a, b = astronaut_pair
    for fn in (metrics.psnr, metrics.ssim):
        assert float(fn(a * 255, b * 255, data_range=255.0, color="y",
                        quantize=True)) == pytest.approx(float(fn(a, b, color="y", quantize=True)),
                                                         abs=1e-4)


def test_golden_values():
    a = np.full((16, 16, 3), 0.5, np.float32)
    b = np.full((16, 16, 3), 0.6, np.float32)
    assert float(metrics.psnr(a, b)) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert float(metrics.psnr(a, a)) == np.inf
    assert float(metrics.ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    # constant images: SSIM = luminance term (2 mu_a mu_b + C1) / (mu_a² + mu_b² + C1), C1 = 1e-4
    c1 = 0.01 ** 2
    assert float(metrics.ssim(a, b)) == pytest.approx((2 * .5 * .6 + c1) / (.25 + .36 + c1),
                                                      abs=1e-6)
    white, black = np.ones((1, 1, 3), np.float32), np.zeros((1, 1, 3), np.float32)
    assert float(metrics.rgb_to_y(white)[0, 0, 0]) == pytest.approx(235 / 255, abs=1e-6)
    assert float(metrics.rgb_to_y(black)[0, 0, 0]) == pytest.approx(16 / 255, abs=1e-7)


def test_gaussian_window_is_scipy_ndimage():
    impulse = np.zeros(21)
    impulse[10] = 1.0
    ref = ndimage.gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16]
    np.testing.assert_allclose(metrics._gaussian_taps(), ref, atol=1e-7)


def test_batched_and_vmapped_equal_per_image(astronaut_pair):
    a, b = astronaut_pair
    rng = np.random.default_rng(1)
    bb = np.stack([b, np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)])
    aa = np.stack([a, a])
    for fn in (metrics.psnr, metrics.ssim):
        batched = np.asarray(fn(aa, bb, color="y", crop_border=3))
        single = [float(fn(aa[i], bb[i], color="y", crop_border=3)) for i in range(2)]
        vmapped = np.asarray(jax.vmap(lambda x, y, f=fn: f(x, y, color="y", crop_border=3))(aa, bb))
        assert batched.shape == (2,)
        np.testing.assert_allclose(batched, single, atol=1e-5)
        np.testing.assert_allclose(vmapped, single, atol=1e-5)
    assert float(metrics.ssim(a, b)) == pytest.approx(float(metrics.ssim(b, a)), abs=1e-6)


def test_to_unit():
    x = np.array([-1.0, 0.0, 1.0, -1.5, 1.2], np.float32)
    np.testing.assert_allclose(np.asarray(metrics.to_unit(x)), [0.0, 0.5, 1.0, 0.0, 1.0])


def test_bad_input_errors():
    a = np.zeros((20, 24, 3), np.float32)
    with pytest.raises(ConfigError, match="eval.color"):
        metrics.psnr(a, a, color="ycbcr")
    with pytest.raises(ConfigError, match="eval.crop_border"):
        metrics.ssim(a, a, crop_border=5)  # leaves 10x14 < the 11x11 window
    with pytest.raises(ConfigError, match="eval.crop_border"):
        metrics.psnr(a, a, crop_border=10)
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(a, a[:10])
    with pytest.raises(ValueError, match="RGB"):
        metrics.ssim(a[..., :1], a[..., :1])
