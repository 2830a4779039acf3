"""UNet building blocks (Flax Linen, NHWC): time embedding, residual, attention, resampling."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
GN_EPS = 1e-5  # PyTorch's GroupNorm default; the twin uses the same value.


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding [cos | sin] of (integer) timesteps t [B] -> [B, dim], float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def conv2d(features: int, kernel: int, dtype: Dtype, param_dtype: Dtype, name: str,
          strides: int = 1, zero: bool = False) -> nn.Conv:
    """A 'same'-padded NHWC conv with symmetric padding (matches PyTorch padding=k//2)."""
    pad = kernel // 2
    kw = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros) if zero else {}
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   padding=((pad, pad), (pad, pad)), dtype=dtype, param_dtype=param_dtype,
                   name=name, **kw)


def group_norm(groups: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.GroupNorm:
    """GroupNorm with float32 statistics and output in the compute dtype."""
    return nn.GroupNorm(num_groups=groups, epsilon=GN_EPS, dtype=dtype, param_dtype=param_dtype,
                        name=name)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, time scale-shift (h·(1+s)+b after the 2nd norm), dropout, conv; skip."""

    features: int
    groups: int = 8
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        dt, pdt = self.dtype, self.param_dtype
        h = nn.silu(group_norm(self.groups, dt, pdt, "norm0")(x))
        h = conv2d(self.features, 3, dt, pdt, "conv0")(h)
        ss = nn.Dense(2 * self.features, dtype=dt, param_dtype=pdt, name="emb")(emb)
        scale, shift = jnp.split(ss[:, None, None, :], 2, axis=-1)
        h = group_norm(self.groups, dt, pdt, "norm1")(h)
        h = nn.silu(h * (1 + scale) + shift)
        if self.dropout > 0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv2d(self.features, 3, dt, pdt, "conv1")(h)
        if x.shape[-1] != self.features:
            x = conv2d(self.features, 1, dt, pdt, "skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over all H·W positions, pre-GroupNorm, residual."""

    num_heads: int
    groups: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None  # jax.nn.dot_product_attention's: None/"xla" | "cudnn"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"attention: {c} channels not divisible by {self.num_heads} heads")
        dt, pdt = self.dtype, self.param_dtype
        h = group_norm(self.groups, dt, pdt, "norm")(x)
        qkv = nn.Dense(3 * c, dtype=dt, param_dtype=pdt, name="qkv")(h)
        qkv = qkv.reshape(b, hh * ww, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        h = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
        h = h.reshape(b, hh, ww, c)
        return x + nn.Dense(c, dtype=dt, param_dtype=pdt, name="proj")(h)


class Downsample(nn.Module):
    """Stride-2 3×3 conv (padding 1 on every side)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(self.features, 3, self.dtype, self.param_dtype, "conv", strides=2)(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :],
                             (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return conv2d(self.features, 3, self.dtype, self.param_dtype, "conv")(x)
