"""Memory predicted before anything runs: an image whose restoration would not fit is tiled
automatically (one line saying so) or refused in one line naming sample.tile_size; a training batch
whose host buffers would not fit is refused in one line naming train.batch_size."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from rdbm_jax import api, sampler as sampler_lib, sde, train
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
