"""Inpainting masks: free-form brush strokes and boxes with a hole ratio in a configured range."""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

from rdbm_jax.data.image_io import decode_pixels, shown
from rdbm_jax.errors import DataError

log = logging.getLogger("rdbm_jax")

# the hole is filled white (1 in [0, 1], i.e. +1 in model range), as in the paper's figure
HOLE_VALUE = 1.0
_MAX_SHAPES = 400


Box = tuple[int, int, int, int]  # (left, top, right, bottom), right and bottom exclusive


def _stroke_segments(draw: ImageDraw.ImageDraw, h: int, w: int,
                     rng: np.random.Generator) -> Iterator[Box]:
    """Draw one free-form brush stroke (DeepFill-v2 style), yielding after each segment a box that
    holds every pixel the segment may have drawn."""
    side = min(h, w)
    width = max(1, int(round(rng.uniform(0.03, 0.08) * side)))
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    angle = rng.uniform(0, 2 * math.pi)
    r = width / 2
    draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    for _ in range(int(rng.integers(4, 13))):
        angle += rng.uniform(-math.pi / 3, math.pi / 3)
        length = rng.uniform(0.05, 0.15) * side
        # min/max, not np.clip: the same float, without numpy's per-call overhead (hot loop)
        nx = min(max(x + length * math.cos(angle), 0.0), float(w - 1))
        ny = min(max(y + length * math.sin(angle), 0.0), float(h - 1))
        draw.line([(x, y), (nx, ny)], fill=255, width=width)
        draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=255)
        pad = width + 2  # wider than the line's half-width and the caps' radius, with rounding
        yield (int(min(x, nx)) - pad, int(min(y, ny)) - pad,
               int(max(x, nx)) + pad + 1, int(max(y, ny)) + pad + 1)
        x, y = nx, ny


def _box(draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> Iterator[Box]:
    """Draw one axis-aligned box (10–30 % of each side)."""
    bh = max(1, int(rng.uniform(0.1, 0.3) * h))
    bw = max(1, int(rng.uniform(0.1, 0.3) * w))
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    draw.rectangle([left, top, left + bw - 1, top + bh - 1], fill=255)
    yield (left, top, left + bw, top + bh)


def free_form_mask(h: int, w: int, rng: np.random.Generator, min_ratio: float,
                   max_ratio: float) -> np.ndarray:
    """A bool [H, W] hole mask of strokes (70 %) and boxes (30 %), hole fraction in [min, max]."""
    # Shapes are added one segment at a time until the fraction reaches a target drawn uniformly
    # from [min_ratio, max_ratio]; pixels of the last segment that overshoot max_ratio are dropped.
    n = h * w
    lo, hi = int(math.ceil(min_ratio * n)), int(math.floor(max_ratio * n))
    target = max(lo, min(hi, int(round(rng.uniform(min_ratio, max_ratio) * n))))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    cur = np.zeros((h, w), bool)
    count = 0
    region, before = (slice(0, 0), slice(0, 0)), cur[:0, :0].copy()  # the last segment's box
    for _ in range(_MAX_SHAPES):
        shape = _stroke_segments if rng.uniform() < 0.7 else _box
        for left, top, right, bottom in shape(draw, h, w, rng):
            # WHY a box: re-reading only the pixels a segment may have drawn keeps the count
            # exact at a fraction of the cost of re-reading the whole canvas per segment.
            left, top, right, bottom = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
            region = (slice(top, bottom), slice(left, right))
            before = cur[region].copy()
            now = np.asarray(canvas.crop((left, top, right, bottom))) > 0
            count += int(now.sum()) - int(before.sum())
            cur[region] = now
            if count >= target:
                break
        if count >= target:
            break
    if count > hi:  # trim the newest pixels (raster order) back to max_ratio
        prev = cur.copy()
        prev[region] = before
        new = np.flatnonzero(cur & ~prev)
        cur.flat[new[:count - hi]] = False
    elif count < lo:  # only if shapes ran out (never for sane ranges): fill free pixels
        free = np.flatnonzero(~cur)
        cur.flat[free[:lo - count]] = True
    return cur


MASK_RULE = ("bool, or numbers that are all 0/1 or all 0/255 (0/65535 in 16-bit files); "
             "true, 1 or 255 = hole")


def hole_mask(values: Any, what: str, full: int = 255) -> np.ndarray:
    """THE mask rule of the API, sample mode, training's mask files (and, copied, the export
    loader): bool as is; numbers all in {0, 1} or all in {0, `full`} (255, a white hole); anything
    else (NaN, negative, other levels, complex, strings) refused (DataError naming `what`)."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "uif":
        raise DataError(f"{what}: dtype {arr.dtype} is not a mask ({MASK_RULE})")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(f"{what}: {bad} value(s) are NaN or infinite ({MASK_RULE})")
    levels = np.unique(arr)
    if np.all(np.isin(levels, (0, 1))) or np.all(np.isin(levels, (0, full))):
        return arr > 0
    shown_levels = ", ".join(f"{v:g}" for v in levels[:6].tolist())
    more = ", …" if len(levels) > 6 else ""
    raise DataError(f"{what}: values {{{shown_levels}{more}}} are not a mask ({MASK_RULE}); a "
                    "lossy (JPEG) or anti-aliased mask needs thresholding first")


_warned_empty: set[str] = set()  # files already reported as holding no hole (once each)


def load_mask(path: str, h: int, w: int, key: str | None = None) -> np.ndarray:
    """A bool [H, W] mask from an image file by `hole_mask`'s rule (0/1 and 0/255 files alike),
    nearest-resized to (h, w) if needed; an all-black file is reported once ("nothing to
    restore")."""
    where = f"mask {shown(path)} ({key})" if key else f"mask {shown(path)}"
    pixels = decode_pixels(path, key)
    if pixels.dtype == np.uint8:
        levels, full = pixels, 255
    else:  # 16-bit files come as floats in [0, 1]: back to their integer levels
        levels, full = np.rint(pixels * 65535.0).astype(np.int64), 65535
    if np.any(levels != levels[..., :1]):  # a colour image is not a mask (which colour is a hole?)
        raise DataError(f"{where}: colours other than black and white (gray levels only; "
                        f"{MASK_RULE})")
    mask = hole_mask(levels[..., 0], where, full)
    if not mask.any() and path not in _warned_empty:
        _warned_empty.add(path)
        log.warning("%s is all black (no hole): nothing to restore there", where)
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask).resize((w, h), resample=Image.NEAREST)) > 0
    return mask


def apply_mask(x01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill the hole of a [0, 1] image with white (HOLE_VALUE)."""
    return np.where(mask[..., None], np.float32(HOLE_VALUE), x01).astype(np.float32)
