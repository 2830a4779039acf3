"""Shared test utilities: tiny configs, sample inputs, running the CLI, reading metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image

from rdbm_jax import config as config_lib
from rdbm_jax.config_files import sibling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def config(name: str = "demo", arg: str | None = "tiny", **overrides) -> ml_collections.ConfigDict:
    """configs/<name>.py:<arg> with dotted-key overrides, e.g. config(**{"train.num_steps": 4})."""
    cfg = sibling(os.path.join(CONFIGS, "x.py"), name).get_config(arg)
    return config_lib.put(cfg, overrides)


def write_png(path, h: int = 16, w: int = 16, value: int = 128) -> None:
    """A flat grey (or `value`) h×w RGB PNG at `path`, its folders made."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def sample_config(src, out, **overrides) -> ml_collections.ConfigDict:
    """The tiny config with sample.input_dir=`src`, sample.output_dir=`out` and `overrides`."""
    return config(**{"sample.input_dir": str(src), "sample.output_dir": str(out), **overrides})


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
from rdbm_jax.checkpointing import checkpoints
from rdbm_jax import train
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


# float64 unit round-off u = 2^-53: the relative error of one correctly rounded operation.
UNIT_ROUNDOFF = 2.0 ** -53


def statistics_tolerance(features) -> tuple[float, float]:
    """(mean, covariance) elementwise bounds on how far two float64 computations of the FID
    statistics of `features` [N, D] may differ (another summation order, batching or BLAS kernel).

    A sum of N terms of size <= m is off by <= N u m (Higham, Accuracy and Stability, §4.2), so two
    means differ by <= 2 N u max|f|. Each centred value c = f - mean carries that error e, so each
    product c_i c_j is off by <= 2 e max|c| plus the summation's N u max|c|^2; divided by N - 1
    (N / (N - 1) <= 2) and doubled for two computations.
    """
    import numpy as np
    f = np.asarray(features, np.float64)
    n = f.shape[0]
    big = float(np.abs(f).max())
    centred = float(np.abs(f - f.mean(axis=0)).max())
    mean_tol = 2 * n * UNIT_ROUNDOFF * big
    cov_tol = 2 * 2 * (2 * mean_tol * centred + n * UNIT_ROUNDOFF * centred ** 2)
    return mean_tol, cov_tol


def fid_tolerance(mu1, sigma1, mu2, sigma2, n: int) -> float:
    """A bound on how far two float64 computations of `fid.frechet_distance` may differ when their
    statistics (of n images each) differ by round-off and sqrtm runs on another CPU or BLAS.

    FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2). The eigenvalues l_i of A = S1 S2 are
    real and >= 0 (A is similar to S1^1/2 S2 S1^1/2). A perturbation of A of size d moves each l_i
    by about d, and so sqrt(l_i) by at most sqrt(l_i + d) - sqrt(l_i) (<= sqrt(d); <= d / 2
    sqrt(l_i) when l_i >> d). With fewer images than feature dimensions most l_i are 0 and sqrt
    turns d ~ 1e-19 into ~3e-10 per eigenvalue: no fixed relative tolerance holds across CPUs.
    d: the statistics carry a relative error of order n u and the Schur-based sqrtm a backward
    error of order D u, both relative to |S1| |S2|; the factor 4 covers the two statistics and
    the sensitivity of the eigenvalues of the non-symmetric product. The traces add (n + D) u of
    themselves, the mean term 4 n u (|mu1| + |mu2|)^2.
    """
    import numpy as np
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = s1.shape[0]
    u = UNIT_ROUNDOFF
    delta = 4 * (n + d) * u * np.linalg.norm(s1) * np.linalg.norm(s2)
    lam = np.clip(np.linalg.eigvals(s1 @ s2).real, 0.0, None)
    root = 2 * float(np.sum(np.sqrt(lam + delta) - np.sqrt(lam)))
    traces = (n + d) * u * float(np.abs(np.trace(s1)) + np.abs(np.trace(s2)))
    means = 4 * n * u * float(np.linalg.norm(mu1) + np.linalg.norm(mu2)) ** 2
    return root + traces + means
