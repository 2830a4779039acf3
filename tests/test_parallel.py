"""Data parallelism: 8 host CPU devices give the same training losses as 1 device."""
from __future__ import annotations

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
    x0 = rng.uniform(-1, 1, (2, 8, 32, 32, 3)).astype(np.float32)  # 2 steps per dispatch, batch 8
    batch = {"x0": x0, "mu": np.clip(x0 * 0.5 + 0.3, -1, 1).astype(np.float32)}
    out = {}
    for n in (1, 8):
        mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
        repl, shard = distributed.replicated(mesh), distributed.batch_sharding(mesh, 1)
        f = jax.jit(step, in_shardings=(repl, shard, repl), out_shardings=(repl, repl, repl))
        state = train.init_state(model, cfg, mesh)
        b = {k: jax.device_put(v, shard) for k, v in batch.items()}
        losses = []
        for _ in range(2):
            state, m, _ = f(state, b, jax.random.PRNGKey(1))
            losses.append(float(m.compute()["loss"]))
        out[n] = {"losses": losses, "w": float(np.asarray(jax.tree_util.tree_leaves(state.params)[0]).sum())}
    print("RESULT" + json.dumps(out))
""")


def test_eight_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT")[1])
    np.testing.assert_allclose(out["1"]["losses"], out["8"]["losses"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["1"]["w"], out["8"]["w"], atol=1e-4, rtol=1e-5)
    assert out["1"]["losses"][1] != out["1"]["losses"][0]  # the second dispatch saw updated parameters
