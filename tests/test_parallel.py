"""Data parallelism: 8 host CPU devices give the same losses, restorations and eval order as 1."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from tests.helpers import REPO

SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from jax.sharding import Mesh
    from rdbm_jax import distributed, models, train
    from tests.helpers import config
    assert len(jax.devices()) == 8, jax.devices()
    cfg = config(**{"optim.warmup_steps": 0})
    model = models.create_model(cfg.model)
    step = train.make_train_step(train.make_loss_fn(model, train.make_schedule(cfg.bridge), cfg.bridge, "l1"))
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (1, 8, 32, 32, 3)).astype(np.float32)  # 1 step per dispatch, batch 8
    batch = {"x0": x0, "mu": np.clip(x0 * 0.5 + 0.3, -1, 1).astype(np.float32)}
    out = {}
    for n in (1, 8):
        mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
        repl, shard = distributed.replicated(mesh), distributed.batch_sharding(mesh, 1)
        f = jax.jit(step, in_shardings=(repl, shard, repl), out_shardings=(repl, repl, repl))
        state = train.init_state(cfg, mesh)
        b = {k: jax.device_put(v, shard) for k, v in batch.items()}
        losses = []
        for _ in range(2):
            state, m, _ = f(state, b, jax.random.PRNGKey(1))
            losses.append(float(m.compute()["loss"]))
        out[n] = {"losses": losses, "w": float(np.asarray(jax.tree_util.tree_leaves(state.params)[0]).sum())}
    # Restoration sharded over 8 devices (batch 3: padded to 8) and the eval order vs 1 device.
    from rdbm_jax import evaluate, sde
    from rdbm_jax.restore import Restorer
    apply = lambda p, x, m, t: jax.numpy.tanh(m * p + x * 0.1)
    rng = np.random.default_rng(1)
    images = [rng.uniform(-1, 1, (24, 40, 3)).astype(np.float32) for _ in range(3)]
    images.append(rng.uniform(-1, 1, (16, 16, 3)).astype(np.float32))
    source = [{"x0": img * 0.9, "mu": img, "name": f"im{i}", "task": "t"} for i, img in enumerate(images)]
    cfg.sample.batch_size = 3
    for n in (1, 8):
        mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
        restorer = Restorer(apply, sde.make_schedule(100), num_steps=4, multiple=8, mesh=mesh, eta=1.0)
        rows, per_task, _ = evaluate.score_sources(restorer, 1.5, {"t": source}, cfg, jax.random.PRNGKey(0))
        out[n]["eval"] = [(r["name"], r["psnr"]) for r in rows]
    print("RESULT" + json.dumps(out))
""")


@functools.lru_cache(maxsize=1)
def _run() -> dict:
    """One subprocess with 8 host CPU devices computes everything the tests below compare."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT")[1])


def test_eight_devices_match_one_device():
    out = _run()
    np.testing.assert_allclose(out["1"]["losses"], out["8"]["losses"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["1"]["w"], out["8"]["w"], atol=1e-4, rtol=1e-5)
    assert out["1"]["losses"][1] != out["1"]["losses"][0]  # the second dispatch saw updated parameters


def test_eval_order_and_values_same_on_eight_devices():
    out = _run()
    assert [n for n, _ in out["8"]["eval"]] == ["im0", "im1", "im2", "im3"]
    np.testing.assert_allclose([p for _, p in out["1"]["eval"]], [p for _, p in out["8"]["eval"]], atol=1e-4)
