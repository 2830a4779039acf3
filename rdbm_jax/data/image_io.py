"""Image files: listing, decoding to RGB float, header probes, resizing and PNG writing.

Decoding is explicit per pixel format: grayscale/1-bit → replicated to RGB; palette → RGB;
alpha (RGBA/LA/PA) dropped, not composited; 16-bit grayscale scaled by 1/65535; float (mode F)
rejected. The first frame of multi-frame files is used; EXIF orientation is applied, so pixels
come out as image viewers show them (LQ/GT pairs align as displayed).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

from rdbm_jax.runtime import atomic, paths
from rdbm_jax.errors import DataError

log = logging.getLogger("rdbm_jax")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_ORIENTATION = 0x0112  # the EXIF orientation tag
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Image types that are not read (a user expects them restored: said once per listing, not silently).
NOT_READ = (".gif", ".apng", ".avif", ".heic", ".heif", ".jxl", ".ico", ".jp2")
_noted_frames: set[str] = set()  # multi-frame files already reported (once each)


def shown(path: str) -> str:
    """A file name for a one-line message: as is, or quoted (repr) when it holds a newline or other
    unprintable character that would split or garble the line."""
    return path if path.isprintable() else repr(path)


def _where(path: str, key: str | None) -> str:
    """`path` or `path (config key)` for error messages."""
    return f"{shown(path)} ({key})" if key else shown(path)


def set_max_pixels(limit: int) -> None:
    """The pixel count above which images are refused unread (data.max_image_pixels): PIL's
    decompression-bomb limit, process-wide (the modes set it from the config before reading)."""
    Image.MAX_IMAGE_PIXELS = int(limit)


def is_folder(path: str) -> bool:
    """Whether `path` (local, or an object-store URL through etils.epath) is a folder."""
    return paths.as_path(path).is_dir() if paths.is_remote(path) else os.path.isdir(path)


def is_file(path: str) -> bool:
    """Whether `path` (local, or an object-store URL through etils.epath) is a file."""
    return paths.as_path(path).is_file() if paths.is_remote(path) else os.path.isfile(path)


def exists(path: str) -> bool:
    """Whether `path` (local, or an object-store URL through etils.epath) exists."""
    return paths.as_path(path).exists() if paths.is_remote(path) else os.path.exists(path)


@contextlib.contextmanager
def readable(path: str) -> Iterator[Any]:
    """What PIL opens: a local path as is; an object-store file as a (seekable) file object."""
    if not paths.is_remote(path):
        yield path
        return
    with paths.as_path(path).open("rb") as f:
        yield f


def _list_remote(folder: str) -> list[str]:
    """Image files under an object-store folder (recursive; hidden names skipped). WHY not
    `is_dir` per entry: each is one request; a name with an image extension is taken as a file,
    so a folder of 10 000 images costs one listing, not 10 000 requests."""
    found, todo = [], [paths.as_path(folder)]
    while todo:
        for child in sorted(todo.pop().iterdir(), key=os.fspath):
            name = child.name
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.fspath(child))
            elif child.is_dir():
                todo.append(child)
    return found


def list_images(folder: str, key: str | None = None) -> list[str]:
    """Image files under `folder` (recursive), sorted by relative path; DataError if missing or
    empty. Object-store folders (gs://, s3://) are listed through etils.epath."""
    if not folder:
        raise DataError(f"no folder given{f' for {key}' if key else ''}")
    if not is_folder(folder):
        raise DataError(f"image folder not found: {_where(folder, key)}")
    if paths.is_remote(folder):  # no symbolic links on object stores
        found = _list_remote(folder)
        if not found:
            raise DataError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in folder "
                            f"{_where(folder, key)}")
        return sorted(found, key=lambda p: relative_stem(p, folder))
    found, other = [], []
    seen, repeats = set(), []
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or two links to one folder: each real folder once
            repeats.append(root)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(root, f))
            elif not f.startswith(".") and f.lower().endswith(NOT_READ):
                other.append(os.path.join(root, f))
    if other:
        log.warning("%s: %d file(s) of a type that is not read (%s), e.g. %s, skipped: convert "
                    "them to PNG to use them", _where(folder, key), len(other),
                    "/".join(sorted({os.path.splitext(o)[1].lower() for o in other})),
                    shown(other[0]))
    if repeats:
        log.warning("%s: %d folder(s) reached again through symbolic links (a loop?) were read "
                    "once: %s", _where(folder, key), len(repeats),
                    ", ".join(shown(r) for r in repeats[:3]))
    if not found:
        raise DataError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in folder "
                        f"{_where(folder, key)}")
    return sorted(found, key=lambda p: relative_stem(p, folder))


def relative_stem(path: str, folder: str) -> str:
    """Relative path of `path` under `folder` without extension, with '/' separators."""
    rel = os.path.splitext(os.path.relpath(path, folder))[0]
    return rel.replace(os.sep, "/")


def _to_rgb(img: Image.Image, path: str, key: str | None) -> np.ndarray:
    """A decoded PIL image as RGB pixels: uint8 [H, W, 3] for 8-bit images, float32 in [0, 1] for
    16-bit ones (explicit per-mode conversion; `pixels_to_unit` makes both float)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img).astype(np.float32)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(
                f"32-bit integer image with values outside 0..65535: {_where(path, key)}")
        gray = arr / 65535.0
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise DataError(f"floating-point images (mode F) are not supported, save as 8/16-bit: "
                        f"{_where(path, key)}")
    if mode in ("P", "PA", "RGBa"):
        img = img.convert("RGBA")  # palette (maybe with transparency) / premultiplied → RGBA first
    elif mode in ("1", "La"):
        img = img.convert("L" if mode == "1" else "LA")
    if img.mode == "RGBA":
        img = img.convert("RGB")  # alpha is dropped, not composited
    elif img.mode == "LA":
        img = img.convert("L")
    if img.mode == "L":
        return np.repeat(np.asarray(img)[..., None], 3, axis=-1)
    if img.mode != "RGB":
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(img)


def pixels_to_unit(pixels: np.ndarray) -> np.ndarray:
    """`decode_pixels` output → float32 in [0, 1] (uint8 levels / 255; float passes through)."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return np.asarray(pixels, np.float32)


@contextlib.contextmanager
def _image_errors(path: str, key: str | None, unreadable: str) -> Iterator[None]:
    """Turn PIL/OS failures while reading `path` into one-line DataErrors naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image file not found: {_where(path, key)}") from None
    except IsADirectoryError:
        raise DataError(f"expected an image file, found a folder: {_where(path, key)}") from None
    except PermissionError:
        raise DataError(
            f"image file not readable (permission denied): {_where(path, key)}") from None
    except Image.UnidentifiedImageError:
        raise DataError(
            f"not an image file (cannot identify format): {_where(path, key)}") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise DataError(f"image of {size}, above the limit of {Image.MAX_IMAGE_PIXELS:,} "
                        "(data.max_image_pixels; raise it to read this image, which is then "
                        f"restored in tiles when it does not fit in memory): {_where(path, key)}"
                        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{unreadable} ({msg}): {_where(path, key)}") from None


RowsNeeded = Callable[[int, int], int]  # (height, width) as shown → leading rows the caller needs


def _decode_leading_rows(img: Image.Image, rows: int) -> bool:
    """Make an opened, not yet loaded PNG decode only its first `rows` rows; False (nothing
    changed) where that cannot be done exactly. WHY: PNG stores rows in order in one zlib stream,
    so a training crop's window needs the rows down to its last one only (on average 62 % of a
    1024² image for a 256² crop); PIL has no public call for it, so the one tile's extent and the
    image size are shortened before `load` (tested to give the full decode's rows bit for bit)."""
    if img.format != "PNG" or img.info.get("interlace") or len(img.tile) != 1:
        return False  # Adam7-interlaced rows come in seven passes over the whole image
    tile = img.tile[0]
    w, h = img.size
    if tile.codec_name != "zip" or tuple(tile.extents) != (0, 0, w, h) or not 0 < rows < h:
        return False
    if not _ends_with_iend(img.fp):  # a truncated file: decoded whole, so that it is reported
        return False
    img._size = (w, rows)  # noqa: SLF001 (see the docstring)
    img.tile = [tile._replace(extents=(0, 0, w, rows))]
    return True


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk: length 0, type, CRC


def _ends_with_iend(fp: Any) -> bool:
    """Whether a PNG file object ends with its IEND chunk (the file is not cut short); the read
    position is kept."""
    here = fp.tell()
    try:
        size = fp.seek(0, os.SEEK_END)
        if size < len(_IEND):
            return False
        fp.seek(size - len(_IEND))
        return fp.read(len(_IEND)) == _IEND
    finally:
        fp.seek(here)


def decode_pixels(path: str, key: str | None = None, rows: RowsNeeded | None = None) -> np.ndarray:
    """Decode an image file (first frame) to RGB pixels, uint8 [H, W, 3] (16-bit files: float32 in
    [0, 1]); DataError naming the file. Training crops these and converts only the crop (4–6× less
    float work on 1280x720 pairs than converting whole frames).

    `rows`: called once with the image's (height, width) as shown, before decoding; it returns how
    many leading rows the caller needs, and a non-interlaced PNG is decoded only that far (other
    files whole). A file cut short is still decoded whole (and reported); damage inside the
    compressed rows below those needed goes unnoticed in that read."""
    with _image_errors(path, key, "corrupt or truncated image"):
        with readable(path) as source, Image.open(source) as img:
            if path not in _noted_frames and getattr(img, "is_animated", False):
                _noted_frames.add(path)  # once per file: training reads a file many times
                log.warning("%s has %d frames (pages); only the first is read", _where(path, key),
                            getattr(img, "n_frames", 2))
            if rows is not None:
                orientation = _orientation(img)
                w, h = img.size[::-1] if orientation in _TRANSPOSED else img.size
                needed = rows(h, w)
                if orientation == 1:  # the stored rows are the shown ones
                    _decode_leading_rows(img, needed)
            img.load()  # decode here: truncation surfaces now, not later
            # Pixels as viewers show them: the EXIF orientation applied (as `probe_size` reads it).
            shown_img = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
            out = _to_rgb(shown_img, path, key)
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise DataError(f"empty image (0 pixels): {_where(path, key)}")
    return out


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 = as stored). Only JPEG, TIFF and WebP headers
    are read: a PNG's EXIF may follow its pixel data, and a header probe must not read that far (a
    truncated file is reported when decoded, naming it)."""
    if img.format not in ("JPEG", "MPO", "TIFF", "WEBP"):
        return 1
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):  # damaged metadata: the decode says so
        return 1


def decode_image(path: str, key: str | None = None) -> np.ndarray:
    """Decode an image file (first frame) to float32 [H, W, 3] in [0, 1]; DataError naming it."""
    return pixels_to_unit(decode_pixels(path, key))


def probe_size(path: str, key: str | None = None) -> tuple[int, int]:
    """(height, width) from the file header only (cheap build-time check); DataError naming the
    file."""
    with _image_errors(path, key, "unreadable image header"):
        with readable(path) as source, Image.open(source) as img:
            w, h = img.size
            if _orientation(img) in _TRANSPOSED:  # shown rotated by 90°
                w, h = h, w
    if w == 0 or h == 0:
        raise DataError(f"empty image (0 pixels): {_where(path, key)}")
    return h, w


def to_model_range(x01: np.ndarray) -> np.ndarray:
    """[0, 1] → float32 [−1, 1]."""
    return (np.asarray(x01, np.float32) * 2.0 - 1.0).astype(np.float32)


def load_image(path: str) -> np.ndarray:
    """An image file as float32 [H, W, 3] in [−1, 1] (for --mode=sample inputs)."""
    return to_model_range(decode_image(path))


def to_uint8(img: Any) -> np.ndarray:
    """[−1, 1] floats → uint8 levels round((clip(x) + 1) · 127.5): the one conversion of every
    output."""
    return np.round(
        (np.clip(np.asarray(img, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def save_image(path: str, img: np.ndarray) -> None:
    """Write a [−1, 1] float image ([H, W, 3], [H, W, 1] or [H, W]) as an 8-bit PNG, atomically."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(
            f"save_image expects [H, W, 3] or [H, W], got shape {arr.shape} for {path}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"save_image got non-finite values for {path}")
    u8 = to_uint8(arr)
    if paths.is_remote(path):  # an object is published whole when its upload completes
        paths.save_png(path, u8)
        return
    with atomic.replacing(path) as tmp:  # never a half-written PNG under the final name
        Image.fromarray(u8).save(tmp, format="PNG")


def resize_float(img: np.ndarray, height: int, width: int,
                 resample: int = Image.LANCZOS) -> np.ndarray:
    """Resize a float [H, W, C] image channel by channel (PIL float mode), clipped to [0, 1]."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c]), mode="F")
                        .resize((width, height), resample=resample)) for c in range(img.shape[-1])]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def fit_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(h, w) scaled so the long side is at most `max_side` (aspect kept; 0 = unchanged)."""
    if max_side <= 0 or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def center_crop(img: np.ndarray, max_side: int) -> np.ndarray:
    """Center crop so that neither side exceeds `max_side` (0 = unchanged)."""
    if max_side <= 0:
        return img
    h, w = img.shape[:2]
    th, tw = min(h, max_side), min(w, max_side)
    top, left = (h - th) // 2, (w - tw) // 2
    return img[top:top + th, left:left + tw]


GRAY_MODES = ("1", "L", "LA", "La") + _SIXTEEN_BIT_MODES  # PIL modes read as grayscale
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, PIL's RGB → "L" weights


def is_gray_file(path: str) -> bool:
    """Whether an image file is grayscale (its header's PIL mode), so that its restoration is
    too."""
    with readable(path) as source, Image.open(source) as img:
        return img.mode in GRAY_MODES


def to_gray(img: Any) -> np.ndarray:
    """RGB [..., 3] float images (any range: the weights sum to 1) → gray [..., 1] (PIL's
    weights)."""
    arr = np.asarray(img, np.float32)
    return (arr @ np.asarray(LUMA, np.float32))[..., None]
