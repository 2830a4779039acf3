"""Shared test utilities: tiny configs, running the CLI, reading metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections

from rdbm_jax.config import sibling

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
    return subprocess.run([sys.executable, "-m", "rdbm_jax.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def read_metrics(workdir: str) -> list[dict]:
    """Rows of <workdir>/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_rows(workdir: str) -> dict[int, float]:
    """step → train/loss of a run's metrics log."""
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}
