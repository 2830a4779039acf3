"""Run a `--mode=export` restorer with only jax and numpy: copy this file beside `restorer.jax`.

    from export_loader import load                    # or: from rdbm_jax import load_exported
    restore = load("restorer.jax")
    out = restore(images)          # uint8 or [0, 1] float, [H, W, C] or [B, H, W, C]
    out = restore("photo.png")     # a file (read with PIL, when installed)

The artifact holds the network, its weights and the whole reverse loop, compiled by `jax.export`
for CPU and CUDA; it takes any batch size and any H, W >= 8 (padding to the UNet's factor is done
inside, by reflection, as in the package). jax.export's reader needs the `flatbuffers` package.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from jax import export

# PIL's RGB → L weights (ITU-R 601), as rdbm_jax.data.image_io.LUMA: gray in → gray out.
LUMA = (0.299, 0.587, 0.114)
GRAY_MODES = ("1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N", "I")


# As rdbm_jax.conditioning.infer_mask (HOLE_*), in numpy alone: this file needs no rdbm_jax/scipy.
HOLE_THRESHOLD = 0.98
HOLE_GROW_LEVEL = 0.8
HOLE_GROW_STEPS = 3
HOLE_RIM_LEVEL = 0.9
LOSSLESS_RIM_SHARE = 0.5
PURE_WHITE = 1.0 - 0.5 / 255  # [0, 1] units: rounds to 255


def _dilate(m: np.ndarray) -> np.ndarray:
    """3×3 binary dilation of [B, H, W] (outside the image: False)."""
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    h, w = m.shape[1:]
    return np.any([p[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def _erode(m: np.ndarray) -> np.ndarray:
    """3×3 binary erosion of [B, H, W] (outside the image: True, so border holes stay whole)."""
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    h, w = m.shape[1:]
    return np.all([p[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def infer_holes(unit: np.ndarray, threshold: float = HOLE_THRESHOLD) -> np.ndarray:
    """Holes of white-filled images [B, H, W, 3] in [0, 1] → bool [B, H, W]: an exact fill's
    pure-white pixels; for a compressed one, blobs of pixels >= `threshold` in every channel
    (closed, then opened), grown HOLE_GROW_STEPS pixels into pixels >= HOLE_GROW_LEVEL (JPEG's
    rims), then closed."""
    out = []
    for low in unit.min(axis=-1):
        pure = low >= PURE_WHITE
        rim = _dilate(pure[None])[0] & ~pure
        exact = pure.any() and (not rim.any()
                                or np.mean(low[rim] >= HOLE_RIM_LEVEL) < LOSSLESS_RIM_SHARE)
        if exact:
            out.append(pure)
            continue
        seed = _dilate(_erode(_erode(_dilate((low >= threshold)[None]))))
        grow = low >= HOLE_GROW_LEVEL
        for _ in range(HOLE_GROW_STEPS):
            seed = np.where(grow, _dilate(seed), seed)
        out.append(_erode(_dilate(seed))[0])
    return np.stack(out)


MASK_RULE = ("bool, or numbers that are all 0/1 or all 0/255 (0/65535 in 16-bit files); "
             "true, 1 or 255 = hole")


def hole_mask(values: Any, what: str = "mask", full: int = 255) -> np.ndarray:
    """rdbm_jax.data.masks.hole_mask, copied (this file needs no rdbm_jax; a test keeps the two
    alike): bool as is; numbers all in {0, 1} or all in {0, 255}; anything else refused
    (ValueError)."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "uif":
        raise ValueError(f"{what}: dtype {arr.dtype} is not a mask ({MASK_RULE})")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"{what}: {bad} value(s) are NaN or infinite ({MASK_RULE})")
    levels = np.unique(arr)
    if np.all(np.isin(levels, (0, 1))) or np.all(np.isin(levels, (0, full))):
        return arr > 0
    shown_levels = ", ".join(f"{v:g}" for v in levels[:6].tolist())
    more = ", …" if len(levels) > 6 else ""
    raise ValueError(f"{what}: values {{{shown_levels}{more}}} are not a mask ({MASK_RULE}); a "
                     "lossy (JPEG) or anti-aliased mask needs thresholding first")


class ExportedRestorer:
    """A deserialized restorer: `self(images, seed=0)` → restored images (same dtype and range)."""

    def __init__(self, exported: export.Exported, info: dict):
        self.exported = exported
        self.info = info

    def raw(self, mu: np.ndarray, mask: np.ndarray, key: np.ndarray) -> np.ndarray:
        """The exported function: μ float32 [B, H, W, 3] in [-1, 1], mask float32 [B, H, W, 1] (1 =
        degraded pixel; read only by mask-conditioned models), key uint32 [2] → x̂0 in [-1, 1]."""
        return np.asarray(
            self.exported.call(np.asarray(mu, np.float32), np.asarray(mask, np.float32),
                               np.asarray(key, np.uint32)))

    def __call__(self, images: Any, mask: np.ndarray | None = None, seed: int = 0) -> Any:
        """uint8 or float [0, 1] images, [H, W], [H, W, C] or [B, H, W, C] with C = 1 (gray), 3
        (RGB) or 4 (RGBA: alpha dropped) → the restored images, same dtype; gray in → gray out
        (same shape). A file path (str or os.PathLike; needs PIL) or a PIL image → a PIL image.

        `mask` ([H, W] or [B, H, W]: bool, or all 0/1, or all 0/255; anything else is refused) is
        for inpainting models trained with the mask; None
        infers the holes from the white fill, robustly to JPEG (`infer_holes`).
        """
        if isinstance(images, (str, os.PathLike)) or type(images).__module__.startswith("PIL."):
            return self._pil(images, mask, seed)
        arr = np.asarray(images)
        flat = arr.ndim == 2  # [H, W]: one gray image
        batch = arr[None, ..., None] if flat else (arr[None] if arr.ndim == 3 else arr)
        if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4) or min(batch.shape[1:3]) < 8:
            raise ValueError(f"images: shape {arr.shape} is not [H, W], [H, W, C] or [B, H, W, C] "
                             "with C = 1, 3 or 4 and H, W >= 8")
        gray = batch.shape[-1] == 1
        batch = np.repeat(batch, 3, axis=-1) if gray else batch[..., :3]
        unit = batch.astype(np.float32)
        if batch.dtype == np.uint8:
            unit = unit / 255.0
        if not np.all(np.isfinite(unit)):  # one NaN would spread over the whole image
            raise ValueError("images: NaN or infinite values; float images must be finite, "
                             "in [0, 1]")
        if unit.size and (unit.min() < 0.0 or unit.max() > 1.0):
            raise ValueError(f"images: float values span [{unit.min():g}, {unit.max():g}]; they "
                             "must lie in [0, 1] (divide 0–255 floats by 255, or pass uint8)")
        if mask is None:
            holes = infer_holes(unit, float(self.info.get("hole_threshold", HOLE_THRESHOLD)))
        else:
            holes = hole_mask(mask)
            holes = holes[..., 0] if holes.ndim >= 3 and holes.shape[-1] == 1 else holes
            b, h, w = batch.shape[:3]
            fits = holes.ndim in (2, 3) and holes.shape[-2:] == (h, w)
            if not fits or (holes.ndim == 3 and len(holes) not in (1, b)):
                raise ValueError(f"mask: shape {np.shape(mask)} does not fit the images' "
                                 f"{(b, h, w)} ([H, W], or [B, H, W] with the images' B)")
            holes = np.broadcast_to(holes.reshape((-1, h, w)), (b, h, w))
        key = np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)), np.uint32)
        raw = self.raw(unit * 2.0 - 1.0, holes[..., None].astype(np.float32), key)
        out = np.clip((raw + 1.0) / 2.0, 0.0, 1.0)
        if gray:
            out = (out @ np.asarray(LUMA, np.float32))[..., None]
        # uint8 as rdbm_jax.data.to_uint8 gives it (this file runs with jax + numpy only, no
        # rdbm_jax)
        out = np.rint(out * 255.0).astype(np.uint8) if batch.dtype == np.uint8 else out
        out = out[..., 0] if flat else out
        return out[0] if arr.ndim in (2, 3) else out

    def _pil(self, image: Any, mask: np.ndarray | None, seed: int) -> Any:
        """A file path or PIL image → the restored PIL image (gray stays gray)."""
        from PIL import Image, ImageOps  # only for files and PIL images: numpy inputs need no PIL

        if isinstance(image, (str, os.PathLike)):
            with Image.open(os.fspath(image)) as img:
                image = ImageOps.exif_transpose(img)  # as the camera held it (a loaded copy)
        gray = image.mode in GRAY_MODES
        return Image.fromarray(self(np.asarray(image.convert("L" if gray else "RGB")), mask, seed))


def load(path: str) -> Callable[..., np.ndarray]:
    """Deserialize `restorer.jax` (and read `restorer.json` beside it when present; a json that
    describes another artifact, e.g. after an export killed between its two writes, is refused)."""
    with open(path, "rb") as f:
        blob = f.read()
    meta = os.path.splitext(path)[0] + ".json"
    info = {}
    if os.path.exists(meta):
        with open(meta, encoding="utf-8") as f:
            text = f.read()
        try:
            info = json.loads(text)
        except ValueError as e:  # JSONDecodeError: not JSON (a hand edit, a damaged copy)
            raise ValueError(f"{meta}: not valid JSON ({e}); run --mode=export again, or "
                             "delete it to load the artifact without its description") from None
        if not isinstance(info, dict):
            raise ValueError(f"{meta}: holds a JSON {type(info).__name__}, not the object "
                             "--mode=export writes; run --mode=export again")
    expected = info.get("artifact_sha256")
    if expected and expected != hashlib.sha256(blob).hexdigest():
        raise ValueError(f"{meta} describes another artifact than {path} (an interrupted export?): "
                         "run --mode=export again")
    return ExportedRestorer(export.deserialize(bytearray(blob)), info)
