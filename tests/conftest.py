"""Test session set-up: one persistent XLA compilation cache shared by every test and subprocess."""
import os
import sys
import tempfile

# Set before JAX is imported anywhere: subprocesses inherit it through the environment.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "rdbm_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """A workdir holding a 2-step checkpoint of configs/demo.py:tiny (for eval/sample/sweep tests)."""
    from rdbm_jax import train
    from tests.helpers import config

    workdir = str(tmp_path_factory.mktemp("trained"))
    train.train_and_evaluate(config(**{"train.num_steps": 2, "train.checkpoint_every": 2,
                                       "train.eval_every": 0}), workdir)
    return workdir
