"""The conditional UNet: preset sizes and MACs, shapes, zero-init, dtypes, conditioning, errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rdbm_jax.errors import ConfigError
from rdbm_jax.models import SIZES, UNet, count_macs, count_params, create_model, downsample_factor

SHAPE = (2, 16, 16, 3)  # one shape for the T model across tests: one compilation, shared
PAPER_PARAMS = {"T": 0.45e6, "B": 3.65e6, "L": 7.73e6}
PAPER_GMACS = {"B": 23.97, "L": 32.93}  # at 256×256


def abstract_params(model: UNet, shape: tuple[int, ...]):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x, x, jax.ShapeDtypeStruct(shape[:1], jnp.int32))


def random_params(model: UNet, shape: tuple[int, ...], seed: int = 0):
    """Random values for every parameter (output conv included), without compiling model.init."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "kernel":
            std = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32)
        base = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(base + 0.1 * rng.normal(size=leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract_params(model, shape))


@pytest.fixture(scope="module")
def tiny_t():
    """The T preset (float32) with random params and its jitted apply at SHAPE."""
    model = create_model({"size": "T"})
    return model, random_params(model, SHAPE, seed=1), jax.jit(model.apply)


def analytic_counts(preset, res: int, attention: bool = True, in_ch: int = 3, out_ch: int = 3):
    """Independent hand count of (params, MACs) of the architecture from its description."""
    c0, emb = preset.channels, 4 * preset.channels
    p, m = c0 * emb + emb + emb * emb + emb, c0 * emb + emb * emb

    def conv(ci, co, k, hw):
        nonlocal p, m
        p, m = p + k * k * ci * co + co, m + k * k * ci * co * hw * hw

    def res_block(ci, co, hw):
        nonlocal p, m
        p += 2 * ci + 2 * co + emb * 2 * co + 2 * co  # two GroupNorms + the scale-shift Dense
        m += emb * 2 * co
        conv(ci, co, 3, hw), conv(co, co, 3, hw)
        if ci != co:
            conv(ci, co, 1, hw)

    def attn(c, hw):
        nonlocal p, m
        if attention:
            p += 2 * c
            conv(c, 3 * c, 1, hw), conv(c, c, 1, hw)
            m += 2 * (hw * hw) ** 2 * c  # QKᵀ and AV

    hw, last = res, len(preset.channel_mult) - 1
    conv(2 * in_ch, c0, 3, hw)
    ch, skips = c0, [c0]
    for i, mult in enumerate(preset.channel_mult):
        for _ in range(preset.num_blocks[i]):
            res_block(ch, c0 * mult, hw)
            ch = c0 * mult
            if i == last:
                attn(ch, hw)
            skips.append(ch)
        if i < last:
            hw //= 2
            conv(ch, ch, 3, hw)
            skips.append(ch)
    res_block(ch, ch, hw), attn(ch, hw), res_block(ch, ch, hw)
    for i in reversed(range(last + 1)):
        for _ in range(preset.num_blocks[i] + 1):
            res_block(ch + skips.pop(), c0 * preset.channel_mult[i], hw)
            ch = c0 * preset.channel_mult[i]
            if i == last:
                attn(ch, hw)
        if i > 0:
            hw *= 2
            conv(ch, ch, 3, hw)
    p += 2 * ch
    conv(ch, out_ch, 3, hw)
    return p, m


def test_preset_sizes_match_the_paper():
    counts, gmacs = {}, {}
    for size, preset in SIZES.items():
        for attention in (True, False):
            model = create_model({"size": size, "attention": attention})
            n = count_params(abstract_params(model, (1, 16, 16, 3)))
            macs = count_macs(model, 256, 256)
            assert (n, macs) == analytic_counts(preset, 256, attention), (size, attention)
            if attention:
                counts[size], gmacs[size] = n, macs / 1e9
                print(f"size {size}: {n / 1e6:.3f} M params, {macs / 1e9:.2f} GMAC @256²")
    for size, target in PAPER_PARAMS.items():
        assert abs(counts[size] / target - 1) <= 0.10, (size, counts[size], target)
    assert counts["T"] < counts["S"] < counts["B"]
    for size, target in PAPER_GMACS.items():
        assert abs(gmacs[size] / target - 1) <= 0.10, (size, gmacs[size], target)


def test_count_macs_scales_as_expected():
    # Convolutions scale with H·W, attention with (H·W)², the time MLP with neither: the
    # hand count covers all three at two resolutions, and the batch multiplies everything.
    model = create_model({"size": "T"})
    for res in (16, 32):
        assert count_macs(model, res, res) == analytic_counts(SIZES["T"], res)[1]
    assert count_macs(model, 16, 16, batch=3) == 3 * count_macs(model, 16, 16)


def test_output_shape(tiny_t):
    model, params, apply = tiny_t
    x = jnp.linspace(-1, 1, np.prod(SHAPE)).reshape(SHAPE)
    out = apply(params, x, -x, jnp.arange(SHAPE[0]))
    assert out.shape == SHAPE and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


def test_output_shape_non_square_and_other_out_channels():
    shape = (1, 16, 40, 3)
    model = create_model({"size": "S"}, out_channels=6)
    out = jax.jit(model.apply)(random_params(model, shape), jnp.ones(shape), jnp.zeros(shape),
                               jnp.array([7]))
    assert out.shape == (1, 16, 40, 6) and bool(jnp.all(jnp.isfinite(out)))


def test_zero_init_output_and_float32_params_in_bf16_mode():
    model = create_model({"size": "T", "dtype": "bfloat16"})
    x = jax.random.uniform(jax.random.key(1), (1, 8, 16, 3), minval=-1, maxval=1)
    # An rbg key: the same init, three times faster to compile on CPU than threefry.
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, x, jnp.array([99]))
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    conv_out = variables["params"]["conv_out"]
    assert not np.any(conv_out["kernel"]) and not np.any(conv_out["bias"])
    assert np.any(variables["params"]["conv_in"]["kernel"])
    out = jax.jit(model.apply)(variables, x, -x, jnp.array([50]))
    assert out.dtype == jnp.float32 and out.shape == x.shape
    assert np.array_equal(np.asarray(out), np.zeros(x.shape, np.float32))


def test_bf16_compute_tracks_float32(tiny_t):
    model, params, apply = tiny_t
    bf16 = create_model({"size": "T", "dtype": "bfloat16"})
    x = jax.random.uniform(jax.random.key(2), SHAPE, minval=-1, maxval=1)
    t = jnp.array([10, 90])
    ref = apply(params, x, -x, t)
    low = jax.jit(bf16.apply)(params, x, -x, t)
    convs = [e for e in jax.make_jaxpr(bf16.apply)(params, x, -x, t).eqns
             if e.primitive.name == "conv_general_dilated"]
    assert len(convs) > 10
    assert {v.aval.dtype for e in convs for v in e.invars + e.outvars} == {jnp.dtype(jnp.bfloat16)}
    assert low.dtype == jnp.float32
    rel = float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref))
    assert 0 < rel < 0.05, rel


def test_output_depends_on_t_cond_and_x_but_not_other_samples(tiny_t):
    model, params, apply = tiny_t
    k1, k2 = jax.random.split(jax.random.key(4))
    x = jax.random.uniform(k1, SHAPE, minval=-1, maxval=1)
    cond = jax.random.uniform(k2, SHAPE, minval=-1, maxval=1)
    base = apply(params, x, cond, jnp.array([3, 3]))

    def moved(a):
        return float(jnp.abs(a - base).max())

    assert moved(apply(params, x, cond, jnp.array([70, 70]))) > 1e-3
    assert moved(apply(params, x, cond * 0.5, jnp.array([3, 3]))) > 1e-3
    assert moved(apply(params, -x, cond, jnp.array([3, 3]))) > 1e-3
    assert moved(apply(params, x, cond, jnp.array([3, 3]))) == 0.0
    # Sample 0 is unaffected by a different sample 1 (no batch statistics).
    other = apply(params, x.at[1].set(0.3), cond.at[1].set(-0.2), jnp.array([3, 50]))
    np.testing.assert_allclose(other[0], base[0], atol=1e-5)
    assert float(jnp.abs(other[1] - base[1]).max()) > 1e-3


def test_remat_and_dropout(tiny_t):
    _, params, apply = tiny_t
    remat = create_model({"size": "T", "dropout": 0.3, "remat": True})
    x = jnp.full(SHAPE, 0.25)
    t = jnp.array([40, 41])
    ref = apply(params, x, -x, t)
    step = jax.jit(lambda p, key, train: remat.apply(p, x, -x, t, train=train, rngs={"dropout": key}),
                   static_argnums=2)
    np.testing.assert_allclose(step(params, jax.random.key(0), False), ref, atol=1e-5)
    grad = jax.jit(jax.grad(lambda p, key: remat.apply(p, x, -x, t, train=True,
                                                       rngs={"dropout": key}).sum()))
    g0, g1 = grad(params, jax.random.key(0)), grad(params, jax.random.key(1))
    norms = [float(optax_norm(g)) for g in (g0, g1)]
    assert all(np.isfinite(norms)) and norms[0] != norms[1]
    a, b = step(params, jax.random.key(0), True), step(params, jax.random.key(1), True)
    assert float(jnp.abs(a - b).max()) > 1e-4 and float(jnp.abs(a - ref).max()) > 1e-4


def optax_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def test_bad_shapes_are_rejected():
    model = create_model({"size": "B"})
    good = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match=r"\(1, 12, 16, 3\).*multiples of 8"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 12, 16, 3)),
                       jnp.zeros((1, 12, 16, 3)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="equal N, H, W"):
        jax.eval_shape(model.init, jax.random.key(0), good, jnp.zeros((1, 8, 16, 3)),
                       jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"t has shape \(2,\)"):
        jax.eval_shape(model.init, jax.random.key(0), good, good, jnp.zeros((2,), jnp.int32))
    jax.eval_shape(model.init, jax.random.key(0), good, good, jnp.zeros((), jnp.int32))  # broadcast


def test_create_model_reads_the_config_section():
    cfg = ml_collections.ConfigDict(dict(size="L", dtype="bfloat16", param_dtype="float32",
                                         attention=False, dropout=0.1, remat=True))
    model = create_model(cfg, out_channels=4)
    preset = SIZES["L"]
    assert (model.channels, model.channel_mult, model.num_blocks) == \
        (preset.channels, preset.channel_mult, preset.num_blocks)
    assert (model.dtype, model.param_dtype, model.attention, model.dropout, model.remat,
            model.out_channels) == (jnp.bfloat16, jnp.float32, False, 0.1, True, 4)
    assert {s: downsample_factor({"size": s}) for s in SIZES} == {"T": 8, "S": 8, "B": 8, "L": 8}
    assert downsample_factor(cfg) == model.factor


@pytest.mark.parametrize("bad,key", [({"size": "XL"}, "model.size"), ({"dtype": "int8"}, "model.dtype"),
                                     ({"param_dtype": "f32"}, "model.param_dtype"),
                                     ({"dropout": 1.5}, "model.dropout")])
def test_bad_config_values_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        create_model({"size": "B", **bad})
    if "size" in bad:
        with pytest.raises(ConfigError, match=key):
            downsample_factor(bad)
