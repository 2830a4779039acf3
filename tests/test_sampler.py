"""Full-resolution restoration: padding/cropping, size checks, tiling, device sharding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import config as config_lib, sde
from rdbm_jax.errors import ConfigError, DataError
from rdbm_jax.sampler import Sampler, SamplingSpec, pad_amounts, tile_starts, tiled
from tests.helpers import config

SCHEDULE = sde.make_schedule(100)


def local_apply(params, x_t, mu, t):
    """A denoiser with receptive-field radius 1: a 3×3 mean of x_t and μ (zero padding), plus t."""
    k = jnp.full((3, 3, 1, 1), 1.0 / 9.0, jnp.float32)
    blur = lambda a: jax.lax.conv_general_dilated(a[..., c:c + 1], k, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = []
    for c in range(3):
        out.append(blur(x_t) * 0.5 + blur(mu) * params + t[:, None, None, None] * 1e-3)
    return jnp.concatenate(out, axis=-1)


def test_pad_amounts_and_tile_starts_cover():
    assert pad_amounts(427, 640, 16) == (5, 0)
    for size, tile, overlap in [(100, 32, 8), (64, 64, 8), (33, 16, 4), (20, 32, 8)]:
        starts = tile_starts(size, min(tile, size), overlap)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + min(tile, size)] = True
        assert covered.all() and starts[-1] + min(tile, size) == size
        assert all(b - a <= min(tile, size) - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("height, width", [(27, 45), (427, 640)])
def test_odd_sizes_are_padded_and_cropped_back(height, width):
    restorer = Sampler(lambda p, x, m, t: jnp.tanh(2 * m), SCHEDULE, SamplingSpec(3), multiple=16)
    mu = np.random.default_rng(0).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
    out = restorer(None, mu, jax.random.PRNGKey(0))
    assert out.shape == mu.shape
    # x0-parameterisation: the last step returns the (clipped) x̂0 = tanh(2 μ) of the cropped area.
    np.testing.assert_allclose(out, np.tanh(2 * mu), atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (7, 64)])
def test_too_small_images_rejected(shape):
    restorer = Sampler(lambda p, x, m, t: m, SCHEDULE, SamplingSpec(2), multiple=16)
    with pytest.raises(DataError, match="too small"):
        restorer(None, np.zeros((1, *shape, 3), np.float32), jax.random.PRNGKey(0))


def test_tiled_denoiser_equals_untiled_for_local_network():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 48, 80, 3)), jnp.float32)
    mu = jnp.asarray(rng.normal(size=(2, 48, 80, 3)), jnp.float32)
    t = jnp.array([5, 7])
    full = local_apply(0.3, x, mu, t)
    # radius 1 ≤ 8/4
    fn = tiled(lambda a, b, c: local_apply(0.3, a, b, c), 48, 80, tile=32, overlap=8)
    np.testing.assert_allclose(fn(x, mu, t), full, atol=1e-5)


def test_tiled_restoration_equals_untiled_for_local_network():
    mu = np.random.default_rng(2).uniform(-1, 1, (1, 70, 90, 3)).astype(np.float32)
    plain = Sampler(local_apply, SCHEDULE, SamplingSpec(5), multiple=8)
    tiles = Sampler(local_apply, SCHEDULE, SamplingSpec(5, tile_size=32, tile_overlap=8),
                    multiple=8)
    a, b = plain(0.5, mu, jax.random.PRNGKey(0)), tiles(0.5, mu, jax.random.PRNGKey(0))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tiling_with_too_little_overlap_differs():
    """The exactness above is not vacuous: overlap/4 smaller than the receptive field breaks it."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(1, 48, 48, 3)), jnp.float32)
    # margin 0 < 1
    fn = tiled(lambda a, b, c: local_apply(0.3, a, b, c), 48, 48, tile=32, overlap=2)
    assert float(jnp.abs(fn(x, x, jnp.array([3]))
                         - local_apply(0.3, x, x, jnp.array([3]))).max()) > 1e-3


def test_tile_size_must_be_multiple_of_downsampling():
    cfg = config(**{"sample.tile_size": 36, "sample.tile_overlap": 4})  # the T UNet's factor is 8
    with pytest.raises(ConfigError, match=r"^sample\.tile_size=36 must be a multiple of 8"):
        config_lib.validate(cfg)  # a config problem, not a data one
