"""The command line: locked configs, one-line errors, modes."""
from __future__ import annotations

import os

import pytest

from tests.helpers import run_cli


def _one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(("error:", "FATAL")), err
    for f in fragments:
        assert f in last, last


@pytest.mark.parametrize("override, fragments", [
    ("--config.train.num_stpes=5", ("num_stpes",)),
    ("--config.train.num_steps=abc", ("train.num_steps",)),
    ("--config.bridge.lam=-1", ("bridge.lam",)),
    ("--config.bridge.preset=ddpm", ("bridge.preset",)),
    ("--config.model.size=XL", ("model.size",)),
])
def test_bad_config_rejected_with_one_line(tmp_path, override, fragments):
    proc = run_cli("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", override)
    _one_line_error(proc, *fragments)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_config_file(tmp_path):
    _one_line_error(run_cli("--config=configs/nope.py", f"--workdir={tmp_path}"), "configs/nope.py", "no such config file")


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _one_line_error(run_cli("--config=configs/demo.py:tiny", f"--workdir={blocker}/run"), "workdir", str(blocker))


def test_eval_without_checkpoint(tmp_path):
    _one_line_error(run_cli("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--mode=eval"),
                    "no checkpoint")
