"""eval.ssim_window × eval.quantize: parity with scikit-image for every protocol, DGSolver's
included."""
from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from rdbm_jax import config as config_lib
from rdbm_jax.evaluation import metrics, scoring
from rdbm_jax.errors import ConfigError
from tests.helpers import config


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A real photo crop and a noisy, slightly out-of-range copy (float32)."""
    rng = np.random.default_rng(1)
    a = data.astronaut()[60:140, 150:246].astype(np.float32) / 255.0
    b = np.clip(a + rng.normal(0, 0.05, a.shape), -0.02, 1.02).astype(np.float32)
    return a, b


def ref_levels(x: np.ndarray, mode: str) -> np.ndarray:
    """What the protocols measure: BasicSR's np.round, DGSolver's (x*255).astype(uint8), or x."""
    if mode == "none":
        return x.astype(np.float64)
    clipped = np.clip(x, 0, 1)
    u8 = np.round(clipped * 255).astype(np.uint8) if mode == "round" else (clipped *
                                                                           255).astype(np.uint8)
    return u8


def ref_ssim(a: np.ndarray, b: np.ndarray, window: str) -> float:
    """scikit-image, called as each protocol calls it, channel by channel, averaged."""
    data_range = 255 if a.dtype == np.uint8 else 1.0
    # DGSolver's cal_ssim: structural_similarity(ref[:,:,i], gen[:,:,i]), defaults
    if window == "uniform":
        kw = {} if a.dtype == np.uint8 else dict(data_range=1.0)
    else:
        kw = dict(data_range=data_range, gaussian_weights=True, sigma=1.5,
                  use_sample_covariance=False)
    return float(np.mean([sk_ssim(a[..., c], b[..., c], **kw) for c in range(a.shape[-1])]))


@pytest.mark.parametrize("window", ["gaussian", "uniform"])
@pytest.mark.parametrize("mode", ["round", "truncate", "none"])
def test_ssim_and_psnr_match_skimage_for_every_protocol(pair, window, mode):
    a, b = pair
    ra, rb = ref_levels(a, mode), ref_levels(b, mode)
    got = float(metrics.ssim(a, b, quantize=mode, window=window))
    assert got == pytest.approx(ref_ssim(ra, rb, window), abs=2e-5)
    if mode != "none":
        assert float(metrics.psnr(a, b, quantize=mode)) == pytest.approx(
            sk_psnr(ra, rb, data_range=255), abs=1e-4)


def test_protocols_really_differ(pair):
    a, b = pair
    g, u = (float(metrics.ssim(a, b, quantize="truncate", window=w))
            for w in ("gaussian", "uniform"))
    assert abs(g - u) > 1e-3
    r, t = (float(metrics.psnr(a, b, quantize=m)) for m in ("round", "truncate"))
    assert abs(r - t) > 1e-3


def test_bool_quantize_still_means_round_or_none(pair):
    a, b = pair
    assert metrics.quantize_mode(True) == "round" and metrics.quantize_mode(False) == "none"
    assert float(metrics.ssim(a, b, quantize=True)) == float(metrics.ssim(a, b, quantize="round"))


def test_bad_protocol_values_are_one_line_config_errors(pair):
    a, b = pair
    with pytest.raises(ConfigError, match="eval.quantize"):
        metrics.psnr(a, b, quantize="floor")
    with pytest.raises(ConfigError, match="eval.ssim_window"):
        metrics.ssim(a, b, window="box")
    with pytest.raises(ConfigError, match="eval.ssim_window='box'"):
        config_lib.validate(config(**{"eval.ssim_window": "box"}))
    with pytest.raises(ConfigError, match="eval.quantize='floor'"):
        config_lib.validate(config(**{"eval.quantize": "floor"}))


def test_protocol_record_names_window_and_quantisation():
    cfg = config("universal", None)
    record = scoring.protocol(cfg)
    assert record["ssim_window"] == "uniform" and record["quantize"] == "truncate"
    assert "7x7 uniform" in record["ssim"]
    json.dumps(record)  # written into metrics.json as is
