"""A gs:// path without its file-system package (gcsfs): one line naming the path and the `gcs`
extra, exit 2, in every mode and the API (it was a 60-line ImportError traceback)."""
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

# gcsfs (and TensorFlow, epath's other route to gs://) made unimportable, as on a fresh install.
_BLOCK = "import sys; sys.modules['gcsfs'] = None; sys.modules['tensorflow'] = None; "
_CLI = _BLOCK + "from rdbm_jax import main; sys.argv[0] = 'rdbm_jax.main'; main.run()"
_API = _BLOCK + """
import rdbm_jax
from rdbm_jax.errors import ConfigError
try:
    rdbm_jax.load("gs://bucket/run")
except ConfigError as e:
    print("ConfigError:", e)
"""


def _run(code, *args):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO})


@pytest.mark.parametrize("mode", ["train", "eval", "sample", "sweep", "export"])
def test_every_mode_names_the_gcs_extra_in_one_line(mode, tmp_path):
    extra = []
    if mode == "sample":
        (tmp_path / "in").mkdir()
        from PIL import Image
        Image.new("RGB", (16, 16)).save(tmp_path / "in" / "a.png")
        extra = [f"--config.sample.input_dir={tmp_path / 'in'}",
                 f"--config.sample.output_dir={tmp_path / 'out'}"]
    proc = _run(_CLI, "--config=configs/demo.py:tiny", "--workdir=gs://bucket/run",
                f"--mode={mode}", *extra)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --workdir='gs://bucket/run': gs:// paths need the gcsfs package, "
                      "which is not installed: pip install -e \".[gcs]\" (or pip install gcsfs)"]
    assert not (tmp_path / "out").exists()


def test_a_gs_sample_folder_names_its_key(tmp_path):
    proc = _run(_CLI, "--config=configs/demo.py:tiny", f"--workdir={tmp_path / 'run'}",
                "--mode=sample", "--config.sample.input_dir=gs://bucket/in",
                f"--config.sample.output_dir={tmp_path / 'out'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: sample.input_dir='gs://bucket/in': gs:// paths need the gcsfs package")


def test_the_api_raises_one_clear_config_error():
    proc = _run(_API)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == ("ConfigError: workdir='gs://bucket/run': gs:// paths need the "
                                   "gcsfs package, which is not installed: pip install -e "
                                   "\".[gcs]\" (or pip install gcsfs)")


def test_the_gcs_extra_exists_and_the_launchers_install_it():
    setup = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
    assert re.search(r'"gcs": \["gcsfs', setup)
    pod = open(os.path.join(REPO, "launch", "tpu_pod.sh"), encoding="utf-8").read()
    assert "-e ~/rdbm_jax'[gcs]'" in pod
    slurm = open(os.path.join(REPO, "launch", "slurm_gpu.sbatch"), encoding="utf-8").read()
    assert 'pip install -q -e ".[gcs]"' in slurm
    page = open(os.path.join(REPO, "docs", "scaling_out.md"), encoding="utf-8").read()
    assert 'pip install -e ".[gcs]"' in page  # the object-store section names the extra
