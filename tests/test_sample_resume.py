"""A sample run that keeps existing outputs restores the rest as an uninterrupted run did, noise
included (η = 1): each image's noise is keyed by its name, not its place in the run."""
import os
import shutil

import numpy as np
from PIL import Image

from rdbm_jax.restore_files import name_seed, run_restore_files
from tests.helpers import config


def _run(trained_workdir, src, out, seed=0):
    cfg = config(**{"sample.input_dir": str(src), "sample.output_dir": str(out),
                    "sample.eta": 1.0, "sample.fuse": False, "sample.batch_size": 4,
                    "seed": seed})
    return run_restore_files(cfg, trained_workdir)


def test_a_resumed_eta_1_run_gives_byte_identical_outputs(trained_workdir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rs = np.random.RandomState(3)
    names = ["a.png", "b.png", "c.png"]
    for name in names:  # one size: an uninterrupted run restores them as one batch before
        img = rs.randint(0, 200, (16, 16, 3)).astype(np.uint8)
        img[4:10, 5:12] = 255  # a white hole: restored (with noise), the rest is kept
        Image.fromarray(img).save(src / name)
    full, resumed, other = tmp_path / "full", tmp_path / "resumed", tmp_path / "other"
    assert _run(trained_workdir, src, full)["restored"] == 3
    resumed.mkdir()
    shutil.copy(full / "a.png", resumed / "a.png")  # the run was stopped after a.png
    assert _run(trained_workdir, src, resumed) == {"restored": 2, "skipped": 1, "failed": []}
    for name in names:
        assert (resumed / name).read_bytes() == (full / name).read_bytes(), name
    # the noise does change the outputs here (else the comparison above could not fail)
    _run(trained_workdir, src, other, seed=1)
    assert any((other / n).read_bytes() != (full / n).read_bytes() for n in names)


def test_name_seeds_are_stable_and_distinct():
    assert name_seed("sub/a") == name_seed("sub/a") == 241852505  # sha256: any machine
    assert len({name_seed(f"img_{i:04d}") for i in range(1000)}) == 1000
    assert all(0 <= name_seed(n) < 2**31 for n in ("", "é", "x" * 300))
