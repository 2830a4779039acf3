"""Second start: a CLI run again with the persistent compilation cache warm, cold, and off.

    python -m benchmarks.second_start [--config=configs/demo.py:tiny] [--out=second_start.json]

Trains a 2-step run, then times `--mode=eval` and a fresh 2-step training run three ways: the cache
off (`''`), the first run in an empty cache folder, and the second run in that folder. Each run is
its own process: wall seconds and CPU seconds (user + system of the child, robust to other jobs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_run(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run `python -m rdbm_jax.main ARGS` to completion: {wall_s, cpu_s}; raises on a failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rdbm_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.py:tiny")
    p.add_argument("--out", default="")
    opts = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=REPO)
    tmp = tempfile.mkdtemp(prefix="rdbm_second_start_")
    steps = ["--config.train.num_steps=2", "--config.train.checkpoint_every=2",
             "--config.train.eval_every=0"]
    trained = os.path.join(tmp, "trained")
    timed_run([f"--config={opts.config}", f"--workdir={trained}", *steps,
               "--config.train.compilation_cache_dir="], env)
    results = {}
    for setting, label in (("", "off"), (os.path.join(tmp, "cache"), "first"),
                           (os.path.join(tmp, "cache"), "second")):
        cache = f"--config.train.compilation_cache_dir={setting}"
        row = {"eval": timed_run([f"--config={opts.config}", f"--workdir={trained}", "--mode=eval",
                                  cache], env)}
        workdir = os.path.join(tmp, f"train_{label}")
        row["train"] = timed_run([f"--config={opts.config}", f"--workdir={workdir}", *steps, cache],
                                 env)
        results[label] = row
        print(label, json.dumps(row), flush=True)
    out = {"config": opts.config, "machine": os.environ.get("BENCH_MACHINE", ""), "runs": results}
    if opts.out:
        measure.write_json(opts.out, out)
    return out


if __name__ == "__main__":
    main()
