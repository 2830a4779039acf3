"""Python API: load a trained run and restore numpy / PIL images of any size (notebooks, forks)."""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from rdbm_jax.checkpointing import checkpoint_rotation, checkpoints
from rdbm_jax import config as config_lib, data
from rdbm_jax.runtime import distributed
from rdbm_jax import inference, models, program
from rdbm_jax.runtime import paths
from rdbm_jax.data import image_io
from rdbm_jax.data.masks import hole_mask
from rdbm_jax.errors import RDBMError
from rdbm_jax.sampler import Sampler


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.")


def check_unit_range(unit: np.ndarray, what: str = "images") -> None:
    """Refuse (ValueError) float images that are not finite or not in [0, 1]: [0, 255] floats would
    come back white, negatives black, and one NaN spreads over the whole image."""
    bad = int(np.size(unit) - np.count_nonzero(np.isfinite(unit)))
    if bad:
        raise ValueError(f"{what}: {bad} value(s) are NaN or infinite; float images must be "
                         "finite, in [0, 1]")
    lo, hi = (float(unit.min()), float(unit.max())) if np.size(unit) else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        hint = " (divide 0–255 floats by 255, or pass uint8)" if hi > 1.0 else ""
        raise ValueError(f"{what}: float values span [{lo:g}, {hi:g}]; they must lie in "
                         f"[0, 1]{hint}")


def _to_mu(images: np.ndarray) -> np.ndarray:
    """uint8 or float [0, 1] images [..., H, W, C] → float32 RGB in [-1, 1]."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        unit = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        unit = arr.astype(np.float32)
        check_unit_range(unit)
    else:
        raise ValueError(f"images: dtype {arr.dtype} is not supported (uint8, or float in [0, 1])")
    if unit.shape[-1] == 1:
        unit = np.repeat(unit, 3, axis=-1)
    elif unit.shape[-1] == 4:
        unit = unit[..., :3]  # drop alpha
    elif unit.shape[-1] != 3:
        raise ValueError(
            f"images: shape {arr.shape} has {unit.shape[-1]} channels (1, 3 or 4 expected)")
    return unit * 2.0 - 1.0


def _integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi], else a ValueError naming the argument and what it got."""
    want = "an integer"
    if lo is not None:
        want += f" >= {lo}" if hi is None else f" in [{lo}, {hi}]"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok and isinstance(value, (float, np.floating)) and np.isfinite(value):
        ok = float(value).is_integer()  # 10.0 is fine, 10.5 is not
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name}: got {value!r}; expected {want}")
    return int(value)


def _real(name: str, value: Any) -> float:
    """`value` as a finite float, else a ValueError naming the argument and what it got."""
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        out = float("nan")
    if not np.isfinite(out) or isinstance(value, bool):
        raise ValueError(f"{name}: got {value!r}; expected a finite number")
    return out


def _mask_list(mask: Any, count: int) -> list[Any]:
    """One mask per image of a list (None for no mask), else a ValueError saying what came."""
    if not isinstance(mask, (list, tuple)):
        raise ValueError(f"mask: got a {type(mask).__name__} for a list of {count} images; give a "
                         "list of masks, one per image (None where an image has none)")
    if len(mask) != count:
        raise ValueError(f"mask: got {len(mask)} masks for {count} images (one per image)")
    return list(mask)


def _from_x0(x0: np.ndarray, like_dtype: np.dtype, gray: bool = False) -> np.ndarray:
    """[-1, 1] → uint8 when the input was uint8, else float32 in [0, 1]; one channel when `gray`."""
    if gray:
        x0 = image_io.to_gray(x0)
    if like_dtype == np.uint8:
        return data.to_uint8(x0)
    return np.clip((np.asarray(x0, np.float32) + 1.0) / 2.0, 0.0, 1.0)


class TrainedModel:
    """A trained run's config, network, bridge schedule and (EMA) parameters, ready to restore
    images."""

    def __init__(self, config: ml_collections.ConfigDict, model: Any, schedule: Any, params: Any,
                 step: int, mesh: Any):
        self.config = config
        self.model = model
        self.schedule = schedule
        self.params = params
        self.step = step
        self.mesh = mesh
        self.multiple = models.downsample_factor(config.model)  # the UNet's downsampling factor

    def __repr__(self) -> str:
        c = self.config
        return (
            f"TrainedModel(step={self.step}, size={c.model.size!r}, bridge={c.bridge.preset!r}, "
            f"NFE={c.sample.num_steps}, eta={c.sample.eta:g}, condition={c.model.condition!r}, "
            f"ema={bool(c.sample.use_ema)})")

    def sampler(self, num_steps: int | None = None, eta: float | None = None,
                tile_size: int | None = None, tile_overlap: int | None = None) -> Sampler:
        """The Sampler (compiled reverse loops) for these settings (None: the run's `sample`
        config)."""
        cfg = ml_collections.ConfigDict(self.config.to_dict())
        s = cfg.sample
        s.num_steps = s.num_steps if num_steps is None else _integer("num_steps", num_steps)
        s.eta = s.eta if eta is None else _real("eta", eta)
        s.tile_size = s.tile_size if tile_size is None else _integer("tile_size", tile_size)
        s.tile_overlap = (s.tile_overlap if tile_overlap is None
                          else _integer("tile_overlap", tile_overlap))
        # The overrides obey the sample.* rules (a ConfigError is a ValueError).
        config_lib.validate(cfg)
        return program.build_sampler(cfg, self.mesh)

    def restore(self, images: Any, *, num_steps: int | None = None, eta: float | None = None,
                tile_size: int | None = None, tile_overlap: int | None = None, seed: int = 0,
                batch_size: int | None = None, mask: Any = None) -> Any:
        """Restore degraded images of any size (padded to the UNet's factor inside, cropped back).

        images: a PIL image, an image file's path (str or os.PathLike), a numpy image [H, W],
        [H, W, C] or batch [B, H, W, C] (uint8, or float in [0, 1]; C = 1, 3 or 4: alpha is
        dropped), or a list of these (sizes may differ). Returns the same kind: PIL → PIL, a path →
        PIL, uint8 → uint8, float → float32 in [0, 1], list → list; gray in → gray out (PIL "L",
        [H, W], C = 1; PIL's RGB → L weights), else RGB.
        num_steps (NFE), eta, tile_size, tile_overlap: override the run's `sample` settings.
        seed: the sampling noise (η > 0). batch_size: images per compiled call (the run's default).
        mask: the degradation mask ([H, W] or [B, H, W]), for models trained with the mask
        condition: bool, or all 0/1, or all 0/255 (true, 1 or 255 = hole); anything else (NaN,
        negative, other levels) is refused (`data.masks.hole_mask`, the rule of every mode).
        """
        seed = _integer("seed", seed, -2**63, 2**63 - 1)  # what jax.random.PRNGKey takes
        if batch_size is not None:
            batch_size = _integer("batch_size", batch_size, 1)
        if isinstance(images, (list, tuple)):
            masks = [None] * len(images) if mask is None else _mask_list(mask, len(images))
            _integer("seed", seed + max(len(images) - 1, 0), -2**63, 2**63 - 1)  # the last image
            return [
                self.restore(img, num_steps=num_steps, eta=eta, tile_size=tile_size,
                             tile_overlap=tile_overlap, seed=seed + i, batch_size=batch_size,
                             mask=m) for i, (img, m) in enumerate(zip(images, masks, strict=True))
            ]
        if isinstance(images, (str, os.PathLike)):
            from PIL import Image, ImageOps

            path = os.fspath(images)  # local or gs://; a missing/unreadable file: PIL's own error
            with image_io.readable(path) as source, Image.open(source) as img:
                images = ImageOps.exif_transpose(img)  # as the camera held it (a loaded copy)
        if _is_pil(images):
            from PIL import Image

            gray = images.mode in image_io.GRAY_MODES
            out = self.restore(np.asarray(images.convert("L" if gray else "RGB")),
                               num_steps=num_steps, eta=eta, tile_size=tile_size,
                               tile_overlap=tile_overlap, seed=seed, batch_size=batch_size,
                               mask=mask)
            return Image.fromarray(out)
        arr = np.asarray(images)
        flat = arr.ndim == 2  # [H, W]: gray, and given back as [H, W]
        if flat:
            arr = arr[..., None]
        single = arr.ndim == 3
        batch = arr[None] if single else arr
        if batch.ndim != 4:
            raise ValueError(f"images: shape {np.shape(images)} is not [H, W, C] or [B, H, W, C]")
        if not len(batch):
            raise ValueError(f"images: an empty batch (shape {np.shape(images)}): nothing to "
                             "restore")
        mu = _to_mu(batch)
        sampler = self.sampler(num_steps, eta, tile_size, tile_overlap)
        masks = self._masks(sampler, mask, mu.shape)
        rng = jax.random.PRNGKey(seed)
        size = batch_size or self.config.sample.batch_size
        outs = []
        for i, start in enumerate(range(0, len(mu), size)):
            extra = {} if masks is None else {"mask": masks[start:start + size]}
            outs.append(
                sampler(self.params, mu[start:start + size], jax.random.fold_in(rng, i), **extra))
        out = _from_x0(np.concatenate(outs), batch.dtype, gray=batch.shape[-1] == 1)
        out = out[..., 0] if flat else out
        return out[0] if single else out

    @staticmethod
    def _masks(sampler: Sampler, mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
        """The mask as float32 [B, H, W, 1], or None; a ValueError where the sampler takes no
        mask."""
        if mask is None:
            return None
        if not sampler.uses_mask:
            raise ValueError(
                f"mask: this model (model.condition={sampler.condition!r}) reads no mask; "
                "only models trained with a mask condition do")
        m = hole_mask(mask, "mask")  # bool, 0/1 or 0/255 (else refused, naming the values)
        m = m[..., 0] if m.ndim >= 3 and m.shape[-1] == 1 else m
        b, h, w = shape[:3]
        fits = m.ndim in (2, 3) and m.shape[-2:] == (h, w)
        if not fits or (m.ndim == 3 and len(m) not in (1, b)):
            raise ValueError(f"mask: shape {np.shape(mask)} does not fit the images' {shape[:3]} "
                             "([H, W] for every image, or [B, H, W] with the images' B)")
        return np.broadcast_to(m.reshape((-1, h, w)), (b, h, w))[..., None].astype(np.float32)


def load(workdir: str, step: int | None = None, *, use_ema: bool = True) -> TrainedModel:
    """Load a trained run from `workdir`: the latest checkpoint (or `step`), EMA parameters by
    default."""
    paths.check_backend(workdir, "workdir")  # gs:// without gcsfs: a ConfigError naming the extra
    mesh = distributed.make_mesh()

    def load_step(directory: str, at: int) -> tuple[ml_collections.ConfigDict, inference.Trained]:
        saved = checkpoints.read_config(directory, at)
        folder = os.path.join(directory, str(at))
        # a damaged or crafted saved config: one line naming the file and the key
        cfg = config_lib.check_saved(saved, os.path.join(folder, "config"))
        cfg.sample.use_ema = bool(use_ema)
        return cfg, inference.load_trained(cfg, workdir, mesh, folder, saved_config=saved)

    try:
        if step is None:  # the newest, which a running training may delete while it is read
            cfg, trained = checkpoint_rotation.read_newest(workdir, load_step)
        else:
            directory, latest = checkpoints.resolve(workdir)
            step = int(step)
            folder = os.path.join(directory, str(step))
            if not paths.as_path(folder).is_dir():  # local or gs://…
                raise ValueError(f"step={step}: no checkpoint {folder} (latest: {latest})")
            missing = checkpoints.missing_files(folder)
            if missing:
                raise ValueError(f"step={step}: {folder} is not a complete checkpoint (missing "
                                 f"{', '.join(missing)}; latest complete: {latest})")
            cfg, trained = load_step(directory, step)
    except RDBMError as e:  # the messages name the CLI's key; this function takes step=
        raise type(e)(str(e).replace("set sample.checkpoint", "pass step=")
                      .replace("with sample.checkpoint", "with step=")) from None
    model, schedule, params, step = trained
    return TrainedModel(cfg, model, schedule, params, step, mesh)
