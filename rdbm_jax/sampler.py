"""The sampler: full-resolution restoration with the compiled reverse loop (`sde.sample`, Eq. 19).

Reflect-pads to the UNet's factor, shards the batch over devices, runs the loop, crops back.

Large images can be restored in overlapping tiles: at every reverse step the network runs on each
tile and the predictions are blended with linear ramps over the overlaps, so seams stay consistent
through the whole trajectory (the state x_t is never split).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rdbm_jax import conditioning, distributed, sde
from rdbm_jax.errors import ConfigError, DataError

MIN_SIDE = 8  # smaller images cannot be reflect-padded meaningfully


def pad_amounts(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Bottom/right padding that makes (H, W) multiples of `multiple`."""
    return (-height) % multiple, (-width) % multiple


def check_size(height: int, width: int, name: str = "image") -> None:
    """Reject images too small to restore with a one-line DataError naming them."""
    if min(height, width) < MIN_SIDE:
        raise DataError(f"{name}: {height}x{width} is too small to restore (minimum {MIN_SIDE}x{MIN_SIDE})")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size) with at least `overlap` shared."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def blend_window(tile: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D tile weights: 1 inside; on a side shared with a neighbour, 0 for the outer overlap/4 pixels,
    then a linear ramp up to 1 at 3/4 of the overlap. Sides on the image border keep weight 1."""
    w = np.ones(tile, np.float32)
    margin = overlap // 4
    ramp = np.clip((np.arange(overlap, dtype=np.float32) + 0.5 - margin) / max(overlap - 2 * margin, 1), 0, 1)
    if ramp_start and overlap:
        w[:overlap] = ramp
    if ramp_end and overlap:
        w[tile - overlap:] = np.minimum(w[tile - overlap:], ramp[::-1])
    return w


def tiled(denoise_fn: Callable, height: int, width: int, tile: int, overlap: int) -> Callable:
    """Wrap denoise_fn(x_t, mu, t) so it runs tile by tile (lax.map) and blends the outputs.

    Exact (to rounding) for a network whose receptive field radius is at most overlap/4: no pixel
    takes weight from a tile's prediction within overlap/4 of an internal tile edge. The UNet's
    GroupNorm and attention see the whole input, so for it tiling is an approximation.
    """
    th, tw = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    if len(ys) * len(xs) == 1:
        return denoise_fn
    offsets = np.array([(y, x) for y in ys for x in xs], np.int32)
    weights = np.stack([np.outer(blend_window(th, overlap, y > 0, y + th < height),
                                 blend_window(tw, overlap, x > 0, x + tw < width)) for y, x in offsets])
    norm = np.zeros((height, width), np.float32)
    for (y, x), w in zip(offsets, weights):
        norm[y:y + th, x:x + tw] += w
    assert norm.min() > 0, "tiles do not cover the image"
    weights, norm = jnp.asarray(weights[:, None, :, :, None]), jnp.asarray(norm[None, :, :, None])

    def fn(x_t: jax.Array, mu: jax.Array, t: jax.Array) -> jax.Array:
        def one(args):
            off, w = args
            crop = lambda a: jax.lax.dynamic_slice(a, (0, off[0], off[1], 0), (a.shape[0], th, tw, a.shape[3]))
            return denoise_fn(crop(x_t), crop(mu), t).astype(jnp.float32) * w

        outs = jax.lax.map(one, (jnp.asarray(offsets), weights))  # one tile at a time: bounded memory
        acc = jnp.zeros(x_t.shape[:3] + (outs.shape[-1],), jnp.float32)
        for i, (y, x) in enumerate(offsets):
            acc = acc.at[:, y:y + th, x:x + tw].add(outs[i])
        return acc / norm

    return fn


class Sampler:
    """Restores batches of degraded images μ in [-1, 1] with a trained network, sharded over devices."""

    def __init__(self, apply_fn: Callable[..., jax.Array], schedule: Any, *, num_steps: int,
                 multiple: int, mesh: Mesh | None = None, eta: float = 0.0, clip: bool = True,
                 parameterization: str = "x0", pi: str | None = None, tile_size: int = 0,
                 tile_overlap: int = 32, condition: str = "mu",
                 sigma_data: dict[str, float] | None = None,
                 first_step_eta: float = 0.0):
        conditioning.check_condition(condition)
        # ρ of the precond parameterisation per task name (program.sigma_data_values); others ignore it.
        self.sigma_data, self.first_step_eta = dict(sigma_data or {}), first_step_eta
        self.apply_fn, self.schedule, self.num_steps = apply_fn, schedule, num_steps
        self.condition, self.uses_mask = condition, conditioning.uses_mask(condition)
        self.multiple, self.mesh = multiple, mesh or distributed.make_mesh()
        self.eta, self.clip, self.parameterization, self.pi = eta, clip, parameterization, pi
        if tile_size and tile_size % multiple:
            raise ConfigError(f"sample.tile_size={tile_size} must be a multiple of {multiple} "
                              "(the UNet's downsampling factor)")
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self._jitted: Callable | None = None

    def rho(self, task: str | None = None) -> float:
        """ρ (bridge.sigma_data) of `task`; None: the one value every task shares (1.0 when unused)."""
        if self.parameterization != "precond":
            return 1.0
        if task is not None and task in self.sigma_data:
            return self.sigma_data[task]
        values = set(self.sigma_data.values())
        if task is None and len(values) == 1:
            return values.pop()
        raise ConfigError(f"bridge.sigma_data: no ρ for task {task!r} (per-task values "
                          f"{self.sigma_data}); restore with the task named, or give one value")

    def sample_padded(self, params: Any, mu: jax.Array, mask: jax.Array, rng: jax.Array,
                      rho: jax.Array | float | None = None) -> jax.Array:
        """The reverse loop on a batch whose H, W are multiples of `multiple` (traceable): the
        network's condition and output offset, tiles, and x̂0 = μ outside the mask for mask models.
        `rho`: precond's ρ, scalar or [B] (default `self.rho()`); mask models read ρ · mask (ρ = 0
        where x0 = μ is known, so x̂0 = μ there: mask-aware preconditioning)."""
        cond = conditioning.condition(mu, mask, self.condition)
        rho = jnp.asarray(self.rho() if rho is None else rho, jnp.float32)
        rho = rho.reshape(rho.shape + (1,) * (mu.ndim - rho.ndim)) if rho.ndim else rho
        if self.uses_mask:
            rho = rho * mask
        denoise = lambda x_t, c, t: self.apply_fn(params, x_t, c, t) + conditioning.output_offset(
            c, self.condition, self.parameterization)
        if self.tile_size:
            denoise = tiled(denoise, mu.shape[1], mu.shape[2], self.tile_size, self.tile_overlap)
        known = 1.0 - mask if self.uses_mask else None
        return sde.sample(lambda x_t, _, t: denoise(x_t, cond, t), self.schedule, mu, self.num_steps, rng,
                          eta=self.eta, clip=self.clip, parameterization=self.parameterization, pi=self.pi,
                          known=known, sigma_data=rho, first_step_eta=self.first_step_eta)

    @property
    def jitted(self) -> Callable:
        """`sample_padded` under jit, sharded over the mesh (jax compiles it once per batch shape)."""
        if self._jitted is None:
            sharding, repl = distributed.batch_sharding(self.mesh), distributed.replicated(self.mesh)
            self._jitted = jax.jit(self.sample_padded,
                                   in_shardings=(repl, sharding, sharding, repl, sharding),
                                   out_shardings=sharding)
        return self._jitted

    def __call__(self, params: Any, mu: np.ndarray, rng: jax.Array,
                 mask: np.ndarray | None = None, task: str | None = None) -> np.ndarray:
        """Restore a batch [B, H, W, 3] of one size; returns x̂0 [B, H, W, 3] in [-1, 1] (numpy).

        `mask` [B, H, W, 1] (1 where μ may differ from x0) is read by mask-conditioned models only;
        when they get none it is inferred from the pure-fill pixels (`conditioning.infer_mask`).
        `task`: the images' task, for a per-task ρ (bridge.sigma_data) of the precond parameterisation.
        """
        mu = np.asarray(mu, np.float32)
        b, h, w, _ = mu.shape
        check_size(h, w)
        if mask is None:
            mask = conditioning.infer_mask(mu) if self.uses_mask else np.ones((b, h, w, 1), np.float32)
        mask = np.asarray(mask, np.float32).reshape(b, h, w, 1)
        sharding = distributed.batch_sharding(self.mesh)
        ph, pw = pad_amounts(h, w, self.multiple)

        def global_array(x: np.ndarray) -> jax.Array:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if ph < h and pw < w
                       else "symmetric")
            x = np.pad(x, ((0, (-b) % self.mesh.size), (0, 0), (0, 0), (0, 0)), mode="edge")
            # Every process passes the same full batch; each device takes its slice of it.
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

        mu_global = global_array(mu)
        rho = np.full((b + (-b) % self.mesh.size, 1, 1, 1), self.rho(task), np.float32)
        rho = jax.make_array_from_callback(rho.shape, sharding, lambda idx: rho[idx])
        out = self.jitted(params, mu_global, global_array(mask), rng, rho)
        return distributed.to_host(out)[:b, :h, :w]
