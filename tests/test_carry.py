"""experiments/carry.py: a run carried as a tar resumes exactly where the run itself would; what it
refuses (a run already there, members outside the run, an existing tar) leaves nothing behind."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from experiments import carry, recipes, scaling
from rdbm_jax import inference
from rdbm_jax.errors import DataError
from rdbm_jax.runtime import distributed
from rdbm_jax.train import param_checksum

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    """The demo at tiny shapes, 4 steps, a checkpoint every 2."""
    cfg = recipes.fold_config("demo", 0, 4, tiny=True)
    cfg.train.checkpoint_every = 2
    return cfg


@pytest.fixture(scope="module")
def paused(tmp_path_factory) -> str:
    """A run trained to step 2 of 4 (paused there, as the study pauses at a point)."""
    workdir = str(tmp_path_factory.mktemp("runs") / "demo_fold0")
    scaling.train_to(_config(), workdir, 2)
    return workdir


def _final(workdir: str) -> tuple[int, float]:
    """The newest checkpoint's step and its EMA parameters' checksum."""
    trained = inference.load_trained(_config(), workdir, distributed.make_mesh())
    return trained.step, param_checksum(trained.params)


def _names(tar: str) -> list[str]:
    with tarfile.open(tar) as t:
        return sorted(t.getnames())


def test_a_carried_run_resumes_to_the_same_state_as_the_run_itself(paused, tmp_path):
    """Carry the paused run, resume both copies to step 4: the same parameters, and the carried
    copy's CPU count goes on from the one carried with it."""
    here = str(tmp_path / "here" / "demo_fold0")
    shutil.copytree(paused, here)
    tar = str(tmp_path / "carry" / "demo_fold0.tar")
    assert carry.pack(here, tar) == 2
    names = _names(tar)
    assert {"demo_fold0/config.json", "demo_fold0/study_cpu.json"} <= set(names)
    assert not [n for n in names if "tensorboard" in n]
    assert {n.split("/")[2] for n in names if n.count("/") >= 2} == {"2"}
    there = carry.unpack(tar, str(tmp_path / "there"))
    assert there == str(tmp_path / "there" / "demo_fold0")
    assert os.listdir(tmp_path / "there") == ["demo_fold0"]  # no staging folder left
    counted = scaling.read_cpu(there)[2]
    scaling.train_to(_config(), here, 4)
    cpu, ran = scaling.train_to(_config(), there, 4)
    assert ran and cpu > counted
    assert _final(here) == _final(there)
    assert _final(there)[0] == 4


def test_pack_carries_the_newest_checkpoint_with_a_cpu_count(paused, tmp_path):
    """A newer checkpoint without a count (saved by an older script's stop signal) stays behind:
    the resumed run would otherwise count its CPU time from nothing."""
    run = str(tmp_path / "run")
    shutil.copytree(paused, run)
    scaling.train_to(_config(), run, 4)
    with open(os.path.join(run, scaling.CPU_FILE), encoding="utf-8") as f:
        counts = json.load(f)
    del counts["4"]
    with open(os.path.join(run, scaling.CPU_FILE), "w", encoding="utf-8") as f:
        json.dump(counts, f)
    assert carry.pack(run, str(tmp_path / "r.tar")) == 2
    os.remove(os.path.join(run, scaling.CPU_FILE))
    with pytest.raises(DataError, match="no complete checkpoint with a CPU count"):
        carry.pack(run, str(tmp_path / "none.tar"))
    assert not os.path.exists(tmp_path / "none.tar")


def test_pack_never_writes_over_a_file(paused, tmp_path):
    out = tmp_path / "mine.tar"
    out.write_bytes(b"a user's file")
    with pytest.raises(DataError, match="already exists"):
        carry.pack(paused, str(out))
    assert out.read_bytes() == b"a user's file"
    with pytest.raises(DataError, match="not a run directory"):
        carry.pack(str(tmp_path), str(tmp_path / "x.tar"))


def _tar_with(path: str, names: list[str]) -> str:
    """A tar holding a small file under each of `names`."""
    with tarfile.open(path, "w") as t:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 2
            t.addfile(info, io.BytesIO(b"{}"))
    return path


@pytest.mark.parametrize("names, why", [
    (["run/../../escape.json"], "outside its run directory"),
    (["/abs/config.json"], "outside its run directory|not one run directory"),
    (["a/config.json", "b/config.json"], "not one run directory"),
])
def test_unpack_refuses_members_outside_one_run(tmp_path, names, why):
    tar = _tar_with(str(tmp_path / "bad.tar"), names)
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match=why):
        carry.unpack(tar, str(runs))
    assert not runs.exists() or os.listdir(runs) == []
    assert not (tmp_path / "escape.json").exists()


def test_unpack_never_mixes_into_a_run_that_is_there(paused, tmp_path):
    tar = str(tmp_path / "c.tar")
    carry.pack(paused, tar)
    runs = tmp_path / "runs"
    (runs / "demo_fold0").mkdir(parents=True)
    (runs / "demo_fold0" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="already exists"):
        carry.unpack(tar, str(runs))
    assert os.listdir(runs / "demo_fold0") == ["mine.txt"]
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="not a readable tar"):
        carry.unpack(str(broken), str(runs))


def test_the_command_line_says_one_line_and_exits_2(tmp_path):
    tar = _tar_with(str(tmp_path / "two.tar"), ["a/x", "b/y"])
    run = subprocess.run([sys.executable, "-m", "experiments.carry", "unpack", "--tar", tar,
                          "--runs-dir", str(tmp_path / "runs")],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error: ")
    assert "not one run directory" in run.stderr
