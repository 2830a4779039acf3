"""`--mode=export`: the whole restoration (network, weights, the NFE-step reverse loop) as one
`jax.export` artifact, shape-polymorphic in batch, H and W, for CPU and CUDA.

Writes `workdir/export/restorer.jax` (serialized StableHLO), `restorer.json` (what it is) and
`export_loader.py` (the loader; needs only jax + numpy, and flatbuffers for jax.export's reader).
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax import export

from rdbm_jax import config as config_lib, inference, program
from rdbm_jax.runtime import distributed, paths, strict_json
from rdbm_jax.errors import ConfigError
from rdbm_jax.sampler import MIN_SIDE, Sampler

log = logging.getLogger("rdbm_jax")

PLATFORMS = ("cpu", "cuda")
ARTIFACT = "restorer.jax"
METADATA = "restorer.json"  # what the artifact is; `artifact_sha256` ties the two together


def reflect_pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
    """Reflect-pad H, W (bottom/right) up to multiples of `multiple`; works for symbolic shapes.

    The same pixels as `np.pad(mode="reflect")` in sampler.Sampler (for H, W >= multiple):
    padded row i < H is row i, row i >= H is row 2(H − 1) − i.
    """
    def index(n):
        i = jnp.arange(multiple * ((n + multiple - 1) // multiple))  # ceil to the multiple
        return jnp.where(i < n, i, 2 * n - 2 - i)

    return jnp.take(jnp.take(x, index(x.shape[1]), axis=1), index(x.shape[2]), axis=2)


def restoration_fn(sampler: Sampler,
                   params: Any) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """(μ [B, H, W, 3] in [-1, 1], mask [B, H, W, 1] (1 = degraded; read by mask-conditioned models
    only), key uint32 [2]) → x̂0, with the sampler's settings and `params` baked in."""
    if sampler.tile_size:
        raise ConfigError(
            f"sample.tile_size={sampler.tile_size}: tiles depend on the image size, so "
            "--mode=export writes untiled restorers (set --config.sample.tile_size=0)")

    def restore(mu, mask, key):
        h, w = mu.shape[1], mu.shape[2]
        pad = lambda x: reflect_pad_to_multiple(x, sampler.multiple)
        return sampler.sample_padded(params, pad(mu), pad(mask), key)[:, :h, :w]

    return restore


def export_restorer(sampler: Sampler, params: Any,
                    platforms: tuple[str, ...] = PLATFORMS) -> export.Exported:
    """jax.export of `restoration_fn` for μ of shape (b, h, w, 3), h, w >= MIN_SIDE, on
    `platforms`."""
    host_params = jax.tree_util.tree_map(distributed.to_host, params)  # constants of the artifact
    b, h, w, _ = export.symbolic_shape(
        "b, h, w, 3", constraints=(f"h >= {MIN_SIDE}", f"w >= {MIN_SIDE}"))
    exporter = export.export(jax.jit(restoration_fn(sampler, host_params)), platforms=platforms)
    return exporter(jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32),
                    jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32),
                    jax.ShapeDtypeStruct((2,), jnp.uint32))


def write_unit(out_dir: str, blob: bytes, info: dict) -> None:
    """restorer.jax, restorer.json and export_loader.py, each atomically. The metadata names the
    artifact's SHA-256, so the three act as one unit: a kill between two renames leaves a pair that
    the loader refuses (mismatched hash), never a new artifact described by old metadata."""
    paths.write_bytes(paths.join(out_dir, ARTIFACT), blob)
    paths.write_text(paths.join(out_dir, METADATA), strict_json.dumps(info, indent=2))
    with open(os.path.join(os.path.dirname(__file__), "export_loader.py"), encoding="utf-8") as f:
        paths.write_text(paths.join(out_dir, "export_loader.py"), f.read())


def run_export(cfg: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode=export`: write workdir/export/{restorer.jax, restorer.json, export_loader.py};
    returns the artifact."""
    config_lib.validate(cfg)
    mesh = distributed.make_mesh()
    trained = inference.load_trained(cfg, workdir, mesh, cfg.sample.checkpoint,
                                   check_saved=config_lib.check_saved)
    params, step = trained.params, trained.step
    sampler = program.build_sampler(cfg, mesh)
    exported = export_restorer(sampler, params)
    out_dir = paths.join(workdir, "export")  # a local folder or an object store
    path = paths.join(out_dir, ARTIFACT)
    if distributed.is_main_process():
        blob = exported.serialize()
        info = {"artifact_sha256": hashlib.sha256(blob).hexdigest(),
                "step": step, "use_ema": cfg.sample.use_ema, "num_steps": sampler.num_steps,
                "eta": sampler.eta, "clip": sampler.clip, "bridge": cfg.bridge.to_dict(),
                "model": cfg.model.to_dict(), "platforms": list(exported.platforms),
                "input": "float32 [B, H, W, 3] in [-1, 1], H, W >= 8 (padded inside to multiples "
                         f"of {sampler.multiple} by reflection), the float32 [B, H, W, 1] "
                         "degradation mask (1 = degraded; read only by mask-conditioned models) "
                         "and a uint32 [2] PRNG key",
                "condition": sampler.condition, "hole_threshold": cfg.sample.hole_threshold,
                "output": "float32 [B, H, W, 3] in [-1, 1]", "jax_version": jax.__version__}
        write_unit(out_dir, blob, info)
        log.info("exported step %d (%s parameters, %d steps, η=%g) for %s: %s (%.1f MB)", step,
                 "EMA" if cfg.sample.use_ema else "raw", sampler.num_steps, sampler.eta,
                 ", ".join(exported.platforms), path, len(blob) / 1e6)
    return path
