"""The command line: locked configs, one-line errors, modes."""
from __future__ import annotations

import os

import pytest

from rdbm_jax import main
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
    _one_line_error(run_cli("--config=configs/nope.py", f"--workdir={tmp_path}"), "configs/nope.py",
                    "no such config file")


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _one_line_error(run_cli("--config=configs/demo.py:tiny", f"--workdir={blocker}/run"), "workdir",
                    str(blocker))


def test_eval_without_checkpoint(tmp_path):
    _one_line_error(
        run_cli("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--mode=eval"),
        "no checkpoint")


def test_help_exits_0_with_modes_configs_variants_and_print_config():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    from rdbm_jax.cli_help import MODE_HELP
    from rdbm_jax.main import MODES

    assert set(MODES) == set(MODE_HELP)  # every mode is described, and only those
    for mode in MODES:
        assert f"  {mode} " in out
    for name in ("default.py", "demo.py", "inpaint.py", "universal.py", "udc.py",
                 "edges2handbags.py"):
        assert f"  {name} " in out
    assert "common.py" not in out  # a helper module, not a config
    assert "Demo: inpainting on the built-in photographs" in out  # the file's one-line docstring
    assert ":T|S|B|L model size (default L)" in out and ":poled|toled" in out  # universal's, udc's
    assert "--mode=print_config" in out and "usage:" in out and "Traceback" not in proc.stderr


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path):
    proc = run_cli("--config=configs/inpaint.py:S", "--mode=print_config",
                   "--config.train.num_steps=7")
    assert proc.returncode == 0, proc.stderr
    assert "size: S" in proc.stdout and "num_steps: 7" in proc.stdout
    bad = run_cli("--config=configs/demo.py", "--mode=print_config", "--config.bridge.lam=-1")
    _one_line_error(bad, "bridge.lam")
    assert bad.returncode == 2


def test_missing_dataset_is_a_config_error_and_leaves_no_workdir(tmp_path):
    """Exit 2 (the config is unusable) and nothing created: the data folders are checked first."""
    workdir = tmp_path / "run"
    proc = run_cli("--config=configs/inpaint.py:tiny", f"--workdir={workdir}",
                   f"--config.data.root={tmp_path / 'no_data'}")
    _one_line_error(proc, "image folder not found", "data.tasks.inpaint.train.dir")
    assert proc.returncode == 2
    assert not workdir.exists()  # no empty workdir holding .lock


@pytest.mark.parametrize("overrides, fragment", [
    ((), "sample.input_dir"),  # not set
    (("--config.sample.input_dir=/no/such/folder",), "sample.input_dir: folder not found"),
])
def test_sample_without_its_input_folder_is_a_config_error(tmp_path, overrides, fragment):
    proc = run_cli("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--mode=sample",
                   f"--config.sample.output_dir={tmp_path / 'out'}", *overrides)
    _one_line_error(proc, fragment)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()


# --- messages: the full unknown key; one line whatever the name holds -----------------------------

def test_an_unknown_override_names_the_full_key_as_unknown(tmp_path):
    proc = run_cli("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--config.optim.lr=1")
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key optim.lr (--config.optim.lr): no such key "
        "(configs/default.py lists every key)"], proc.stderr


def test_main_never_splits_an_error_line(capsys):
    with pytest.raises(SystemExit):
        main._fail("cannot read /in/bad\nname.png")
    assert capsys.readouterr().err == "error: cannot read /in/bad\\nname.png\n"
