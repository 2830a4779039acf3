"""LPIPS v0.1 (Zhang et al. 2018) in Flax: AlexNet / VGG16 features, unit-normalised, 1x1 linear
heads.

Same computation as `lpips.LPIPS(net=..., version="0.1", spatial=False)`: the input scaling layer,
channel-normalised features f / (||f||_2 + 1e-10), squared differences, 1x1 linear heads, spatial
mean, sum over the five layers. Inputs are float [B, H, W, 3] in [-1, 1]; the output is [B].
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rdbm_jax.errors import ConfigError
from rdbm_jax.evaluation.perceptual import weights

NETS = ("alex", "vgg")
BACKBONE_NAMES = {"alex": "alexnet", "vgg": "vgg16"}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10
_HIGHEST = jax.lax.Precision.HIGHEST
# VGG16 `features` conv widths; "M" = 2x2 max-pool; the ReLU after each "|" is an LPIPS tap.
_VGG16 = (64, 64, "|", "M", 128, 128, "|", "M", 256, 256, 256, "|", "M", 512, 512, 512, "|", "M",
          512, 512, 512, "|")


def _conv(features: int, kernel: int, stride: int, pad: int, name: str) -> nn.Conv:
    """A biased conv with PyTorch's symmetric zero padding, full float32 precision."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), precision=_HIGHEST, name=name)


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features`; returns the five ReLU outputs LPIPS taps (relu1..relu5)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
        taps = []
        x = nn.relu(_conv(64, 11, 4, 2, "conv0")(x))
        taps.append(x)
        x = nn.relu(_conv(192, 5, 1, 2, "conv1")(pool(x)))
        taps.append(x)
        x = nn.relu(_conv(384, 3, 1, 1, "conv2")(pool(x)))
        taps.append(x)
        x = nn.relu(_conv(256, 3, 1, 1, "conv3")(x))
        taps.append(x)
        x = nn.relu(_conv(256, 3, 1, 1, "conv4")(x))
        taps.append(x)
        return taps


class VGG16Features(nn.Module):
    """torchvision VGG16 `features`; returns relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps, i = [], 0
        for item in _VGG16:
            if item == "|":
                taps.append(x)
            elif item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(_conv(item, 3, 1, 1, f"conv{i}")(x))
                i += 1
        return taps


def normalize_channels(f: jax.Array) -> jax.Array:
    """f / (||f||_2 over channels + 1e-10), as `lpips.normalize_tensor`."""
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + _EPS)


class LPIPS(nn.Module):
    """LPIPS distance per image pair: inputs [B, H, W, 3] in [-1, 1], output [B]."""

    net: str = "alex"

    @nn.compact
    def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
        if self.net not in NETS:
            raise ConfigError(f"eval.lpips_net must be one of {NETS}, got {self.net!r}")
        shift = jnp.asarray(_SHIFT, jnp.float32)
        scale = jnp.asarray(_SCALE, jnp.float32)
        x = (jnp.concatenate([x0, x1], axis=0).astype(jnp.float32) - shift) / scale
        backbone = AlexNetFeatures if self.net == "alex" else VGG16Features
        feats = backbone(name="net")(x)
        n = x0.shape[0]
        total = jnp.zeros((n,), jnp.float32)
        for k, f in enumerate(feats):
            d = jnp.square(normalize_channels(f[:n]) - normalize_channels(f[n:]))
            head = nn.Conv(1, (1, 1), use_bias=False, precision=_HIGHEST, name=f"lin{k}")
            total = total + jnp.mean(head(d), axis=(1, 2, 3))
        return total


@functools.lru_cache(maxsize=None)
def variable_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """Flat {name: shape} of the LPIPS-`net` variables (traced once per process)."""
    return weights.expected_shapes(LPIPS(net=net), np.zeros((1, 64, 64, 3), np.float32), 2)


@functools.lru_cache(maxsize=None)
def _jitted_apply(net: str) -> Callable[..., jax.Array]:
    """One jitted apply per backbone and process, so every `make_lpips` shares its compilations."""
    return jax.jit(LPIPS(net=net).apply)


def load_lpips(weights_path: str, net: str = "alex", *,
               config_key: str = "eval.lpips_weights") -> tuple[LPIPS, dict[str, Any]]:
    """The LPIPS module and its variables from a converted .npz; errors name the file and key."""
    if net not in NETS:
        raise ConfigError(f"eval.lpips_net must be one of {NETS}, got {net!r}")
    model = LPIPS(net=net)
    other = {"alex": "vgg", "vgg": "alex"}[net]
    flat = weights.load_npz(weights_path, config_key)
    if str(flat.get("meta/net", "")) == other:
        raise ConfigError(f"eval.lpips_net={net!r} but {weights_path} ({config_key}) holds "
                          f"LPIPS-{other} weights")
    variables = weights.checked_variables(flat, "lpips", variable_shapes(net), weights_path,
                                          config_key)
    return model, jax.tree.map(jnp.asarray, variables)


def make_lpips(weights_path: str,
               net: str = "alex") -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """A jitted `(a, b) -> [B]` LPIPS distance for [B, H, W, 3] images in [-1, 1]; None if the
    path is ""."""
    if not weights_path:
        return None
    _, variables = load_lpips(weights_path, net)
    apply = _jitted_apply(net)

    def distance(a: jax.Array, b: jax.Array) -> jax.Array:
        """LPIPS per image pair ([B, H, W, 3] each, in [-1, 1])."""
        a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(
                f"LPIPS needs two [B, H, W, 3] batches of one shape, got {a.shape}, {b.shape}")
        return apply(variables, a, b)

    return distance
