"""One mask rule (data.masks.hole_mask) for the API, sample mode, training's mask files and the
exported loader: bool, all 0/1 or all 0/255; anything else refused by name; an unreadable mask
skips only its image."""
import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

import rdbm_jax
from rdbm_jax import export_loader
from rdbm_jax.data import masks
from rdbm_jax.data.pipeline import build_eval_sources
from rdbm_jax.data.spec import source_spec, task_spec
from rdbm_jax.errors import DataError
from rdbm_jax.restore_files import run_restore_files
from tests.helpers import config, sample_config, write_png

HOLE = np.zeros((20, 24), bool)
HOLE[4:9, 5:12] = True
ACCEPTED = {"bool": HOLE, "uint8 0/1": HOLE.astype(np.uint8),
            "uint8 0/255": HOLE.astype(np.uint8) * np.uint8(255),
            "float 0/1": HOLE.astype(np.float32), "float 0/255": HOLE * 255.0,
            "int 0/255": HOLE.astype(np.int64) * 255}
REFUSED = {"NaN": np.where(HOLE, np.nan, 0.0), "negative": np.where(HOLE, -1.0, 0.0),
           "soft": np.where(HOLE, 0.7, 0.0), "mixed 0/1/255": np.where(HOLE, 255, 1),
           "jpeg levels": np.where(HOLE, 252, 3).astype(np.uint8),
           "strings": np.where(HOLE, "a", "b")}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_accepted_kind_gives_the_same_holes(name):
    np.testing.assert_array_equal(masks.hole_mask(ACCEPTED[name], "mask"), HOLE)
    np.testing.assert_array_equal(export_loader.hole_mask(ACCEPTED[name]), HOLE)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_anything_else_is_refused_by_name_in_one_line(name):
    with pytest.raises(DataError, match=r"^mask: .*(NaN|not a mask)") as err:
        masks.hole_mask(REFUSED[name], "mask")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^mask: "):  # the exported loader's copy: the same rule
        export_loader.hole_mask(REFUSED[name])


def test_mask_rule_text_is_the_same_in_the_loader():
    assert export_loader.MASK_RULE == masks.MASK_RULE


def _save(path, levels):
    Image.fromarray(np.asarray(levels, np.uint8)).save(path)


def test_mask_files_holding_0_1_read_as_0_255_files(tmp_path):
    """Label tools export 0/1 PNGs: they read as the same holes as 0/255 files (they read as no
    hole at all before: 1/255 < 0.5)."""
    _save(tmp_path / "one.png", HOLE)
    _save(tmp_path / "full.png", HOLE * 255)
    for name in ("one.png", "full.png"):
        np.testing.assert_array_equal(masks.load_mask(str(tmp_path / name), 20, 24), HOLE)
    _save(tmp_path / "jpegish.png", np.where(HOLE, 250, 4))
    with pytest.raises(DataError, match=r"jpegish.png \(k\): values \{4, 250\} are not a mask"):
        masks.load_mask(str(tmp_path / "jpegish.png"), 20, 24, "k")
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[HOLE] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "red.png")
    with pytest.raises(DataError, match="red.png.*colours other than black and white"):
        masks.load_mask(str(tmp_path / "red.png"), 20, 24)


def test_an_all_black_mask_file_says_nothing_to_restore_once(tmp_path, caplog):
    _save(tmp_path / "black.png", np.zeros((20, 24)))
    with caplog.at_level(logging.WARNING, logger="rdbm_jax"):
        for _ in range(3):
            assert not masks.load_mask(str(tmp_path / "black.png"), 20, 24, "k").any()
    said = [r.getMessage() for r in caplog.records if "nothing to restore" in r.getMessage()]
    assert len(said) == 1 and "black.png" in said[0]


def test_training_reads_0_1_mask_files_by_the_same_rule(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((20, 24, 3), 60, np.uint8)).save(tmp_path / "clean" / "a.png")
    _save(tmp_path / "masks" / "m0.png", HOLE)  # 0/1
    spec = source_spec(kind="clean", dir=str(tmp_path / "clean"), degradation="inpaint",
                       mask_dir=str(tmp_path / "masks"))
    data = ml_collections.ConfigDict(dict(tasks=ml_collections.ConfigDict(dict(
        t=task_spec(spec, spec))), crop_size=8, flip="none", num_workers=0, prefetch_buffer=1,
        skip_bad_files=False))
    example = build_eval_sources(data)["t"][0]
    np.testing.assert_array_equal(example["mask"][..., 0] == 1, HOLE)
    np.testing.assert_array_equal(example["mu"][..., 0] == 1.0, HOLE | (example["x0"][..., 0] == 1))


@pytest.fixture(scope="module")
def model(trained_run):
    return rdbm_jax.load(trained_run)


def test_api_mask_0_255_restores_as_the_bool_mask_and_bad_masks_are_refused(model):
    """`restore(img, mask=m.astype(np.uint8) * 255)` left the hole white (the network read 255 as
    the mask's value); now every accepted kind gives the same output, bit for bit."""
    img = np.random.RandomState(0).randint(0, 256, (20, 24, 3)).astype(np.uint8)
    img[HOLE] = 255
    want = model.restore(img, mask=HOLE)
    for name, mask in ACCEPTED.items():
        np.testing.assert_array_equal(model.restore(img, mask=mask), want, err_msg=name)
    for name, mask in REFUSED.items():
        with pytest.raises(ValueError, match="^mask: "):
            model.restore(img, mask=mask)
    with pytest.raises(ValueError, match=r"mask: shape \(3, 20, 24\) does not fit"):
        model.restore(np.stack([img, img]), mask=np.stack([HOLE] * 3))


class _Recorder:
    """Stands in for a jax.export artifact: records the mask the loader passes, returns μ."""

    platforms = ("cpu",)

    def call(self, mu, mask, key):
        self.mask = np.asarray(mask)
        return mu


def test_exported_loader_applies_the_same_rule():
    recorder = _Recorder()
    restore = export_loader.ExportedRestorer(recorder, {})
    img = np.zeros((20, 24, 3), np.uint8)
    for name, mask in ACCEPTED.items():
        restore(img, mask=mask)
        np.testing.assert_array_equal(recorder.mask[0, ..., 0], HOLE.astype(np.float32), name)
    with pytest.raises(ValueError, match="^mask: .*NaN"):
        restore(img, mask=REFUSED["NaN"])
    with pytest.raises(ValueError, match=r"^mask: shape \(20, 25\) does not fit"):
        restore(img, mask=np.zeros((20, 25)))


def test_sample_mode_reads_0_1_mask_files(trained_workdir, tmp_path):
    """A `sample.mask_dir` of 0/1 files restored nothing (output = input, exit 0): now it
    restores the same as 0/255 files."""
    src, outs = tmp_path / "in", {}
    src.mkdir()
    img = np.random.RandomState(1).randint(0, 256, (20, 24, 3)).astype(np.uint8)
    img[HOLE] = 255
    Image.fromarray(img).save(src / "a.png")
    for name, levels in (("one", HOLE), ("full", HOLE * 255)):
        (tmp_path / name).mkdir()
        _save(tmp_path / name / "a.png", levels)
        cfg = config(**{"sample.input_dir": str(src),
                        "sample.output_dir": str(tmp_path / f"o{name}"),
                        "sample.mask_dir": str(tmp_path / name)})
        assert run_restore_files(cfg, trained_workdir)["restored"] == 1
        outs[name] = np.asarray(Image.open(tmp_path / f"o{name}" / "a.png"))
    np.testing.assert_array_equal(outs["one"], outs["full"])
    assert not np.array_equal(outs["one"][HOLE], img[HOLE])  # the hole was restored


# --- masks: one unreadable mask skips one image; a mask of another size is refused ----------------

def test_one_unreadable_mask_skips_only_its_image(tmp_path, trained_workdir):
    src, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    for name in ("a", "b", "c"):
        write_png(src / f"{name}.png")
    write_png(masks / "a.png", value=0)
    (masks / "b.png").write_bytes(b"not a png")
    write_png(masks / "c.png", 8, 8, value=255)  # another size
    cfg = sample_config(src, out, **{"sample.mask_dir": str(masks)})
    with pytest.raises(DataError) as err:
        run_restore_files(cfg, trained_workdir)
    assert str(masks / "b.png") in str(err.value) and "2 of 3" in str(err.value)
    assert f"mask {masks / 'c.png'} (sample.mask_dir) is 8x8 but its input" in str(err.value)
    assert sorted(os.listdir(out)) == ["a.png"]
