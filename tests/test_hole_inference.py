"""Holes inferred from the input alone (no mask given): found in JPEG-compressed strokes, exactly
the pure-white pixels of a lossless file, and the same in the exported loader (numpy, no scipy) as
in the package (scipy.ndimage)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rdbm_jax import conditioning, export_loader
from rdbm_jax.data import image_io
from rdbm_jax.data.builtin import builtin_files
from rdbm_jax.data.masks import apply_mask, free_form_mask


# --- JPEG-robust hole inference -------------------------------------------------------------------

def _jpeg(x01: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.round(x01 * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf), np.float32) / 255.0


def test_holes_are_inferred_from_jpeg_compressed_strokes():
    """>= 95 % of the stroke area found at JPEG quality 75–95 on every built-in photo; false holes
    (outside the strokes) <= 1 % of the pixels on average over the photos (real white content —
    china's sky, the astronaut's suit — is the rest; see docs/evaluation.md, "Holes")."""

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


# --- the exported loader's numpy inference; a lossless white fill ---------------------------------
def test_the_exported_loader_infers_the_same_holes_without_scipy():
    """export_loader.infer_holes (numpy shifts) against conditioning.infer_mask (scipy.ndimage)."""
    x = image_io.decode_image(dict(builtin_files("val") + builtin_files("train"))["coffee"])
    hole = free_form_mask(x.shape[0], x.shape[1], np.random.default_rng(3), 0.05, 0.2)
    mu = _jpeg(apply_mask(x, hole), 80)
    ours = export_loader.infer_holes(mu[None])[0]
    np.testing.assert_array_equal(ours, conditioning.infer_mask(mu * 2 - 1)[..., 0] > 0)
    assert (ours & hole).sum() >= 0.95 * hole.sum()


def test_an_exact_white_fill_gives_exactly_its_holes():
    """A lossless file: the pure-white pixels, nothing grown into bright known pixels."""
    for i, (name, path) in enumerate(builtin_files("train") + builtin_files("val")):
        x = image_io.decode_image(path)
        hole = free_form_mask(x.shape[0], x.shape[1], np.random.default_rng(i), 0.05, 0.2)
        mu = apply_mask(x, hole)
        exact = np.all(mu >= 1 - 0.5 / 255, axis=-1)
        np.testing.assert_array_equal(conditioning.infer_mask(mu * 2 - 1)[..., 0] > 0, exact, name)
        np.testing.assert_array_equal(export_loader.infer_holes(mu[None])[0], exact, name)
