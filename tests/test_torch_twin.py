"""The PyTorch twin (benchmarks/torch_twin.py): same UNet as Flax, RDBM train step, sampler."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdbm_jax import sde
from rdbm_jax.models import SIZES, create_model

torch = pytest.importorskip("torch")  # the twin is PyTorch: skipped where torch is not installed
nn = torch.nn
from benchmarks import torch_twin as tw  # noqa: E402 — imports torch

THETA_GOLD = [0, .02794, .09949, .20867, .34550, .49723, .64953, .78790, .89904, .97214, .99937]
SIGMA_GOLD = {
    10 / 255: [0, .19793, .19705, .19367, .18583, .17181, .15057, .12195, .08671, .04642, .00703],
    1e-4: [0, .01000, .00995, .00978, .00938, .00868, .00760, .00616, .00438, .00234, .00036]
}
GOLD_T = [99, 89, 79, 69, 59, 49, 39, 29, 19, 9, 0]


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine has 2 shared cores: torch's intra-op threads only contend there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_flax_params(model, shape, seed=0):
    """Random values for every Flax parameter (the zero-init output conv included)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x, x,
                              jax.ShapeDtypeStruct(shape[:1], jnp.int32))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "kernel":
            return rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])),
                              leaf.shape).astype(np.float32)
        base = 1.0 if path[-1].key == "scale" else 0.0
        return (base + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def test_presets_and_param_counts_mirror_flax():
    for size, preset in SIZES.items():
        assert tw.SIZES[size] == (preset.channels, preset.channel_mult, preset.num_blocks,
                                  preset.num_heads, preset.groups)
        for attention in (True, False):
            flax_model = create_model({"size": size, "attention": attention})
            x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
            abstract = jax.eval_shape(flax_model.init, jax.random.key(0), x, x,
                                      jax.ShapeDtypeStruct((1,), jnp.int32))
            n_flax = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(abstract))
            assert tw.count_params(tw.TwinUNet(size, attention=attention)) == n_flax, size


@pytest.mark.parametrize("size", ["T", "B"])
def test_flax_weights_give_equal_outputs(size):
    shape = (2, 16, 24, 3)
    flax_model = create_model({"size": size, "attention": True})
    params = random_flax_params(flax_model, shape, seed=7)
    rng = np.random.default_rng(1)
    x, cond = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
    t = np.array([5, 77], np.int32)
    ref = np.asarray(jax.jit(flax_model.apply)(params, x, cond, t))
    twin = tw.load_flax_params(tw.TwinUNet(size, attention=True), params).eval()
    with torch.no_grad():
        out = twin(nchw(x), nchw(cond), torch.from_numpy(t).long()).numpy().transpose(0, 2, 3, 1)
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    # channels_last memory format changes nothing.
    twin = twin.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out_cl = twin(nchw(x).contiguous(memory_format=torch.channels_last),
                      nchw(cond).contiguous(memory_format=torch.channels_last), torch.from_numpy(t))
    np.testing.assert_allclose(out_cl.numpy().transpose(0, 2, 3, 1), ref, atol=1e-4, rtol=0)


def test_loader_rejects_mismatched_trees():
    params = random_flax_params(create_model({"size": "T"}), (1, 8, 8, 3))
    with pytest.raises(ValueError, match="shape"):
        tw.load_flax_params(tw.TwinUNet("S"), params)
    with pytest.raises(ValueError, match="not in the Flax tree"):
        tw.load_flax_params(tw.TwinUNet("T"), {k: v for k, v in params["params"].items()
                                                if k != "conv_out"})
    with pytest.raises(ValueError, match="multiples of 8"):
        tw.TwinUNet("T")(torch.zeros(1, 3, 12, 16), torch.zeros(1, 3, 12, 16), torch.zeros(1))


def test_zero_initialised_output():
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(tw.TwinUNet("T")(x, x, torch.tensor([3])), torch.zeros(1, 3, 8, 8))


def test_tables_match_the_spec_golden_values_and_rdbm_jax():
    for lam, sigma_gold in SIGMA_GOLD.items():
        big_theta, sigma = tw.cosine_tables(100, lam)
        np.testing.assert_allclose(big_theta[GOLD_T], THETA_GOLD, atol=1e-5)
        np.testing.assert_allclose(sigma[GOLD_T], sigma_gold, atol=1e-5)
        # Chapman–Kolmogorov: every one-step variance v = Σ_t² − (Θ_t/Θ_s)² Σ_s² is ≥ 0.
        a = big_theta[1:] / big_theta[:-1]
        assert np.all(sigma[1:] ** 2 - a ** 2 * sigma[:-1] ** 2 >= -1e-12)
    schedule = sde.make_schedule(num_timesteps=100, theta_schedule="cosine", lam=10 / 255,
                                 preset="rdbm")
    big_theta, sigma = tw.cosine_tables(100, 10 / 255)
    np.testing.assert_allclose(np.asarray(schedule.Theta), big_theta, atol=1e-6)
    np.testing.assert_allclose(np.asarray(schedule.Sigma), sigma, atol=1e-6)
    for steps in (1, 2, 5, 10, 20, 100):
        assert [tuple(p) for p in np.asarray(sde.timestep_pairs(100, steps)).tolist()] == \
            tw.timestep_pairs(100, steps)
    assert tw.timestep_pairs(100, 10) == [(99, 89), (89, 79), (79, 69), (69, 59), (59, 49),
                                          (49, 39), (39, 29), (29, 19), (19, 9), (9, -1)]


class Probe(nn.Module):
    """out = w·x_t; records its inputs so the train step's x_t can be checked."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, cond, t):
        self.seen.append((x.detach().clone(), cond.detach().clone(), t.clone()))
        return self.w * x


@pytest.mark.parametrize("parameterization,loss", [("x0", "l1"), ("pi_eps", "l2")])
def test_train_step_builds_the_marginal_and_the_loss(parameterization, loss):
    tables = tw.cosine_tables(100, 10 / 255)
    probe = Probe()
    opt = torch.optim.SGD(probe.parameters(), lr=0.0)
    step = tw.make_train_step(probe, opt, tables, parameterization, loss, channels_last=False)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=gen) * 2 - 1
    mu = (x0 * 0.5).clamp(-1, 1)
    mu[..., :4] = x0[..., :4]  # undegraded pixels: π = 0 there
    torch.manual_seed(123)
    value = step(x0, mu)
    torch.manual_seed(123)
    t = torch.randint(0, 100, (3,))
    eps = torch.randn_like(x0)
    th, sg = (torch.as_tensor(a[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1) for a in tables)
    pi = x0 - mu
    x_t = mu + th * pi + sg * pi * eps
    seen_x, seen_cond, seen_t = probe.seen[0]
    assert torch.equal(seen_t, t) and torch.equal(seen_cond, mu)
    torch.testing.assert_close(seen_x, x_t)
    assert torch.equal(seen_x[..., :4], mu[..., :4])  # no noise where the residual is zero
    target = x0 if parameterization == "x0" else pi * eps
    diff = 0.5 * x_t - target
    expected = diff.abs().mean() if loss == "l1" else diff.square().mean()
    torch.testing.assert_close(value, expected)


def test_train_step_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tw.TwinUNet("T")
    opt = tw.make_optimizer(model, lr=2e-3)
    step = tw.make_train_step(model, opt, tw.cosine_tables(100, 10 / 255))
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    mu = (x0 * 0.3).clamp(-1, 1)
    losses = [float(step(x0, mu)) for _ in range(16)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses


def test_bf16_autocast_step_runs():
    torch.manual_seed(0)
    model = tw.TwinUNet("T")
    opt = tw.make_optimizer(model)
    step = tw.make_train_step(model, opt, tw.cosine_tables(), amp_dtype=torch.bfloat16)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    before = [p.detach().clone() for p in model.parameters()]
    assert np.isfinite(float(step(x0, x0 * 0.5)))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@dataclasses.dataclass
class Oracle:
    """A 'network' that always returns the true x0 (NCHW), counting its calls."""

    x0: torch.Tensor
    calls: int = 0

    def __call__(self, x, cond, t):
        self.calls += 1
        return self.x0


def test_sampler_with_an_oracle_lands_on_x0_along_the_mean_path():
    gen = torch.Generator().manual_seed(3)
    x0 = (torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1).double()
    mu = (x0 + 0.3 * torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)).clamp(-1, 1)
    big_theta, sigma = tw.cosine_tables(100, 10 / 255)
    oracle = Oracle(x0)
    out, traj = tw.sample(oracle, mu, (big_theta, sigma), num_steps=10, return_trajectory=True)
    assert oracle.calls == 10 and len(traj) == 10
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    # With the exact x̂0, the deterministic sampler follows the noise-free path μ + Θ_s π.
    for (t, s), x in zip(tw.timestep_pairs(100, 10)[:-1], traj[:-1]):
        torch.testing.assert_close(x, mu + big_theta[s] * (x0 - mu), rtol=0, atol=1e-12)


def test_sampler_step_maps_marginal_points_onto_marginal_points():
    # Eq. 19 (x0 form): x_t = μ + Θ_t π + Σ_t n ↦ μ + Θ_s π + Σ_s n, for any n.
    big_theta, sigma = tw.cosine_tables(100, 10 / 255)
    gen = torch.Generator().manual_seed(5)
    x0, mu, n = (torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    pi = x0 - mu
    for t, s in tw.timestep_pairs(100, 10)[:-1]:
        x_t = mu + big_theta[t] * pi + sigma[t] * n
        x_s = tw.sampler_step(x_t, mu, x0, big_theta[t], sigma[t], big_theta[s], sigma[s])
        expected = mu + big_theta[s] * pi + (sigma[s] * n if sigma[t] > 0 else 0)
        torch.testing.assert_close(x_s, expected, rtol=0, atol=1e-12)


def test_sampler_clips_x0_and_runs_the_twin():
    mu = torch.zeros(1, 3, 8, 8)
    oracle = Oracle(torch.full((1, 3, 8, 8), 3.0))
    assert torch.equal(tw.sample(oracle, mu, tw.cosine_tables(), num_steps=2),
                       torch.ones(1, 3, 8, 8))
    assert torch.equal(tw.sample(oracle, mu, tw.cosine_tables(), num_steps=2, clip=False),
                       torch.full((1, 3, 8, 8), 3.0))
    out = tw.sample(
        tw.TwinUNet("T").eval(), torch.rand(1, 3, 8, 8), tw.cosine_tables(), num_steps=3)
    assert out.shape == (1, 3, 8, 8) and torch.equal(out, torch.zeros_like(out))  # zero-init net


@pytest.mark.slow
def test_compiled_train_step_matches_eager():
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    losses = []
    for compile_ in (False, True):
        torch.manual_seed(1)
        model = tw.TwinUNet("T")
        step = tw.make_train_step(model, torch.optim.Adam(model.parameters(), 1e-3),
                                  tw.cosine_tables(), compile=compile_)
        torch.manual_seed(2)
        losses.append([float(step(x0, x0 * 0.5)) for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
