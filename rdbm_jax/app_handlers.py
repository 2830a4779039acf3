"""`--mode=app`'s work without the page: decode an upload, read the painted holes, restore with the
Python API beside the classical baseline, write the PNGs, word a failure in one line.

No Gradio here (`app.py` builds the page on these), so every handler is tested without a browser.
One restore path: `api.TrainedModel.restore` and `baselines.restore`, nothing copied from them.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from rdbm_jax import api, conditioning
from rdbm_jax.runtime import atomic
from rdbm_jax.evaluation import baselines
from rdbm_jax.data import image_io, masks, spec as data_spec
from rdbm_jax.errors import DataError, RDBMError
from rdbm_jax.sampler import check_size

log = logging.getLogger("rdbm_jax")

UPLOAD_TYPES = (".png", ".jpg", ".jpeg", ".webp")  # what the page's file picker offers
# Degradations whose classical baseline needs nothing a user's photo lacks (the noise σ or blur
# kernel of the others is known only for synthetic degradations): beside the others, the input.
BLIND_BASELINES = ("inpaint", "lowlight")


def decode_upload(path: str) -> np.ndarray:
    """An uploaded photo as uint8 RGB [H, W, 3] (EXIF orientation applied, 16-bit rounded to 8);
    a one-line DataError naming the file (its name, not the server's copy) when it is not an image,
    above data.max_image_pixels (`image_io.set_max_pixels`) or too small to restore."""
    name = image_io.shown(os.path.basename(path))
    try:
        pixels = image_io.decode_pixels(path)
    except DataError as e:
        raise DataError(str(e).replace(image_io.shown(path), name)) from None
    if pixels.dtype != np.uint8:  # a 16-bit file: float in [0, 1]
        pixels = image_io.to_uint8(image_io.to_model_range(pixels))
    check_size(pixels.shape[0], pixels.shape[1], name)
    return pixels


def painted_mask(editor: dict | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The holes painted in the editor, bool [H, W]: every pixel a brush layer covers (alpha > 0,
    anti-aliased rims included); None when nothing is painted. A DataError when a layer is not the
    photo's size (the page was given another photo meanwhile)."""
    layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or []
              if layer is not None]
    holes = np.zeros(shape, bool)
    for layer in layers:
        if layer.ndim != 3 or layer.shape[2] != 4:
            raise DataError(f"the painted layer has shape {layer.shape}, not [H, W, 4] (RGBA)")
        if layer.shape[:2] != tuple(shape):
            raise DataError(f"the painted layer is {layer.shape[1]}x{layer.shape[0]} but the "
                            f"photo {shape[1]}x{shape[0]}: upload the photo again")
        holes |= layer[..., 3] > 0
    return holes if holes.any() else None


def task_degradations(config: Any) -> tuple[str, ...]:
    """The synthetic degradations a run was trained on (sorted; "none" for real pairs)."""
    found = set()
    for task in data_spec.task_names(config.data):
        for source in data_spec.named_sources(config.data, task, "train"):
            found.add(data_spec.resolve(source.cfg, source.key).degradation)
    return tuple(sorted(found))


@dataclasses.dataclass
class Result:
    """One restore: the degraded input as the model saw it, the baseline, RDBM's result (uint8
    [H, W, 3]), the holes (bool [H, W], None for tasks without them) and the seconds each took."""
    degraded: np.ndarray
    baseline: np.ndarray
    restored: np.ndarray
    holes: np.ndarray | None
    model_seconds: float
    baseline_seconds: float
    status: str


class PageModel:
    """A trained model as the page uses it: inpainting runs take holes (painted, or inferred from
    pure white as --mode=sample does); other tasks take the photo as it is."""

    def __init__(self, model: api.TrainedModel):
        self.model = model
        cfg = model.config
        self.degradations = task_degradations(cfg)
        self.brush = "inpaint" in self.degradations
        self.uses_mask = conditioning.uses_mask(cfg.model.condition)
        blind = [d for d in self.degradations if d in BLIND_BASELINES]
        self.baseline = "inpaint" if self.brush else (blind[0] if len(blind) == 1 else "none")
        self.baseline_name = baselines.describe(self.baseline, true_mask=True)

    def holes(self, photo: np.ndarray, painted: np.ndarray | None) -> tuple[np.ndarray, str]:
        """(bool [H, W] holes, where they came from): the painted ones, else the photo's pure-white
        blobs (`conditioning.infer_mask` at the run's sample.hole_threshold); a DataError when
        there are none."""
        if painted is not None:
            return painted, "painted"
        mu = image_io.to_model_range(image_io.pixels_to_unit(photo))
        inferred = conditioning.infer_mask(mu, self.model.config.sample.hole_threshold)[..., 0]
        if not inferred.any():
            raise DataError("no holes to fill: paint over what should go with the brush, or upload "
                            "a photo whose holes are pure white")
        return inferred > 0.5, "inferred from the white fill"

    def restore(self, photo: np.ndarray, painted: np.ndarray | None, num_steps: int, eta: float,
                seed: int = 0) -> Result:
        """RDBM (`TrainedModel.restore`) and the baseline (`baselines.restore`) on one photo."""
        check_size(photo.shape[0], photo.shape[1], "photo")
        holes, source = None, ""
        degraded = photo
        if self.brush:
            holes, source = self.holes(photo, painted)
            # the holes filled as training filled them (white), so the model sees what it learnt
            degraded = image_io.to_uint8(image_io.to_model_range(
                masks.apply_mask(image_io.pixels_to_unit(photo), holes)))
        mask = None
        if self.uses_mask:  # mask models: the holes, or every pixel for tasks without holes
            mask = (holes if holes is not None else np.ones(photo.shape[:2], bool))
            mask = mask.astype(np.float32)
        start = time.perf_counter()
        restored = self.model.restore(degraded, num_steps=int(num_steps), eta=float(eta),
                                      seed=seed, mask=mask)
        model_seconds = time.perf_counter() - start
        start = time.perf_counter()
        base = baselines.restore(image_io.pixels_to_unit(degraded), self.baseline, mask=holes)
        baseline_seconds = time.perf_counter() - start
        h, w = photo.shape[:2]
        where = "" if holes is None else f"; holes {100 * holes.mean():.1f} % ({source})"
        status = (f"restored {w}x{h}: RDBM {model_seconds:.2f} s (NFE {int(num_steps)}, "
                  f"η {float(eta):g}), {self.baseline_name} {baseline_seconds:.2f} s{where}")
        return Result(degraded, image_io.to_uint8(image_io.to_model_range(base)), restored, holes,
                      model_seconds, baseline_seconds, status)


def write_png(img: np.ndarray, folder: str, name: str) -> str:
    """`img` (uint8 [H, W, 3], or bool [H, W]: white = True) as `folder`/`name` in a fresh
    subfolder (each restore's downloads apart), written atomically; its path."""
    arr = np.asarray(img)
    if arr.dtype == bool:
        arr = image_io.to_uint8(np.where(arr, 1.0, -1.0))
    blob = io.BytesIO()
    Image.fromarray(arr).save(blob, format="PNG")
    path = os.path.join(tempfile.mkdtemp(dir=folder), name)
    atomic.write_bytes(path, blob.getvalue())
    return path


def error_line(e: BaseException) -> str:
    """A failure as the page shows it: one line. The user's input (RDBMError, ValueError: the
    API's own messages) as it is; anything else with its type, its traceback logged."""
    if isinstance(e, MemoryError):
        text = "out of host memory: try a smaller photo, or set sample.tile_size"
    elif isinstance(e, (RDBMError, ValueError)):
        text = str(e) or type(e).__name__
    else:
        log.exception("restore failed")
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())
