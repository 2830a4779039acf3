"""Memory predicted before anything runs: an image whose restoration would not fit is tiled
automatically (one line saying so) or refused in one line naming sample.tile_size; a training batch
whose host buffers would not fit is refused in one line naming train.batch_size."""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import api, conditioning, sampler as sampler_lib, sde, train
from rdbm_jax.errors import ConfigError
from rdbm_jax.runtime import memory
from tests.helpers import config


# --- memory predicted before running; tiles chosen automatically or one line ----------------------

def test_an_image_predicted_not_to_fit_is_tiled_automatically_or_refused_in_one_line(
        trained_workdir, monkeypatch, caplog):
    model = api.load(trained_workdir)
    rule = sde.X0Rule(condition=model.config.model.condition)
    spec = sampler_lib.SamplingSpec(2, rule, tile_overlap=4, auto_tile=False)
    s = sampler_lib.Sampler(model.sampler().apply_fn, model.schedule, spec,
                            multiple=model.multiple)
    mu = np.zeros((1, 64, 64, 3), np.float32)
    # The whole image's need, from XLA's analysis of its compiled loop; the budget just under it.
    args = (model.params, mu, np.ones((1, 64, 64, 1), np.float32), np.zeros(2, np.uint32),
            np.ones((1, 1, 1, 1), np.float32))  # (params, μ, mask, key, precond's ρ per image)
    whole = s._compile(0, args)[1]
    assert whole > 0
    monkeypatch.setattr(sampler_lib, "memory_budget", lambda: whole - 1)
    with pytest.raises(ConfigError, match=r"64x64 .*needs ~.* GiB, over the .* GiB available; "
                                          r"set sample.tile_size"):
        s(model.params, mu, np.zeros(2, np.uint32))
    s = sampler_lib.Sampler(s.apply_fn, model.schedule, dataclasses.replace(spec, auto_tile=True),
                            multiple=model.multiple)
    with caplog.at_level(logging.INFO, logger="rdbm_jax"):
        out = s(model.params, mu, np.zeros(2, np.uint32))
    assert out.shape == mu.shape and np.all(np.isfinite(out))
    lines = [r.getMessage() for r in caplog.records if "restoring in tiles of" in r.getMessage()]
    assert len(lines) == 1 and "tiles of 32 px (sample.tile_size" in lines[0], lines


# --- a huge train.batch_size is one line ----------------------------------------------------------

def test_a_batch_too_large_for_memory_is_one_line_before_anything_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "host_available", lambda: 2**30)
    monkeypatch.setattr(train.data, "build_train_iterator", lambda *a, **k: pytest.fail("built"))
    cfg = config(**{"train.batch_size": 100_000})
    with pytest.raises(ConfigError, match=r"^train.batch_size=100000: .* need ~.* GiB of host "
                                          r"memory, "
                                          r"1.00 GiB is available; lower train.batch_size"):
        train.train_and_evaluate(cfg, str(tmp_path / "run"))


# --- the pre-fills at 4K: memory linear in the pixels, a fixed number of image-sized buffers -----

def _fill_temp_images(kind: str, height: int, width: int) -> float:
    """XLA's temporary bytes of pre-fill `kind` on one RGB image, in units of that image."""
    mu = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, height, width, 1), jnp.float32)
    compiled = jax.jit(conditioning.PREFILLS[kind]).lower(mu, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes / (height * width * 3 * 4)


def test_the_prefills_at_4k_need_a_fixed_number_of_image_sized_buffers():
    """The fill is computed on the whole image even when the network runs in tiles, so its buffers
    must stay a constant multiple of the image. The bound counts what the biharmonic solve keeps
    live: conjugate gradients' x, r, p and A·p, the hole mask broadcast to RGB, two nested 5-point
    Laplacians with their edge-padded copies, and the harmonic start with its pull-push pyramid
    (4/3 of an image for sums, 4/9 for weights): 4 + 1 + 4 + 2 = 11 images, plus 5 of slack for
    the compiler's choices of what to fuse (measured 13.0 on x86 XLA: 1.3 GB at 4K)."""
    for kind in conditioning.PREFILLS:
        assert _fill_temp_images(kind, 2160, 3840) <= 16.0, kind
    # linear in the pixels: the demo's fill at 4K takes the same multiple as at a sixteenth of it
    small, large = (_fill_temp_images("mu_mask_mixfill", h, w) for h, w in ((540, 960),
                                                                             (2160, 3840)))
    assert large == pytest.approx(small, rel=0.02)
