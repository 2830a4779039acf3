"""Data parallelism: 8 host CPU devices give the same losses, restorations and eval order as 1."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration  # the 8-device side runs in a second process


def _train(cfg, mesh, rng: np.random.Generator) -> dict:
    """Losses of 2 train dispatches on a global batch of 8 and the parameters' checksum after."""
    import jax

    from rdbm_jax import program, train
    from rdbm_jax.runtime import distributed
    prog = program.program(cfg, mesh)
    x0 = rng.uniform(-1, 1, (1, 8, 32, 32, 3)).astype(np.float32)  # global batch 8
    batch = distributed.global_batch(
        mesh, {
            "x0": x0, "mu": np.clip(x0 * 0.5 + 0.3, -1, 1).astype(np.float32), "mask": np.ones(
                x0.shape[:-1] + (1,), np.float32)
        }, 1)
    state, losses = prog.init(program.init_key(cfg.seed)), []  # as train.py initialises it
    for _ in range(2):
        state, m, _ = prog.step(state, batch, jax.random.PRNGKey(1))
        losses.append(float(m.compute()["loss"]))
    return {"losses": losses, "checksum": train.param_checksum(state.params)}


class OneTestSet(list):
    """Examples of task "t"'s only test set, read as score_sources reads a data.EvalSource."""
    task = "t"
    test_set = "t"
    label = "t"


def probe(n_devices: int, train_too: bool) -> dict:
    """Evaluate 4 images (and, with `train_too`, train 2 dispatches first) on a mesh of the first
    `n_devices` devices."""
    import jax
    from jax.sharding import Mesh

    from rdbm_jax import sde
    from rdbm_jax.evaluation import scoring
    from rdbm_jax.sampler import Sampler, SamplingSpec
    from tests.helpers import config

    cfg = config()
    mesh = Mesh(np.asarray(jax.devices()[:n_devices]), ("data",))
    out = _train(cfg, mesh, np.random.default_rng(0)) if train_too else {}
    rng = np.random.default_rng(1)
    # Restoration sharded over the devices (batches of 3: padded to 8) and the eval order.
    apply = lambda p, x, m, t: jax.numpy.tanh(m * p + x * 0.1)
    images = [rng.uniform(-1, 1, (24, 40, 3)).astype(np.float32) for _ in range(3)]
    images.append(rng.uniform(-1, 1, (16, 16, 3)).astype(np.float32))
    source = OneTestSet({"x0": img * 0.9, "mu": img, "name": f"im{i}", "task_name": "t"}
                        for i, img in enumerate(images))
    cfg.sample.batch_size = 3
    restorer = Sampler(apply, sde.make_schedule(100), SamplingSpec(4, eta=1.0), multiple=8,
                       mesh=mesh)
    rows, _, _ = scoring.score_sources(restorer, 1.5, {"t": source}, cfg, jax.random.PRNGKey(0))
    out["eval"] = [(r["name"], r["psnr"]) for r in rows]
    return out


@functools.lru_cache(maxsize=2)
def results(train_too: bool) -> tuple[dict, dict]:
    """(1 device in this process, 8 host CPU devices in a subprocess); the fast test evaluates
    only, so it compiles no train step on either side."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    code = (
        "import json, jax; from tests.test_parallel import probe; assert len(jax.devices()) == 8; "
        f"print('RESULT' + json.dumps(probe(8, {train_too})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return probe(1, train_too), json.loads(proc.stdout.split("RESULT")[1])


@pytest.mark.slow  # an 8-device second process: ~35 s
def test_eight_devices_match_one_device():
    one, eight = results(True)
    np.testing.assert_allclose(one["losses"], eight["losses"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(one["checksum"], eight["checksum"], rtol=1e-5)
    assert one["losses"][1] != one["losses"][0]  # the second dispatch saw updated parameters


def test_eval_order_and_values_same_on_eight_devices():
    one, eight = results(False)
    assert [n for n, _ in eight["eval"]] == ["im0", "im1", "im2", "im3"]
    np.testing.assert_allclose([p for _, p in one["eval"]], [p for _, p in eight["eval"]],
                               atol=1e-4)
