"""Multi-host path without a cluster (launch/local.sh: 2 CPU processes, gloo) and the TPU
launcher."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from rdbm_jax.checkpointing import checkpoints
from tests.helpers import REPO, read_metrics

pytestmark = pytest.mark.integration  # launch scripts and multi-process runs
ENV = {**os.environ, "PYTHON": sys.executable}


def _local(n: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "launch/local.sh", str(n), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=900)


def _checksums(workdir: str) -> list[str]:
    sums = []
    for i in range(2):
        log = open(os.path.join(workdir, "logs", f"process_{i}.log")).read()
        sums.append(re.findall(r"parameter checksum (\S+)", log)[-1])
    return sums


@pytest.mark.slow  # two training processes and a resume: ~130 s on the 2-core machine
def test_two_processes_train_identically_write_once_and_resume(tmp_path):
    workdir = str(tmp_path / "run")
    common = [
        "--config=configs/demo.py:tiny", f"--workdir={workdir}", "--config.train.checkpoint_every=2"
    ]
    proc = _local(2, *common, "--config.train.num_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _checksums(workdir)
    assert a == b  # data-parallel replicas hold identical parameters
    assert os.listdir(checkpoints.checkpoint_dir(workdir)) == ["2"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "2", "data"))) == [
        # each process's data state
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
    assert [f for f in os.listdir(workdir) if f.endswith(".jsonl")] == ["metrics.jsonl"]
    # images from process 0 only
    assert os.listdir(os.path.join(workdir, "samples")) == ["step_2.png"]
    rows = read_metrics(workdir)
    # one writer: no duplicated lines
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]

    proc = _local(2, *common, "--config.train.num_steps=3", "--config.train.eval_every=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in open(os.path.join(workdir, "logs", "process_0.log")).read()
    a, b = _checksums(workdir)
    assert a == b
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r] == [1, 2, 3]
    assert checkpoints.Checkpointer(workdir).latest_step() == 3


def test_launch_scripts_parse():
    for script in ("local.sh", "tpu_pod.sh", "slurm_gpu.sbatch"):
        proc = subprocess.run(["bash", "-n", os.path.join("launch", script)], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)
    sbatch = open(os.path.join(REPO, "launch", "slurm_gpu.sbatch")).read()
    assert "srun" in sbatch and "RDBM_DISTRIBUTED=auto" in sbatch and "rdbm_jax.main" in sbatch


def test_local_sh_usage_error():
    proc = subprocess.run(["bash", "launch/local.sh"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_tpu_pod_dry_run_prints_the_commands():
    proc = subprocess.run([
        "bash", "launch/tpu_pod.sh", "--name=rdbm", "--zone=us-central2-b",
        "--accelerator-type=v4-32", "--config=configs/universal.py:L", "--workdir=gs://bucket/run",
        "--dry-run", "--", "--config.train.num_steps=10"
    ], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create rdbm --zone=us-central2-b "
                               "--accelerator-type=v4-32")
    assert any("tpu-vm scp" in line and "--worker=all" in line for line in lines)
    run = lines[-1]
    assert "tpu-vm ssh rdbm" in run and "--worker=all" in run and "RDBM_DISTRIBUTED=auto" in run
    assert "rdbm_jax.main" in run and "gs://bucket/run" in run and "num_steps=10" in run
    missing = subprocess.run(["bash", "launch/tpu_pod.sh", "--name=x", "--dry-run"], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "required" in missing.stderr
