"""The conditional UNet: preset sizes and MACs, shapes, zero-init, dtypes, conditioning, errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rdbm_jax import config as config_lib
from rdbm_jax.errors import ConfigError
from rdbm_jax.models import SIZES, UNet, count_macs, count_params, create_model, downsample_factor
from tests.helpers import config

SHAPE = (2, 16, 24, 3)  # non-square; one shape for the T model across tests: one compilation
PAPER_PARAMS = {"T": 0.45e6, "B": 3.65e6, "L": 7.73e6}
PAPER_GMACS = {"B": 23.97, "L": 32.93}  # at 256×256


def abstract_params(model: UNet, shape: tuple[int, ...]):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x, x,
                          jax.ShapeDtypeStruct(shape[:1], jnp.int32))


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


def analytic_counts(preset, res, attention: bool = True, in_ch: int = 3, out_ch: int = 3):
    """Independent hand count of (params, MACs) of the architecture from its description."""
    c0, emb = preset.channels, 4 * preset.channels
    p, m = c0 * emb + emb + emb * emb + emb, c0 * emb + emb * emb
    height, width = (res, res) if isinstance(res, int) else res

    def conv(ci, co, k, scale):
        nonlocal p, m
        p, m = p + k * k * ci * co + co, m + k * k * ci * co * (height * width) // scale ** 2

    def res_block(ci, co, scale):
        nonlocal p, m
        p += 2 * ci + 2 * co + emb * 2 * co + 2 * co  # two GroupNorms + the scale-shift Dense
        m += emb * 2 * co
        conv(ci, co, 3, scale), conv(co, co, 3, scale)
        if ci != co:
            conv(ci, co, 1, scale)

    def attn(c, scale):
        nonlocal p, m
        if attention:
            p += 2 * c
            conv(c, 3 * c, 1, scale), conv(c, c, 1, scale)
            m += 2 * (height * width // scale ** 2) ** 2 * c  # QKᵀ and AV

    scale, last = 1, len(preset.channel_mult) - 1
    conv(2 * in_ch, c0, 3, scale)
    ch, skips = c0, [c0]
    for i, mult in enumerate(preset.channel_mult):
        for _ in range(preset.num_blocks[i]):
            res_block(ch, c0 * mult, scale)
            ch = c0 * mult
            if i == last:
                attn(ch, scale)
            skips.append(ch)
        if i < last:
            scale *= 2
            conv(ch, ch, 3, scale)
            skips.append(ch)
    res_block(ch, ch, scale), attn(ch, scale), res_block(ch, ch, scale)
    for i in reversed(range(last + 1)):
        for _ in range(preset.num_blocks[i] + 1):
            res_block(ch + skips.pop(), c0 * preset.channel_mult[i], scale)
            ch = c0 * preset.channel_mult[i]
            if i == last:
                attn(ch, scale)
        if i > 0:
            scale //= 2
            conv(ch, ch, 3, scale)
    p += 2 * ch
    conv(ch, out_ch, 3, scale)
    return p, m


def test_preset_sizes_match_the_paper():
    counts, gmacs = {}, {}
    for size, preset in SIZES.items():
        for attention in (True, False) if size == "T" else (True,):
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
    # Attention is quadratic in H·W, convolutions linear: the hand count tracks both; the batch
    # multiplies everything.
    model = create_model({"size": "T"})
    assert count_macs(model, 16, 32, batch=3) == 3 * analytic_counts(SIZES["T"], (16, 32))[1]


def test_output_shape(tiny_t):
    model, params, apply = tiny_t
    x = jnp.linspace(-1, 1, np.prod(SHAPE)).reshape(SHAPE)
    out = apply(params, x, -x, jnp.arange(SHAPE[0]))
    assert out.shape == SHAPE and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


def test_out_channels():
    model = create_model({"size": "S"}, out_channels=6)
    x = jax.ShapeDtypeStruct((1, 16, 40, 3), jnp.float32)
    out, _ = jax.eval_shape(model.init_with_output, jax.random.key(0), x, x,
                            jax.ShapeDtypeStruct((1,), jnp.int32))
    assert out.shape == (1, 16, 40, 6) and out.dtype == jnp.float32


def tiny_unet(**kw) -> UNet:
    """A two-level UNet: the same code as the presets, cheap to compile."""
    return UNet(
        **{**dict(channels=8, channel_mult=(1, 2), num_blocks=(1, 1), num_heads=2, groups=4), **kw})


def test_zero_init_output_and_float32_params_in_bf16_mode():
    # one level: fast init
    model = tiny_unet(channel_mult=(1,), num_blocks=(1,), dtype=jnp.bfloat16)
    x = jax.random.uniform(jax.random.key(1), (1, 8, 16, 3), minval=-1, maxval=1)
    # An rbg key: the same init, three times faster to compile on CPU than threefry.
    out, variables = jax.jit(model.init_with_output)(jax.random.key(0, impl="unsafe_rbg"), x, -x,
                                                     jnp.array([50]))
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert "mid_attn" in variables["params"]
    conv_out = variables["params"]["conv_out"]
    assert not np.any(conv_out["kernel"]) and not np.any(conv_out["bias"])
    assert np.any(variables["params"]["conv_in"]["kernel"])
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


def test_remat_and_dropout():
    shape = (2, 8, 8, 3)
    one_level = dict(channel_mult=(1,), num_blocks=(2,), dropout=0.3)
    plain, remat = tiny_unet(**one_level), tiny_unet(remat=True, **one_level)
    params = random_params(plain, shape, seed=2)
    x, t = jnp.linspace(-1, 1, np.prod(shape)).reshape(shape), jnp.array([40, 41])
    ref = jax.jit(plain.apply)(params, x, -x, t)
    run = jax.jit(
        lambda key, train: remat.apply(params, x, -x, t, train=train, rngs={"dropout": key}),
        static_argnums=1)
    np.testing.assert_allclose(run(jax.random.key(0), False), ref, rtol=1e-5, atol=1e-5)
    a, b = run(jax.random.key(0), True), run(jax.random.key(1), True)
    assert float(jnp.abs(a - b).max()) > 1e-4 and float(jnp.abs(a - ref).max()) > 1e-4


@pytest.mark.slow
def test_remat_gradients_equal_plain_gradients():
    shape = (2, 8, 8, 3)
    plain, remat = tiny_unet(), tiny_unet(remat=True)
    params = random_params(plain, shape, seed=2)
    x, t = jnp.linspace(-1, 1, np.prod(shape)).reshape(shape), jnp.array([40, 41])

    def loss(model):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply(p, x, -x, t) ** 2)))

    (v0, g0), (v1, g1) = loss(plain)(params), loss(remat)(params)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


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
    # "xla", the default: jax.nn.dot_product_attention's XLA path
    assert model.attention_impl is None
    assert create_model({"size": "B", "dtype": "bfloat16",
                         "attention_impl": "cudnn"}).attention_impl == "cudnn"


@pytest.mark.parametrize("bad,key", [({"size": "XL"}, "model.size"),
                                     ({"dtype": "int8"}, "model.dtype"),
                                     ({"param_dtype": "f32"}, "model.param_dtype"),
                                     ({"dropout": 1.5}, "model.dropout"),
                                     ({"attention_impl": "flash"}, "model.attention_impl"),
                                     ({"attention_impl": "cudnn"}, "model.attention_impl")])
def test_bad_config_values_name_the_key(bad, key):  # config.validate is the one home of these rules
    with pytest.raises(ConfigError, match=key):
        config_lib.validate(config(**{f"model.{k}": v for k, v in bad.items()}))
