"""Ctrl-C (a real SIGINT to a real command-line process) during sample, sweep, eval, export and
training's restore phase: one line saying what was finished and how to go on, exit 130, no
traceback."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO

# The command line in a child process, with one function wrapped so that the process raises SIGINT
# in itself at a chosen moment (as Ctrl-C in a terminal would). Two things make the moment exact
# whatever the machine's speed or load:
# - The child first gives SIGINT Python's own handler: a process started in the background by a
#   shell without job control (`cmd &` in a script, a CI step, nohup-like wrappers) inherits SIGINT
#   *ignored*, and Python then installs no KeyboardInterrupt handler, so the signal would do nothing
#   (the run went on to exit 0). Ctrl-C in a terminal always reaches a live handler.
# - The hook uses `signal.raise_signal`, which delivers the signal to the calling (main) thread and
#   handles it before returning, so KeyboardInterrupt comes out of the hook itself; the hook never
#   returns (if it did, the line after it fails the run with its own message).
_CHILD = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
{patch}
from rdbm_jax import main
sys.argv = ["rdbm_jax.main"] + {argv!r}
main.run()
"""

_NOT_DELIVERED = 'raise AssertionError("SIGINT did not interrupt the hook")'

_SIGINT_AT_SECOND_SAVE = f"""
from rdbm_jax.data import image_io
_save, _calls = image_io.save_image, []
def save(path, img):
    _calls.append(path)
    if len(_calls) == 2:  # the first output is written; the second is not begun
        signal.raise_signal(signal.SIGINT)
        {_NOT_DELIVERED}
    _save(path, img)
image_io.save_image = save
"""

_SIGINT_WHILE_RESTORING = f"""
from rdbm_jax.checkpointing import checkpoints
def restore_latest(self, *args, **kwargs):
    signal.raise_signal(signal.SIGINT)
    {_NOT_DELIVERED}
checkpoints.Checkpointer.restore_latest = restore_latest
"""

TINY = ["--config=configs/demo.py:tiny", "--config.train.num_steps=2",
        "--config.train.checkpoint_every=2", "--config.train.eval_every=0"]


def _run(patch: str, argv: list[str]) -> subprocess.CompletedProcess:
    """The command line with `patch` applied, started with SIGINT ignored: the worst case the
    suite itself may run under (see `_CHILD`), so the tests do not depend on how it was started."""
    code = _CHILD.format(patch=patch, argv=argv)
    ignoring = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, "-c", code]
    return subprocess.run(ignoring, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": REPO})


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The process's only `error:` line (and no traceback)."""
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _listing(folder: str) -> dict[str, int]:
    return {os.path.relpath(os.path.join(root, f), folder): os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(folder) for f in files}


def test_sigint_during_sample_says_what_was_written_and_a_rerun_finishes(trained_workdir,
                                                                         tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rs = np.random.RandomState(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rs.randint(0, 256, (16, 16, 3)).astype(np.uint8)).save(src / name)
    argv = TINY + [f"--workdir={trained_workdir}", "--mode=sample",
                   f"--config.sample.input_dir={src}", f"--config.sample.output_dir={out}"]
    line = _one_line(_run(_SIGINT_AT_SECOND_SAVE, argv))
    assert line == (f"error: interrupted (Ctrl-C): 1 of 3 output(s) were written to {out}, each "
                    "complete; run the same command again to restore the other 2 (finished "
                    "outputs are kept)")
    assert sorted(os.listdir(out)) == ["a.png"]  # no temporary file left
    again = _run("", argv)  # the same command finishes the job
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 3 outputs already exist" in again.stderr
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png"]


# Ctrl-C inside the mode's main work, for the modes that write their files at the end.
_SIGINT_IN = """
from rdbm_jax import {module}
def {name}(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)
    """ + _NOT_DELIVERED + """
{module}.{name} = {name}
"""


@pytest.mark.parametrize("mode, module, name, folder", [
    ("sweep", "sweep", "score_sources", "sweep"),
    ("eval", "evaluate", "score_sources", "eval"),
    ("export", "export", "export_restorer", "export"),
])
def test_sigint_during_sweep_eval_and_export_is_one_line(trained_workdir, mode, module, name,
                                                         folder):
    argv = TINY + [f"--workdir={trained_workdir}", f"--mode={mode}"]
    line = _one_line(_run(_SIGINT_IN.format(module=module, name=name), argv))
    assert line.startswith("error: interrupted (Ctrl-C): ") and "run the same command again" in line
    assert not os.path.exists(os.path.join(trained_workdir, folder))


def test_sigint_while_training_restores_its_checkpoint(trained_workdir):
    before = _listing(trained_workdir)
    argv = TINY + [f"--workdir={trained_workdir}", "--mode=train"]
    line = _one_line(_run(_SIGINT_WHILE_RESTORING, argv))
    assert line.startswith("error: interrupted (Ctrl-C) while training was loading or saving: "
                           "the checkpoints are intact; run the same command again to resume")
    after = _listing(trained_workdir)
    assert {k: v for k, v in after.items() if "checkpoints" in k} == \
        {k: v for k, v in before.items() if "checkpoints" in k}
