"""pytorch-fid's InceptionV3 (the TF FID graph) in Flax: 2048-d pool3 features for FID.

Same computation as `pytorch_fid.inception.InceptionV3(output_blocks=[3])`: images in [0, 1] are
resized to 299x299 (bilinear, align_corners=False, no antialiasing, as `F.interpolate`), mapped to
[-1, 1], and run through torchvision's Inception3 with the FID patches: `FIDInceptionA/C` and
`FIDInceptionE_1` average-pool without counting the zero padding, `FIDInceptionE_2` max-pools;
BatchNorm (eps 1e-3) uses the stored running statistics; the output is the global average pool.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rdbm_jax.evaluation.perceptual import weights

INPUT_SIZE = 299
_HIGHEST = jax.lax.Precision.HIGHEST
Pad = Sequence[tuple[int, int]]


class BasicConv(nn.Module):
    """Conv (no bias) + BatchNorm (running stats, eps 1e-3) + ReLU: torchvision's BasicConv2d."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: Pad = ((0, 0), (0, 0))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                    padding=tuple(self.padding), use_bias=False, precision=_HIGHEST, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _conv(features: int, kernel: int | tuple[int, int] = 1, stride: int = 1,
          pad: int | tuple[int, int] = 0, name: str = "") -> BasicConv:
    """BasicConv with PyTorch-style (kernel, padding) given as ints or (h, w) pairs."""
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    p = (pad, pad) if isinstance(pad, int) else pad
    return BasicConv(features, k, stride, ((p[0], p[0]), (p[1], p[1])), name=name)


def _avg_pool_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool, padding 1, zero padding not counted (TF's, FID patch)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_s2(x: jax.Array) -> jax.Array:
    """3x3 stride-2 max pool without padding."""
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class FIDInceptionA(nn.Module):
    """InceptionA (Mixed_5b/c/d) with the FID average pool."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = _conv(64, name="branch1x1")(x)
        b5 = _conv(64, 5, pad=2, name="branch5x5_2")(_conv(48, name="branch5x5_1")(x))
        b3 = _conv(64, name="branch3x3dbl_1")(x)
        b3 = _conv(96, 3, pad=1, name="branch3x3dbl_2")(b3)
        b3 = _conv(96, 3, pad=1, name="branch3x3dbl_3")(b3)
        bp = _conv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """InceptionB (Mixed_6a), unchanged from torchvision."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv(384, 3, stride=2, name="branch3x3")(x)
        bd = _conv(64, name="branch3x3dbl_1")(x)
        bd = _conv(96, 3, pad=1, name="branch3x3dbl_2")(bd)
        bd = _conv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """InceptionC (Mixed_6b..e) with the FID average pool."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = _conv(192, name="branch1x1")(x)
        b7 = _conv(c7, name="branch7x7_1")(x)
        b7 = _conv(c7, (1, 7), pad=(0, 3), name="branch7x7_2")(b7)
        b7 = _conv(192, (7, 1), pad=(3, 0), name="branch7x7_3")(b7)
        bd = _conv(c7, name="branch7x7dbl_1")(x)
        bd = _conv(c7, (7, 1), pad=(3, 0), name="branch7x7dbl_2")(bd)
        bd = _conv(c7, (1, 7), pad=(0, 3), name="branch7x7dbl_3")(bd)
        bd = _conv(c7, (7, 1), pad=(3, 0), name="branch7x7dbl_4")(bd)
        bd = _conv(192, (1, 7), pad=(0, 3), name="branch7x7dbl_5")(bd)
        bp = _conv(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """InceptionD (Mixed_7a), unchanged from torchvision."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv(320, 3, stride=2, name="branch3x3_2")(_conv(192, name="branch3x3_1")(x))
        b7 = _conv(192, name="branch7x7x3_1")(x)
        b7 = _conv(192, (1, 7), pad=(0, 3), name="branch7x7x3_2")(b7)
        b7 = _conv(192, (7, 1), pad=(3, 0), name="branch7x7x3_3")(b7)
        b7 = _conv(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """InceptionE: Mixed_7b (`max_pool=False`: FID average pool) / Mixed_7c (max pool, FID
    quirk)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = _conv(320, name="branch1x1")(x)
        b3 = _conv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([_conv(384, (1, 3), pad=(0, 1), name="branch3x3_2a")(b3),
                              _conv(384, (3, 1), pad=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = _conv(448, name="branch3x3dbl_1")(x)
        bd = _conv(384, 3, pad=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([_conv(384, (1, 3), pad=(0, 1), name="branch3x3dbl_3a")(bd),
                              _conv(384, (3, 1), pad=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_same(x)
        bp = _conv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


@functools.lru_cache(maxsize=None)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's bilinear resize (align_corners=False, no antialias)."""
    scale = np.float32(n_in) / np.float32(n_out)  # float32, as PyTorch's CPU kernel
    # src = scale * (dst + 0.5) - 0.5, rounded once to float32 (a fused multiply-add, as PyTorch)
    src = np.float32(np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m


def resize_bilinear(x: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """Resize [B, H, W, C] to [B, size, size, C] as `F.interpolate(mode="bilinear")` (identity if
    equal)."""
    h, w = x.shape[1], x.shape[2]
    if h != size:
        x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(resize_matrix(h, size)), x, precision=_HIGHEST)
    if w != size:
        x = jnp.einsum("ow,bhwc->bhoc", jnp.asarray(resize_matrix(w, size)), x, precision=_HIGHEST)
    return x


class FIDInceptionV3(nn.Module):
    """Pool3 features [B, 2048] of the FID Inception for images [B, H, W, 3] in [0, 1]."""

    resize_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x)
        x = 2.0 * x - 1.0
        x = _conv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = _conv(32, 3, name="Conv2d_2a_3x3")(x)
        x = _conv(64, 3, pad=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_s2(x)
        x = _conv(80, 1, name="Conv2d_3b_1x1")(x)
        x = _conv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_s2(x)
        x = FIDInceptionA(32, name="Mixed_5b")(x)
        x = FIDInceptionA(64, name="Mixed_5c")(x)
        x = FIDInceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = FIDInceptionC(128, name="Mixed_6b")(x)
        x = FIDInceptionC(160, name="Mixed_6c")(x)
        x = FIDInceptionC(160, name="Mixed_6d")(x)
        x = FIDInceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = FIDInceptionE(max_pool=False, name="Mixed_7b")(x)
        x = FIDInceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


@functools.lru_cache(maxsize=None)
def variable_shapes() -> dict[str, tuple[int, ...]]:
    """Flat {name: shape} of the FID Inception variables (traced once per process)."""
    return weights.expected_shapes(FIDInceptionV3(), np.zeros((1, 75, 75, 3), np.float32), 1)


@functools.lru_cache(maxsize=None)
def _jitted_apply() -> Callable[..., jax.Array]:
    """One jitted apply per process, so every `make_inception` shares its compilations."""
    return jax.jit(FIDInceptionV3().apply)


def load_inception(weights_path: str, *, config_key: str = "eval.fid_weights"
                   ) -> tuple[FIDInceptionV3, dict[str, Any]]:
    """The FID Inception module and its variables from a converted .npz; errors name file and
    key."""
    model = FIDInceptionV3()
    flat = weights.load_npz(weights_path, config_key)
    variables = weights.checked_variables(flat, "inception", variable_shapes(), weights_path,
                                          config_key)
    return model, jax.tree.map(jnp.asarray, variables)


def make_inception(weights_path: str, *, config_key: str = "eval.fid_weights"
                   ) -> Callable[[jax.Array], jax.Array] | None:
    """A jitted `images -> [B, 2048]` pool3 feature map for [B, H, W, 3] images in [0, 1]
    (not [-1, 1]).

    Returns None when `weights_path` is "" (FID unavailable). Quantise images to uint8 levels first
    to match pytorch-fid on PNG files.
    """
    if not weights_path:
        return None
    _, variables = load_inception(weights_path, config_key=config_key)
    apply = _jitted_apply()

    def features(images: jax.Array) -> jax.Array:
        """Pool3 features [B, 2048] of [B, H, W, 3] images in [0, 1]."""
        images = jnp.asarray(images, jnp.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Inception needs a [B, H, W, 3] batch, got shape {images.shape}")
        return apply(variables, images)

    return features
