"""`--mode=export`: the exported restorer runs where flax and this package cannot be imported, and
matches the in-package restorer."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from rdbm_jax.runtime import distributed
from rdbm_jax import export
from rdbm_jax.errors import ConfigError
from rdbm_jax import program
from rdbm_jax.inference import load_trained
from tests.helpers import config

pytestmark = pytest.mark.integration  # export runs and a subprocess that must run without flax

# Run by the subprocess: block every package the artifact must not need, then load and run it.
LOADER_SCRIPT = textwrap.dedent('''
    import importlib.abc, sys
    BLOCKED = {"flax", "rdbm_jax", "ml_collections", "grain", "orbax", "optax", "clu", "tensorflow",
               "torch"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    export_dir, inputs, outputs = sys.argv[1:4]
    sys.path.insert(0, export_dir)
    import numpy as np
    from export_loader import load

    restore = load(export_dir + "/restorer.jax")
    data = np.load(inputs)
    key = np.asarray(data["key"], np.uint32)
    out = {name: restore.raw(data[name], data[name + "_mask"], key) for name in ("a", "b")}
    out["uint8"] = restore(data["uint8"], seed=3)
    gray = data["uint8"][..., 0]
    out["gray"] = restore(gray, seed=3)                                  # [H, W] in → [H, W] out
    out["gray1"] = restore(gray[..., None], seed=3)                      # [H, W, 1] → [H, W, 1]
    out["gray_as_rgb"] = restore(np.repeat(gray[..., None], 3, -1), seed=3)
    rgba = np.concatenate([data["uint8"], np.full_like(gray[..., None], 7)], -1)
    out["rgba"] = restore(rgba, seed=3)
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    assert not loaded, loaded
    np.savez(outputs, num_steps=restore.info["num_steps"], **out)
''')


@pytest.mark.slow  # an export and a flax-free subprocess: ~40 s; the other export tests stay fast
def test_exported_restorer_runs_without_flax_and_matches(trained_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_run, workdir)
    # stochastic: the key is an input of the artifact (fusion takes η = 0 only)
    cfg = config(**{"sample.eta": 0.5, "sample.fuse": False})
    path = export.run_export(cfg, workdir)
    export_dir = os.path.dirname(path)
    assert sorted(os.listdir(export_dir)) == ["export_loader.py", "restorer.jax", "restorer.json"]
    info = json.load(open(os.path.join(export_dir, "restorer.json")))
    assert info["platforms"] == ["cpu", "cuda"] and info["eta"] == 0.5 and info["step"] == 2

    rs = np.random.RandomState(0)
    inputs = {"a": rs.uniform(-1, 1, (2, 20, 28, 3)).astype(np.float32),  # not multiples of 8
              "b": rs.uniform(-1, 1, (1, 32, 16, 3)).astype(np.float32),
              "uint8": rs.randint(0, 256, (32, 16, 3)).astype(np.uint8),  # b's shape: compiled once
              "key": np.asarray(jax.random.PRNGKey(7))}
    for name in ("a", "b"):  # the demo model reads the inpainting mask: a random one per image
        inputs[name + "_mask"] = (rs.uniform(size=inputs[name].shape[:3] + (1,))
                                  < 0.3).astype(np.float32)
    np.savez(tmp_path / "in.npz", **inputs)
    script = tmp_path / "run_exported.py"
    script.write_text(LOADER_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), export_dir, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert int(got["num_steps"]) == cfg.sample.num_steps

    mesh = distributed.make_mesh()
    model, schedule, params, _ = load_trained(cfg, workdir, mesh)
    restorer = program.build_sampler(cfg, mesh)
    for name in ("a", "b"):
        want = restorer(params, inputs[name], jax.random.PRNGKey(7), mask=inputs[name + "_mask"])
        assert got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, atol=1e-5)
        assert np.abs(got[name] - inputs[name]).max() > 1e-3  # it did restore something
    want_u8 = restorer(params, inputs["uint8"][None].astype(np.float32) / 127.5 - 1,
                       jax.random.PRNGKey(3))[0]
    want_u8 = np.rint(np.clip((want_u8 + 1) / 2, 0, 1) * 255)
    assert np.abs(got["uint8"].astype(np.float32) - want_u8).max() <= 1  # rounding at .5 may differ
    # 1 and 4 channels as the API takes them: gray in → gray out (PIL's weights), alpha dropped
    np.testing.assert_array_equal(got["rgba"], got["uint8"])
    assert got["gray"].shape == (32, 16) and got["gray1"].shape == (32, 16, 1)
    np.testing.assert_array_equal(got["gray1"][..., 0], got["gray"])
    luma = got["gray_as_rgb"].astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    # luma of rounded RGB
    assert got["gray"].dtype == np.uint8 and np.abs(got["gray"] - luma).max() <= 1


def test_export_refuses_tiling(trained_run):
    cfg = config(**{"sample.tile_size": 16, "sample.tile_overlap": 4})
    mesh = distributed.make_mesh()
    model, schedule, params, _ = load_trained(cfg, trained_run, mesh)
    with pytest.raises(ConfigError, match="sample.tile_size=16"):
        export.restoration_fn(program.build_sampler(cfg, mesh), params)
