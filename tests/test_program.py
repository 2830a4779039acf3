"""program.py: programs cached on exactly what they read; inference loads only the parameters."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from rdbm_jax.checkpointing import checkpoints
from rdbm_jax import config as config_lib, inference, older_runs, program
from rdbm_jax.runtime import distributed
from rdbm_jax.errors import ConfigError
from tests.helpers import config


def test_a_program_is_shared_exactly_when_what_it_reads_agrees():
    mesh = distributed.make_mesh()
    base = program.program(config(), mesh)
    # Not read by the train program: evaluation, sampling, logging, data, step count of a constant
    # LR.
    for key, value in (("eval.ssim_window", "uniform"), ("sample.num_steps", 1),
                       ("train.log_every", 7), ("data.crop_size", 64), ("train.num_steps", 9)):
        assert program.program(config(**{key: value}), mesh) is base, key
    # Read by it: anything of model/bridge/optim, the loss, K, and the decay length of a cosine LR.
    for key, value in (("optim.b2", 0.95), ("bridge.lam", 0.05), ("model.dropout", 0.1),
                       ("train.loss", "l2"), ("train.steps_per_dispatch", 2),
                       ("train.t_sampling", "weighted")):
        assert program.program(config(**{key: value}), mesh) is not base, key
    cosine = {"optim.schedule": "cosine"}
    assert program.program(config(**cosine, **{"train.num_steps": 9}), mesh) is not \
        program.program(config(**cosine), mesh)


def test_a_sampler_is_shared_exactly_when_what_it_reads_agrees():
    mesh = distributed.make_mesh()
    base = program.build_sampler(config(), mesh)
    assert program.build_sampler(config(**{"sample.batch_size": 3, "optim.b2": 0.9}), mesh) is base
    assert program.build_sampler(config(), mesh, num_steps=base.num_steps) is base
    for key, value in (("sample.eta", 1.0), ("sample.clip", False), ("sample.tile_size", 32),
                       ("bridge.lam", 0.05), ("model.condition", "mu")):
        assert program.build_sampler(config(**{key: value}), mesh) is not base, key
    assert program.build_sampler(config(), mesh, eta=0.5).eta == 0.5


def test_load_trained_restores_the_ema_or_raw_parameters_only(trained_workdir):
    mesh = distributed.make_mesh()
    reader = checkpoints.Checkpointer(trained_workdir)  # what a resumed training run reads
    step, state = reader.restore_latest(program.program(config(), mesh).abstract)
    reader.close()
    for use_ema, want in ((True, state.ema_params), (False, state.params)):
        got = inference.load_trained(config(**{"sample.use_ema": use_ema}), trained_workdir, mesh)
        assert got.step == step
        for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(want),
                        strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ema, raw = (jax.tree_util.tree_leaves(t) for t in (state.ema_params, state.params))
    assert any(not np.array_equal(a, b) for a, b in zip(ema, raw))  # the two really differ


def test_precond_reads_sigma_data_per_task_and_checkpoints_must_match_it():
    """bridge.sigma_data: one value or task=value; bad values and missing tasks are one-line errors;
    a precond checkpoint refuses another ρ, other objectives ignore it; the loss is finite."""
    import pytest
    from rdbm_jax import config as config_lib
    from rdbm_jax.errors import ConfigError
    assert program.sigma_data_values("0.5", ["b", "a"]) == {"a": 0.5, "b": 0.5}
    assert program.sigma_data_values("a=1.3, b=0.2", ["b", "a"]) == {"a": 1.3, "b": 0.2}
    for bad, match in (("x", "not a number"), ("a=1", "no value for task"),
                       ("a=1,b=2,c=3", "unknown task"), ("a=0,b=1", "must be > 0")):
        with pytest.raises(ConfigError, match=match):
            program.sigma_data_values(bad, ["a", "b"])
    precond = {"bridge.parameterization": "precond", "sample.fuse": False}  # demo: fuse is on
    cfg = config(**precond, **{"bridge.sigma_data": "nope"})
    with pytest.raises(ConfigError, match="bridge.sigma_data"):
        config_lib.validate(cfg)
    ours = config(**precond, **{"bridge.sigma_data": "0.3"})
    config_lib.validate(ours)
    saved = {"bridge": {"parameterization": "precond", "sigma_data": "0.5"}}
    with pytest.raises(ConfigError, match="bridge.sigma_data"):
        inference.check_compatible(ours, saved, "ckpt/2")
    inference.check_compatible(config(**{"bridge.sigma_data": "0.3"}),
                             {"bridge": {"sigma_data": "0.5"}}, "c")
    mesh = distributed.make_mesh()
    assert program.build_sampler(ours, mesh).rho("main") == 0.3
    prog = program.program(ours, mesh)
    state = prog.init(program.init_key(0))
    model, schedule = program.network(ours)
    loss = program.make_loss_fn(model, schedule, ours.bridge, "l1", ours.model.condition, (0.3,))
    batch = {"x0": np.zeros((2, 8, 8, 3), np.float32), "mu": np.ones((2, 8, 8, 3), np.float32),
             "mask": np.ones((2, 8, 8, 1), np.float32), "task": np.zeros(2, np.int32)}
    # jit: one compilation costs about half of the op-by-op calls of an eager UNet forward
    assert np.isfinite(float(jax.jit(loss)(state.params, batch, jax.random.PRNGKey(0))))


def test_t_sampling_late_favours_large_t_and_starves_none():
    """"late": p(t) ∝ 1/(T − t) exactly, and 20 000 draws put t ≥ 80 in 69.4 % of them (binomial
    SD 0.33 %: the bound is 6 SDs), every draw in 0 … T−1."""
    T, n = 100, 20_000
    w = np.exp(np.asarray(program.t_log_weights("late", T), np.float64))
    p = 1.0 / (T - np.arange(T))
    np.testing.assert_allclose(w / w.sum(), p / p.sum(), rtol=1e-6)
    assert p[80:].sum() / p.sum() == pytest.approx(0.694, abs=1e-3)
    assert p[0] / p.sum() > 1e-3  # t = 0 still drawn
    t = np.asarray(program.draw_t(jax.random.PRNGKey(3), "late", T, n))
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() < T
    assert abs(np.mean(t >= 80) - p[80:].sum() / p.sum()) < 0.02
    with pytest.raises(ValueError, match="is not one of"):
        program.t_log_weights("early", T)


# slow: a chi-square check on 200 000 draws: ~22 s
@pytest.mark.slow
def test_t_sampling_uniform_is_the_original_draw_and_weighted_follows_its_density():
    """train.t_sampling: "uniform" draws exactly jax.random.randint's t (the loss unchanged bit for
    bit); "weighted" draws t with p(t) ∝ (t + 1)^(−1/2) (chi-square against the density)."""
    import jax.numpy as jnp
    T = 100
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(program.draw_t(key, "uniform", T, 64),
                                      jax.random.randint(key, (64,), 0, T))
    n = 200_000
    t = np.asarray(program.draw_t(jax.random.PRNGKey(1), "weighted", T, n))
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() < T
    p = (np.arange(T) + 1.0) ** -0.5
    p /= p.sum()
    w = np.exp(np.asarray(program.t_log_weights("weighted", T), np.float64))
    np.testing.assert_allclose(w / w.sum(), p, rtol=1e-6)
    assert not np.any(np.asarray(program.t_log_weights("uniform", T)))
    counts = np.bincount(t, minlength=T)
    chi2 = float(np.sum((counts - n * p) ** 2 / (n * p)))
    assert chi2 < 160, chi2  # 99 degrees of freedom: P(chi2 > 160) < 1e-4
    uniform_chi2 = float(np.sum((counts - n / T) ** 2 / (n / T)))
    assert uniform_chi2 > 10_000  # really not uniform: the test can fail
    assert abs(np.mean(t < 60) - p[:60].sum()) < 0.005  # ~76 % of the draws at t <= 59

    # The loss with "uniform" is the default loss, bit for bit; "weighted" draws other t.
    cfg = config()
    model, schedule = program.network(cfg)
    state = program.program(cfg, distributed.make_mesh()).init(program.init_key(0))
    rng, shape = np.random.default_rng(0), (4, cfg.data.crop_size, cfg.data.crop_size, 3)
    batch = {"x0": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
             "mu": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
             "mask": jnp.ones(shape[:3] + (1,), jnp.float32)}
    key, cond = jax.random.PRNGKey(3), cfg.model.condition
    # Parameters moved off the initialisation (zero output layer): the loss then depends on t.
    params = jax.tree_util.tree_map(lambda x: x + 0.05, state.params)
    losses = {kind: float(program.make_loss_fn(model, schedule, cfg.bridge, "l1", cond,
                                               t_sampling=kind)(params, batch, key))
              for kind in program.T_SAMPLINGS}
    default = float(program.make_loss_fn(model, schedule, cfg.bridge, "l1", cond)(
        params, batch, key))
    assert losses["uniform"] == default and losses["weighted"] != default


def test_an_older_runs_config_is_upgraded_in_one_place():
    """A saved config without the keys added since (older_runs.OLDER_RUNS) validates and builds the
    same sampling spec and training program as one that states their older behaviour."""
    import ml_collections

    cfg = config(**{"sample.fuse": False})
    old = cfg.to_dict()
    for key in older_runs.OLDER_RUNS:
        section, name = key.split(".")
        del old[section][name]
    old = ml_collections.ConfigDict(old)
    stated = ml_collections.ConfigDict(cfg.to_dict())
    for key, value in older_runs.OLDER_RUNS.items():
        section, name = key.split(".")
        stated[section][name] = value
    config_lib.validate(old)
    assert "fuse" not in old.sample  # validate reads an upgraded copy, the config stays as given
    assert program.sampling_spec(old) == program.sampling_spec(stated)
    assert program.program_spec(old) == program.program_spec(stated)
    assert older_runs.upgrade(stated) is stated  # nothing to fill: the config itself


def test_rho_is_resolved_by_rho_table_for_every_use():
    """network: precond only; sample: precond's, or fusion's (sample.fuse_sigma, else
    bridge.sigma_data); prior: bridge.sigma_data always. One lookup reads them."""
    from rdbm_jax.sampler import lookup_rho

    residual = config(**{"bridge.parameterization": "residual", "sample.fuse": False,
                         "bridge.sigma_data": "0.7"})
    assert program.rho_table(residual, "network") == () == program.rho_table(residual, "sample")
    assert program.rho_table(residual, "prior") == (("main", 0.7),)
    residual.sample.fuse = True
    assert program.rho_table(residual, "sample") == (("main", 0.7),)
    residual.sample.fuse_sigma = "main=0.2"
    assert program.rho_table(residual, "sample") == (("main", 0.2),)
    precond = config(**{"bridge.parameterization": "precond", "sample.fuse": False,
                        "bridge.sigma_data": "0.3"})
    assert program.rho_table(precond, "network") == (("main", 0.3),)
    assert lookup_rho((), "main", "k") == 1.0  # nothing reads ρ
    assert lookup_rho((("a", 0.5), ("b", 0.5)), None, "k") == 0.5  # one shared value
    with pytest.raises(ConfigError, match="^k: no ρ for task None"):
        lookup_rho((("a", 0.5), ("b", 0.6)), None, "k")
