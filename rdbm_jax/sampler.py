"""The sampler: full-resolution restoration with the compiled reverse loop (`sde.sample`, Eq. 19).

Reflect-pads to the UNet's factor, shards the batch over devices, runs the loop, crops back.

Large images can be restored in overlapping tiles: at every reverse step the network runs on each
tile and the predictions are blended with linear ramps over the overlaps, so seams stay consistent
through the whole trajectory (the state x_t is never split).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rdbm_jax import conditioning, sde
from rdbm_jax.runtime import distributed, memory
from rdbm_jax.errors import ConfigError, DataError

log = logging.getLogger("rdbm_jax")

MIN_SIDE = 8  # smaller images cannot be reflect-padded meaningfully


def pad_amounts(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Bottom/right padding that makes (H, W) multiples of `multiple`."""
    return (-height) % multiple, (-width) % multiple


def check_size(height: int, width: int, name: str = "image") -> None:
    """Reject images too small to restore with a one-line DataError naming them."""
    if min(height, width) < MIN_SIDE:
        raise DataError(
            f"{name}: {height}x{width} is too small to restore (minimum {MIN_SIDE}x{MIN_SIDE})")


def memory_budget() -> int:
    """Bytes a restoration may use on a device (`memory.device_budget`; tests patch this)."""
    return memory.device_budget()


def check_model_range(mu: np.ndarray) -> None:
    """Refuse (DataError) μ that is not finite or outside [-1, 1]: the network would return white,
    black, or NaN spread over the whole image, silently."""
    if not np.all(np.isfinite(mu)):
        raise DataError("input images hold NaN or infinite values (they must be finite)")
    tol = 1e-5  # rounding of [0, 1] → [-1, 1]
    if mu.size and (mu.min() < -1.0 - tol or mu.max() > 1.0 + tol):
        raise DataError(f"input images span [{mu.min():g}, {mu.max():g}] in model units; they must "
                        "lie in [-1, 1] (0..1 images scaled by 2x − 1)")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size) with at least `overlap` shared."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    # The last tile is flush with the far edge (overlapping its neighbour by at least `overlap`)
    # rather than running past it: every tile has the compiled shape and needs no padding.
    return starts + [size - tile]


def blend_window(tile: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D tile weights: 1 inside; on a side shared with a neighbour, 0 for the outer overlap/4
    pixels, then a linear ramp up to 1 at 3/4 of the overlap. Sides on the image border keep weight
    1."""
    w = np.ones(tile, np.float32)
    # Pixels next to a tile's cut see padding instead of image inside the network's receptive field:
    # the outer quarter of the overlap gets no weight, the neighbour's interior covers it.
    margin = overlap // 4
    # max(·, 1) keeps a tiny overlap (< 2) from dividing by 0.
    ramp = np.clip(
        (np.arange(overlap, dtype=np.float32) + 0.5 - margin) / max(overlap - 2 * margin, 1), 0, 1)
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
    weights = np.stack([
        np.outer(blend_window(th, overlap, y > 0, y + th < height),
                 blend_window(tw, overlap, x > 0, x + tw < width)) for y, x in offsets
    ])
    norm = np.zeros((height, width), np.float32)
    for (y, x), w in zip(offsets, weights):
        norm[y:y + th, x:x + tw] += w
    # Every pixel needs some weight, or the division below would be 0/0 there.
    assert norm.min() > 0, "tiles do not cover the image"
    weights = jnp.asarray(weights[:, None, :, :, None])
    norm = jnp.asarray(norm[None, :, :, None])

    def fn(x_t: jax.Array, mu: jax.Array, t: jax.Array) -> jax.Array:
        def one(args):
            off, w = args
            crop = lambda a: jax.lax.dynamic_slice(a, (0, off[0], off[1], 0),
                                                   (a.shape[0], th, tw, a.shape[3]))
            # Accumulate in float32 even for a bfloat16 network: the weighted sum is renormalised.
            return denoise_fn(crop(x_t), crop(mu), t).astype(jnp.float32) * w

        outs = jax.lax.map(one,
                           (jnp.asarray(offsets), weights))  # one tile at a time: bounded memory
        acc = jnp.zeros(x_t.shape[:3] + (outs.shape[-1],), jnp.float32)
        for i, (y, x) in enumerate(offsets):
            acc = acc.at[:, y:y + th, x:x + tw].add(outs[i])
        return acc / norm

    return fn


Rho = tuple[tuple[str, float], ...]  # ρ per task name, sorted by name (hashable)


def lookup_rho(table: Rho, task: str | None, key: str) -> float:
    """ρ of `task` in `table` (None, or a task the table lacks: the one value every task shares);
    ρ resolved nowhere else. 1.0 for an empty table (nothing reads ρ)."""
    if not table:
        return 1.0
    values = dict(table)
    if task is not None and task in values:
        return values[task]
    shared = set(values.values())
    if len(shared) == 1:
        return shared.pop()
    raise ConfigError(f"{key}: no ρ for task {task!r} (per-task values {values}); restore with the "
                      "task named, or give one value")


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Everything a Sampler reads besides the network, its schedule and devices (frozen and
    hashable: the compiled loops are cached on it). `program.sampling_spec` builds it from a
    config; tests and benchmarks may build one by hand."""

    num_steps: int  # the NFE
    rule: sde.X0Rule = sde.X0Rule()  # parameterisation, π, condition, fusion, clip
    eta: float = 0.0
    first_step_eta: float = 0.0  # the η of the first step only (`sde.sample`)
    # ρ per task of precond and of fusion (`program.rho_table`); () when neither reads one
    rho: Rho = ()
    # ρ per task of the skip estimate's prior (bridge.sigma_data; the per-step diagnostic)
    prior_rho: Rho = ()
    tile_size: int = 0
    tile_overlap: int = 32
    auto_tile: bool = True
    hole_threshold: float = conditioning.HOLE_THRESHOLD  # holes inferred when no mask is given

    def rho_of(self, task: str | None = None) -> float:
        """ρ of `task` for precond (bridge.sigma_data) or fusion (sample.fuse_sigma, else
        bridge.sigma_data); 1.0 when neither reads one."""
        precond = sde.PARAMETERIZATIONS[self.rule.parameterization].needs_rho
        key = "bridge.sigma_data" if precond else "sample.fuse_sigma (or bridge.sigma_data)"
        return lookup_rho(self.rho, task, key)

    def prior_of(self, task: str | None = None) -> float:
        """ρ of the skip estimate's prior for `task` (bridge.sigma_data)."""
        return lookup_rho(self.prior_rho, task, "bridge.sigma_data")


class Sampler:
    """Restores batches of degraded images μ in [-1, 1] with a trained network, sharded over
    devices."""

    def __init__(self, apply_fn: Callable[..., jax.Array], schedule: Any, spec: SamplingSpec, *,
                 multiple: int, mesh: Mesh | None = None):
        conditioning.check_condition(spec.rule.condition)
        self.spec = spec
        self.apply_fn = apply_fn
        self.schedule = schedule
        self.multiple = multiple
        self.mesh = mesh or distributed.make_mesh()
        self._jits: dict[int, Callable] = {}  # tile size (0 = whole image) → jitted reverse loop
        self._compiled: dict[tuple, tuple[Any, int]] = {}  # (tile, shape) → (executable, bytes)
        self._plan: dict[tuple, int] = {}  # batch shape → the tile size it runs with

    # The spec's fields the callers read (export, the API, the evaluation layer).
    rule = property(lambda self: self.spec.rule, doc="how an output becomes x̂0 (`sde.X0Rule`)")
    num_steps = property(lambda self: self.spec.num_steps, doc="the NFE")
    eta = property(lambda self: self.spec.eta, doc="η of every step")
    clip = property(lambda self: self.spec.rule.clip, doc="x̂0 clipped to [−1, 1]")
    condition = property(lambda self: self.spec.rule.condition, doc="model.condition")
    uses_mask = property(lambda self: self.spec.rule.uses_mask, doc="the network reads the mask")
    tile_size = property(lambda self: self.spec.tile_size, doc="sample.tile_size")
    tile_overlap = property(lambda self: self.spec.tile_overlap, doc="sample.tile_overlap")

    @property
    def draws_noise(self) -> bool:
        """Whether the reverse loop draws noise (η > 0, a first-step η, IR-SDE's noisy start), so
        that its key changes the result."""
        return self.eta > 0 or self.spec.first_step_eta > 0 or self.schedule.preset == "irsde"

    def rho(self, task: str | None = None) -> float:
        """ρ of `task` (`SamplingSpec.rho_of`)."""
        return self.spec.rho_of(task)

    def sample_padded(self, params: Any, mu: jax.Array, mask: jax.Array, rng: jax.Array,
                      rho: jax.Array | float | None = None,
                      tile_size: int | None = None) -> jax.Array:
        """The reverse loop on a batch whose H, W are multiples of `multiple` (traceable): the
        network's condition and output offset, tiles (`tile_size`, None: the sampler's), and
        x̂0 = μ outside the mask for mask models. `rho`: precond's ρ, scalar or [B] (default
        `self.rho()`); mask models read ρ · mask (ρ = 0 where x0 = μ is known, so x̂0 = μ there:
        mask-aware preconditioning)."""
        tile = self.tile_size if tile_size is None else tile_size
        rho = jnp.asarray(self.rho() if rho is None else rho, jnp.float32)
        rho = rho.reshape(rho.shape + (1,) * (mu.ndim - rho.ndim)) if rho.ndim else rho
        rule = self.rule
        cond, rho, known = rule.prepare(mu, mask, rho)
        denoise = rule.network(lambda x_in, c, t: self.apply_fn(params, x_in, c, t))
        if tile:
            denoise = tiled(denoise, mu.shape[1], mu.shape[2], tile, self.tile_overlap)
        return sde.sample(lambda x_in, _, t: denoise(x_in, cond, t), self.schedule, mu,
                          self.num_steps, rng, eta=self.eta, clip=rule.clip,
                          parameterization=rule.parameterization, pi=rule.pi, known=known,
                          sigma_data=rho, first_step_eta=self.spec.first_step_eta,
                          fuse=rule.fuse)

    def jit(self, tile: int) -> Callable:
        """`sample_padded` with tiles of `tile` (0: none) under jit, sharded over the mesh."""
        if tile not in self._jits:
            sharding = distributed.batch_sharding(self.mesh)
            repl = distributed.replicated(self.mesh)
            self._jits[tile] = jax.jit(functools.partial(self.sample_padded, tile_size=tile),
                                       in_shardings=(repl, sharding, sharding, repl, sharding),
                                       out_shardings=sharding)
        return self._jits[tile]

    @property
    def jitted(self) -> Callable:
        """The reverse loop with the configured tiles, jitted (compiled once per batch shape)."""
        return self.jit(self.tile_size)

    def _compile(self, tile: int, args: tuple) -> tuple[Any, int]:
        """(executable, bytes it needs per device) of the loop with tiles of `tile` for `args`."""
        key = (tile, args[1].shape)
        if key not in self._compiled:
            compiled = self.jit(tile).lower(*args).compile()
            self._compiled[key] = (compiled, memory.needed_bytes(compiled))
        return self._compiled[key]

    def _tile_candidates(self, height: int, width: int) -> list[int]:
        """Tile sizes to try when the whole image does not fit: halving from half the long side,
        multiples of the UNet's factor, larger than twice the overlap."""
        out, t = [], max(height, width) // 2
        while True:
            t -= t % self.multiple  # the UNet needs multiples of its factor
            # A tile of at most twice the overlap would advance by ≤ overlap (no progress).
            if t <= max(2 * self.tile_overlap, self.multiple - 1):
                return out
            out.append(t)
            t //= 2

    def executable(self, args: tuple) -> Any:
        """The compiled loop for `args` (params, μ, mask, key): with the configured tiles when its
        predicted memory (XLA's analysis of the compiled program) fits the device, else with the
        largest tiles that fit (`sample.auto_tile`, one info line), else a one-line ConfigError."""
        shape = args[1].shape
        if shape in self._plan:
            return self._compile(self._plan[shape], args)[0]
        budget = memory_budget()
        compiled, need = self._compile(self.tile_size, args)
        tile = self.tile_size
        if distributed.any_process(need > budget):  # every process picks the same tiles
            what = (f"restoring a batch of {shape[0]} image(s) of {shape[1]}x{shape[2]} (padded) "
                    f"{f'in tiles of {tile} ' if tile else ''}needs ~{memory.gib(need)}, over "
                    f"the {memory.gib(budget)} available")
            if not self.spec.auto_tile:
                raise ConfigError(f"{what}; set sample.tile_size (tile_size= in the API) to "
                                  "restore in tiles, or sample.auto_tile=True")
            tiles = [t for t in self._tile_candidates(shape[1], shape[2]) if t < (tile or t + 1)]
            for tile in tiles:
                compiled, need = self._compile(tile, args)
                if not distributed.any_process(need > budget):
                    break
            else:
                tried = f", and so do tiles down to {tiles[-1]} px" if tiles else ""
                raise ConfigError(f"{what}{tried}; lower sample.batch_size or sample.tile_overlap, "
                                  "or use a device with more memory")
            log.info("%s: restoring in tiles of %d px (sample.tile_size; ~%s)", what, tile,
                     memory.gib(need))
        self._plan[shape] = tile
        return compiled

    def device_args(self, params: Any, mu: np.ndarray, rng: jax.Array,
                    mask: np.ndarray | None = None, task: str | None = None) -> tuple:
        """(params, μ, mask, key, ρ) of a batch [B, H, W, 3] as the compiled loop takes them:
        checked, padded to the UNet's multiple and the device count, sharded over the mesh (the
        arguments of `executable`; `__call__` documents `mask` and `task`)."""
        mu = np.asarray(mu, np.float32)
        b, h, w, _ = mu.shape
        check_size(h, w)
        check_model_range(mu)
        if mask is None:
            mask = (conditioning.infer_mask(mu, self.spec.hole_threshold) if self.uses_mask
                    else np.ones((b, h, w, 1), np.float32))
        mask = np.asarray(mask, np.float32).reshape(b, h, w, 1)
        sharding = distributed.batch_sharding(self.mesh)
        ph, pw = pad_amounts(h, w, self.multiple)

        def global_array(x: np.ndarray) -> jax.Array:
            # Mirror padding, not zeros: a zero border would be a false edge for the network
            # (reflect while each pad is shorter than its side, else symmetric); cropped after.
            x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if ph < h and pw < w
                       else "symmetric")
            # The batch is padded to a multiple of the devices with copies of the last image (a
            # valid input for every model); the copies are cut off after the loop.
            x = np.pad(x, ((0, (-b) % self.mesh.size), (0, 0), (0, 0), (0, 0)), mode="edge")
            # Every process passes the same full batch; each device takes its slice of it.
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

        # The executable takes exactly its compiled shardings: the key is made a replicated global
        # array as μ is (every process passes the same value), the params moved if they are not.
        repl = distributed.replicated(self.mesh)
        key = np.asarray(rng)
        rho = np.full((b + (-b) % self.mesh.size, 1, 1, 1), self.rho(task), np.float32)
        return (jax.device_put(params, repl), global_array(mu), global_array(mask),
                jax.make_array_from_callback(key.shape, repl, lambda idx: key[idx]),
                jax.make_array_from_callback(rho.shape, sharding, lambda idx: rho[idx]))

    def __call__(self, params: Any, mu: np.ndarray, rng: jax.Array,
                 mask: np.ndarray | None = None, task: str | None = None) -> np.ndarray:
        """Restore a batch [B, H, W, 3] of one size; returns x̂0 [B, H, W, 3] in [-1, 1] (numpy).

        `mask` [B, H, W, 1] (1 where μ may differ from x0) is read by mask-conditioned models only;
        when they get none it is inferred from the white fill (`conditioning.infer_mask`).
        `task`: the images' task, for a per-task ρ (bridge.sigma_data) of the precond
        parameterisation.
        """
        b, h, w, _ = np.shape(mu)
        args = self.device_args(params, mu, rng, mask, task)
        try:
            out = self.executable(args)(*args)
        except Exception as e:  # noqa: BLE001 — XLA's allocation failure, re-raised otherwise
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            raise DataError(f"out of memory restoring {b} image(s) of {h}x{w}: set a smaller "
                            "sample.tile_size (tile_size= in the API) or sample.batch_size"
                            ) from None
        return distributed.to_host(out)[:b, :h, :w]
