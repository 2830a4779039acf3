"""Test session set-up: one persistent XLA compilation cache shared by every test and subprocess."""
import os
import shutil
import sys
import tempfile

# Set before JAX is imported anywhere: subprocesses inherit it through the environment.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "rdbm_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import pytest  # noqa: E402


@pytest.fixture
def x64():
    """float64 inside one test only (does not leak into other tests)."""
    import jax
    with jax.enable_x64(True):
        yield


def _listing(folder: str) -> set[tuple[str, int, int]]:
    """(path, size, mtime) of every file under `folder`."""
    out = set()
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(root, name))
            out.add((os.path.relpath(os.path.join(root, name), folder), st.st_size, st.st_mtime_ns))
    return out


def _read_only_run(tmp_path_factory, name: str, checkpoint_every: int):
    """Train configs/demo.py:tiny for 2 steps once per session; yield the workdir; fail at the end
    of the session if a test wrote into it."""
    from rdbm_jax import train
    from tests.helpers import config

    workdir = str(tmp_path_factory.mktemp(name) / "run")
    train.train_and_evaluate(config(**{"train.num_steps": 2, "train.eval_every": 0,
                                       "train.checkpoint_every": checkpoint_every}), workdir)
    before = _listing(workdir)
    yield workdir
    changed = sorted(p for p, _, _ in before ^ _listing(workdir))
    assert not changed, f"tests wrote into the shared read-only run {workdir}: {changed[:10]}"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A workdir holding a 2-step checkpoint of configs/demo.py:tiny, trained once per session and
    READ-ONLY: a test that writes into it fails at the end of the session (tests that write use
    `trained_workdir`, a private copy)."""
    yield from _read_only_run(tmp_path_factory, "trained", checkpoint_every=2)


@pytest.fixture(scope="session")
def two_checkpoint_run(tmp_path_factory):
    """A READ-ONLY workdir of configs/demo.py:tiny with checkpoints at steps 1 and 2 (for the
    checkpoint-integrity and rotation tests, which copy it before they damage or delete a step)."""
    yield from _read_only_run(tmp_path_factory, "two_checkpoints", checkpoint_every=1)


@pytest.fixture
def trained_workdir(trained_run, tmp_path):
    """A private copy of `trained_run` for one test: eval, sample and sweep may write into it."""
    workdir = str(tmp_path / "trained")
    shutil.copytree(trained_run, workdir)
    return workdir
