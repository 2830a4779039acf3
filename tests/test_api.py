"""The Python API (rdbm_jax.load → TrainedModel.restore) and the README's examples, run as
written."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import rdbm_jax
from rdbm_jax import program
from tests.helpers import REPO


def readme_block(marker: str) -> str:
    """The code of the fenced block right after `<!-- marker -->` in README.md."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no {marker} block"
    return match.group(1)


@pytest.fixture(scope="module")
def model(trained_run):
    return rdbm_jax.load(trained_run)


def test_import_is_light_and_names_are_public():
    code = ("import sys, rdbm_jax; "
            "print(sorted(m for m in ('jax', 'flax', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "[]"
    assert set(rdbm_jax.__all__) == {"TrainedModel", "load", "load_exported", "schedules", "sde"}
    assert all(getattr(rdbm_jax, name) is not None for name in rdbm_jax.__all__)


def test_readme_api_example_runs_and_matches_the_restorer(trained_run, model, capsys):
    code = readme_block("test:readme-api").replace('"/tmp/rdbm_demo"', repr(trained_run))
    ns: dict = {}
    exec(compile(code, "README.md:test:readme-api", "exec"), ns)
    photo, restored, batch = ns["photo"], ns["restored"], ns["batch"]
    assert restored.shape == photo.shape == (72, 100, 3) and restored.dtype == np.uint8
    assert batch.shape == (2, 72, 100, 3) and batch.dtype == np.uint8
    assert ns["other"].shape == photo.shape and not np.array_equal(ns["other"], restored)
    assert capsys.readouterr().out.split()[0] == "2"  # model.step
    # The API is the package's restorer with [0, 255] ↔ [-1, 1] around it.
    r = program.build_sampler(model.config, model.mesh)
    want = r(model.params, photo[None].astype(np.float32) / 127.5 - 1.0,
             jax.random.fold_in(jax.random.PRNGKey(0), 0))
    want = np.rint(np.clip((want[0] + 1) / 2, 0, 1) * 255)
    assert np.abs(restored.astype(np.float32) - want).max() <= 1
    # same image, same key (chunks of sample.batch_size=1)
    np.testing.assert_array_equal(batch[0], restored)


def test_readme_sde_example_runs(capsys):
    exec(compile(readme_block("test:readme-sde"), "README.md:test:readme-sde", "exec"), {})
    assert float(capsys.readouterr().out.strip()) < 1e-6


def test_gray_in_gray_out_file_paths_and_repr(model, tmp_path):
    """Gray in → gray out (PIL's RGB → L weights of the restored RGB); paths give PIL images."""
    gray = (np.random.RandomState(1).rand(20, 24) * 255).astype(np.uint8)
    as_rgb = model.restore(np.repeat(gray[..., None], 3, -1))
    luma = as_rgb.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    flat = model.restore(gray)
    assert flat.shape == (20, 24) and flat.dtype == np.uint8 and np.abs(flat - luma).max() <= 1
    np.testing.assert_array_equal(model.restore(gray[..., None])[..., 0], flat)  # [H, W, 1] kept
    np.testing.assert_array_equal(model.restore(np.dstack([as_rgb, as_rgb[..., :1]])),
                                  model.restore(as_rgb))  # RGBA: alpha dropped
    pil = model.restore(Image.fromarray(gray))
    assert pil.mode == "L" and np.array_equal(np.asarray(pil), flat)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.repeat(gray[..., None], 3, -1)).save(tmp_path / "rgb.jpg", quality=95)
    by_path = model.restore(str(tmp_path / "gray.png"))
    assert by_path.mode == "L" and np.array_equal(np.asarray(by_path), flat)
    assert model.restore(tmp_path / "rgb.jpg").mode == "RGB"  # os.PathLike
    assert repr(model) == ("TrainedModel(step=2, size='T', bridge='rdbm', NFE=2, eta=0, "
                           "condition='mu_mask_mixfill', ema=True)")


def test_restore_kinds_and_errors(trained_run, model):
    img = np.random.RandomState(0).rand(20, 24, 3).astype(np.float32)
    out = model.restore(img)  # float [0, 1] in → float [0, 1] out, odd size padded inside
    assert out.dtype == np.float32 and out.shape == (20, 24,
                                                     3) and 0 <= out.min() and out.max() <= 1
    pil = model.restore(Image.fromarray((img * 255).astype(np.uint8)))
    assert isinstance(pil, Image.Image) and pil.size == (24, 20) and pil.mode == "RGB"
    both = model.restore([img, img[:18]])  # sizes may differ (both pad to 24 × 24: one compilation)
    assert [o.shape for o in both] == [(20, 24, 3), (18, 24, 3)]
    with pytest.raises(ValueError, match="num_steps=500"):
        model.restore(img, num_steps=500)
    with pytest.raises(ValueError, match="eta=2"):
        model.restore(img, eta=2.0)
    with pytest.raises(ValueError, match="tile_size=12"):
        model.restore(img, tile_size=12)
    with pytest.raises(ValueError, match="mask: shape"):
        model.restore(img, mask=np.zeros((20, 25)))  # the demo model reads the mask: it must fit
    hole = np.zeros(img.shape[:2], np.float32)
    hole[4:9, 5:12] = 1
    kept = model.restore(img, mask=hole)  # x̂0 = μ outside the given mask
    np.testing.assert_allclose(kept[hole == 0], np.asarray(img)[hole == 0], atol=1e-6)
    with pytest.raises(ValueError, match="step=7"):
        rdbm_jax.load(trained_run, step=7)
    raw = rdbm_jax.load(trained_run, step=2, use_ema=False)
    assert raw.step == 2 and not np.allclose(jax.tree_util.tree_leaves(raw.params)[0],
                                             jax.tree_util.tree_leaves(model.params)[0])
