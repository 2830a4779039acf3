"""Conditional UNet (NHWC): out = UNet([x, cond], t); size presets T/S/B/L and helpers."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rdbm_jax.models.layers import (AttnBlock, Downsample, ResBlock, Upsample, conv2d,
                                    group_norm, timestep_embedding)
from rdbm_jax.models.sizes import SIZES, SizePreset

Dtype = Any
RematResBlock = nn.remat(ResBlock, static_argnums=(3,))  # (self, x, emb, train): train is static
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPES = tuple(_DTYPES)                   # model.dtype: compute dtype
# model.param_dtype: the dtype of the weights the network computes with. The trained state
# (parameters, EMA, optimizer moments) is always float32: bf16 master weights lose every Adam update
# below 2^-8 of the weight (at lr 1e-4 a 0.5 weight never moves). bfloat16 = a rounded copy made
# per step and for inference (`compute_params`). No float16 weights: there is no loss scaling.
PARAM_DTYPES = ("float32", "bfloat16")
# model.attention_impl → jax.nn.dot_product_attention's implementation ("cudnn": fused, GPU
# bf16/fp16).
ATTENTION_IMPLS: dict[str, str | None] = {"xla": None, "cudnn": "cudnn"}


class UNet(nn.Module):
    """Conditional UNet: input concat(x, cond), sinusoidal t + MLP, attention at the lowest
    level."""

    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 3, 3)
    num_blocks: tuple[int, ...] = (1, 2, 1, 2)
    num_heads: int = 3
    groups: int = 8
    attention: bool = True
    out_channels: int = 3
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None  # None (XLA) | "cudnn" (fused flash attention, GPU bf16/fp16)

    @property
    def factor(self) -> int:
        """H and W must be multiples of this (2 ** number of downsamplings)."""
        return 2 ** (len(self.channel_mult) - 1)

    def _check(self, x: jax.Array, cond: jax.Array, t: jax.Array) -> jax.Array:
        if x.ndim != 4 or cond.ndim != 4 or x.shape[:3] != cond.shape[:3]:
            raise ValueError(
                f"UNet: x {x.shape} and cond {cond.shape} must be NHWC with equal N, H, W")
        if x.shape[1] % self.factor or x.shape[2] % self.factor:
            raise ValueError(
                f"UNet: input shape {x.shape}: H and W must be multiples of {self.factor}")
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, x.shape[:1])
        if t.shape != x.shape[:1]:
            raise ValueError(f"UNet: t has shape {t.shape}, expected ({x.shape[0]},)")
        return t

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, t: jax.Array,
                 train: bool = False) -> jax.Array:
        t = self._check(x, cond, t)
        dt, pdt, c0 = self.dtype, self.param_dtype, self.channels
        block_cls = RematResBlock if self.remat else ResBlock

        def res(feat: int, name: str) -> nn.Module:
            return block_cls(feat, self.groups, self.dropout, dt, pdt, name=name)

        def attn(name: str) -> nn.Module:
            return AttnBlock(self.num_heads, self.groups, dt, pdt, self.attention_impl, name=name)

        emb = timestep_embedding(t, c0)
        emb = nn.Dense(4 * c0, dtype=dt, param_dtype=pdt, name="time_mlp0")(emb)
        emb = nn.Dense(4 * c0, dtype=dt, param_dtype=pdt, name="time_mlp1")(nn.silu(emb))
        emb = nn.silu(emb)  # every block's scale-shift Dense reads silu(emb)

        last = len(self.channel_mult) - 1
        h = jnp.concatenate([x, cond], axis=-1).astype(dt)
        h = conv2d(c0, 3, dt, pdt, "conv_in")(h)
        skips = [h]
        for i, mult in enumerate(self.channel_mult):
            for j in range(self.num_blocks[i]):
                h = res(c0 * mult, f"down{i}_res{j}")(h, emb, train)
                if self.attention and i == last:
                    h = attn(f"down{i}_attn{j}")(h)
                skips.append(h)
            if i < last:
                h = Downsample(h.shape[-1], dt, pdt, name=f"down{i}_downsample")(h)
                skips.append(h)

        h = res(h.shape[-1], "mid_res0")(h, emb, train)
        if self.attention:
            h = attn("mid_attn")(h)
        h = res(h.shape[-1], "mid_res1")(h, emb, train)

        for i in reversed(range(len(self.channel_mult))):
            for j in range(self.num_blocks[i] + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(c0 * self.channel_mult[i], f"up{i}_res{j}")(h, emb, train)
                if self.attention and i == last:
                    h = attn(f"up{i}_attn{j}")(h)
            if i > 0:
                h = Upsample(h.shape[-1], dt, pdt, name=f"up{i}_upsample")(h)

        h = nn.silu(group_norm(self.groups, dt, pdt, "norm_out")(h))
        out = conv2d(self.out_channels, 3, dt, pdt, "conv_out", zero=True)(h)
        return out.astype(jnp.float32)


def _get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _preset(model_cfg: Any) -> SizePreset:
    size = model_cfg if isinstance(model_cfg, str) else _get(model_cfg, "size", "B")
    return SIZES[size]


def _dtype(model_cfg: Any, key: str) -> Dtype:
    return _DTYPES[_get(model_cfg, key, "float32")]


def create_model(model_cfg: Any, out_channels: int = 3) -> UNet:
    """Builds the UNet from the `model` config section (size, dtype, param_dtype, attention, …).

    The values are those `config.validate` admits (it checks every model.* rule)."""
    p = _preset(model_cfg)
    dropout = float(_get(model_cfg, "dropout", 0.0))
    attention_impl = _get(model_cfg, "attention_impl", "xla")
    dtype = _dtype(model_cfg, "dtype")
    return UNet(channels=p.channels, channel_mult=p.channel_mult, num_blocks=p.num_blocks,
                num_heads=p.num_heads, groups=p.groups,
                attention=bool(_get(model_cfg, "attention", True)), out_channels=out_channels,
                dropout=dropout, remat=bool(_get(model_cfg, "remat", False)),
                dtype=dtype, param_dtype=jnp.float32,  # float32 masters; see PARAM_DTYPES
                attention_impl=ATTENTION_IMPLS[attention_impl])


def compute_params(params: Any, model_cfg: Any) -> Any:
    """The copy of float32 master `params` the network computes with (model.param_dtype)."""
    dtype = _dtype(model_cfg, "param_dtype")
    if dtype == jnp.float32:
        return params
    return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)


def downsample_factor(model_cfg: Any) -> int:
    """2 ** depth of the preset: H and W fed to the model must be multiples of it."""
    return 2 ** (len(_preset(model_cfg).channel_mult) - 1)


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
    return int(
        sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))


def _jaxpr_macs(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval
            dn = eqn.params["dimension_numbers"]
            k = rhs.shape
            k_in = k[dn.rhs_spec[1]] * int(np.prod([k[d] for d in dn.rhs_spec[2:]]))
            total += int(np.prod(eqn.outvars[0].aval.shape)) * k_in
        elif eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            contract = int(np.prod([lhs.shape[d] for d in lc]))
            total += int(np.prod(eqn.outvars[0].aval.shape)) * contract
        for sub in _sub_jaxprs(eqn.params):
            total += _jaxpr_macs(sub)
    return total


def _sub_jaxprs(params: Mapping[str, Any]) -> list:
    out = []
    for v in params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            if hasattr(item, "jaxpr") and hasattr(item, "consts"):  # ClosedJaxpr
                out.append(item.jaxpr)
            elif hasattr(item, "eqns"):
                out.append(item)
    return out


def count_macs(model: UNet, height: int, width: int, in_channels: int = 3, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass (convolutions and matmuls incl. attention)."""
    x = jax.ShapeDtypeStruct((batch, height, width, in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    # init runs exactly one forward pass (its RNG ops hold no convolutions or matmuls).
    return _jaxpr_macs(jax.make_jaxpr(model.init)(jax.random.key(0), x, x, t).jaxpr)
