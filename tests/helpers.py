"""Shared test utilities: tiny configs, running the CLI, reading metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections

from rdbm_jax.config_files import sibling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def config(name: str = "demo", arg: str | None = "tiny", **overrides) -> ml_collections.ConfigDict:
    """configs/<name>.py:<arg> with dotted-key overrides, e.g. config(**{"train.num_steps": 4})."""
    cfg = sibling(os.path.join(CONFIGS, "x.py"), name).get_config(arg)
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """python -m rdbm_jax.main ARGS… from the repo root; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "rdbm_jax.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def read_metrics(workdir: str) -> list[dict]:
    """Rows of <workdir>/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_rows(workdir: str) -> dict[int, float]:
    """step → train/loss of a run's metrics log."""
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


# A training run in a child process, with a hook (Python source defining `hook(step, state)`, run
# after every dispatch) that can kill it (`os.kill(os.getpid(), signal.SIGKILL)`) at a chosen
# moment. Logs like the CLI; an RDBMError exits 1 with one `error:` line.
_TRAIN_SCRIPT = """
import logging, os, random, signal, sys, threading, time
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", force=True)
logging.getLogger("rdbm_jax").setLevel(logging.INFO)
from rdbm_jax import checkpoints, train
from rdbm_jax.errors import RDBMError
from tests.helpers import config
workdir = {workdir!r}
{hook}
try:
    train.train_and_evaluate(config(**{overrides!r}), workdir, hooks=[hook])
except RDBMError as e:
    sys.stderr.write(f"error: {{e}}\\n")
    sys.exit(1)
"""


def train_argv(workdir: str, overrides: dict, hook: str) -> list[str]:
    """argv of a child training run of configs/demo.py:tiny + `overrides` in `workdir` with
    `hook`."""
    script = _TRAIN_SCRIPT.format(workdir=workdir, overrides=overrides, hook=hook)
    return [sys.executable, "-c", script]


def train_in_subprocess(workdir: str, overrides: dict, hook: str,
                        timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `train_argv(…)` from the repo root to its end (or its kill); returns the finished
    process."""
    return subprocess.run(train_argv(workdir, overrides, hook), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


# matplotlib's default colour cycle (tab10): the n-th line of an axes is drawn in MPL_CYCLE[n].
MPL_CYCLE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
             (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def assert_line_plot(path: str, size: tuple[int, int], lines: int, panels: int = 2) -> None:
    """`path` is a PNG of `size` (W, H) whose `panels` side-by-side axes each draw exactly `lines`
    lines in the default colours (markers and line cores keep the exact colour)."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    assert (img.shape[1], img.shape[0]) == size, (img.shape, size)
    width = img.shape[1] // panels
    for p in range(panels):
        strip = img[:, p * width:(p + 1) * width]
        counts = [int((np.abs(strip - np.array(c)).max(axis=-1) <= 8).sum()) for c in MPL_CYCLE]
        # Gray (the 8th colour) is also the colour of grids and reference lines: not counted.
        gray = (127, 127, 127)
        drawn = [n for n, count in enumerate(counts) if count >= 20 and MPL_CYCLE[n] != gray]
        assert drawn == list(range(lines)), f"{path} panel {p}: colours {drawn} ({counts})"


def bridge_pair(seed: int, shape: tuple[int, ...] = (2, 4, 4, 3)):
    """(x0, μ) float32 in [-1, 1]: x0 uniform, μ = x0 + 0.4·noise clipped (the bridge tests'
    pair)."""
    import jax.numpy as jnp
    import numpy as np
    r = np.random.default_rng(seed)
    x0 = r.uniform(-0.9, 0.9, shape)
    mu = np.clip(x0 + 0.4 * r.standard_normal(shape), -1, 1)
    return jnp.asarray(x0, jnp.float32), jnp.asarray(mu, jnp.float32)
