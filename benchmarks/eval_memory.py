"""Peak memory of `--mode=eval` against the number of test images (it must not grow with them).

    python -m benchmarks.eval_memory [--counts=10,60] [--size=512] [--out=eval_memory.json]

Writes `size`² random-texture PNGs (generated here, no download), trains a 2-step run of
configs/demo.py:tiny, then runs `--mode=eval` on the first N of the PNGs for each N in --counts
(degradation lowlight: a cheap classical baseline, CLAHE, so that the model, not the baseline,
dominates the time) and reports each process's peak resident set (ru_maxrss of that child alone),
after a 1-image run has filled the compilation cache (compiling takes memory of its own).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from benchmarks import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/demo.py:tiny"


def write_images(folder: str, count: int, size: int) -> None:
    """`count` smooth random RGB textures of size² pixels as PNGs named 0000.png, 0001.png, …"""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        img.save(os.path.join(folder, f"{i:04d}.png"))


def run(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """`python -m rdbm_jax.main ARGS` → {peak_rss_mib, cpu_s} of that process alone."""
    proc = subprocess.Popen([sys.executable, "-m", "rdbm_jax.main", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{err[-2000:]}")
    scale = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS
    return {"peak_rss_mib": round(usage.ru_maxrss * scale / 2**20, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="10,60")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--out", default="")
    opts = p.parse_args(argv)
    counts = [int(c) for c in opts.counts.split(",")]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=REPO)
    tmp = tempfile.mkdtemp(prefix="rdbm_eval_memory_")
    images, workdir = os.path.join(tmp, "images"), os.path.join(tmp, "run")
    write_images(images, max(counts), opts.size)
    run([f"--config={CONFIG}", f"--workdir={workdir}", "--config.train.num_steps=2",
         "--config.train.checkpoint_every=2", "--config.train.eval_every=0"], env)
    ev = "--config.data.tasks.main.eval"
    rows = []
    for n in [1] + counts:  # the first run (1 image) fills the compilation cache: all start warm
        row = {"num_images": n, **run([
            f"--config={CONFIG}", f"--workdir={workdir}", "--mode=eval", f"{ev}.kind=clean",
            f"{ev}.dir={images}", f"{ev}.degradation=lowlight", f"{ev}.eval_size={opts.size}",
            f"--config.eval.max_images={n}"], env)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"size": opts.size, "config": CONFIG, "rows": rows[1:]}
    if opts.out:
        measure.write_json(opts.out, out)
    return out


if __name__ == "__main__":
    main()
