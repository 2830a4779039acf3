"""Perceptual metrics from local weight files: LPIPS (AlexNet/VGG16) and FID (pytorch-fid
Inception).

`make_lpips(path, net)` and `make_inception(path)` return None when `path` is "" (the metric is then
skipped by the caller, never faked); a missing or mismatched file raises DataError/ConfigError.
"""
from __future__ import annotations

from rdbm_jax.evaluation.perceptual.inception import FIDInceptionV3, load_inception, make_inception
from rdbm_jax.evaluation.perceptual.lpips import LPIPS, load_lpips, make_lpips

__all__ = [
    "FIDInceptionV3", "LPIPS", "load_inception", "load_lpips", "make_inception", "make_lpips"
]
