"""Image I/O: decoding of every pixel format to RGB [−1, 1] (EXIF orientation applied), listing
(a symlink loop read once), PNG writing, bad files, the pixel limit (a key, named)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from rdbm_jax.data import image_io, list_images, load_image, save_image
from rdbm_jax.data.image_io import decode_image, fit_size, probe_size, resize_float
from rdbm_jax.errors import DataError
from tests.helpers import write_png


def _ramp(h=6, w=8):
    """A uint8 RGB image with distinct values per pixel and channel."""
    y, x = np.mgrid[:h, :w]
    return np.stack([(x * 30) % 256, (y * 40) % 256, (x * 7 + y * 11) % 256], -1).astype(np.uint8)


def test_rgb_png_roundtrip_exact(tmp_path):
    rgb = _ramp()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(str(tmp_path / "a.png"))
    assert out.dtype == np.float32 and out.shape == (6, 8, 3)
    np.testing.assert_allclose(out, rgb / 127.5 - 1.0, atol=1e-6)
    save_image(str(tmp_path / "deep" / "dir" / "b.png"), out)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "deep" / "dir" / "b.png")), rgb)


def test_grayscale_rgba_palette_and_16bit_are_converted(tmp_path):
    gray = _ramp()[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = decode_image(str(tmp_path / "g.png"))
    assert out.shape == (6, 8, 3)
    np.testing.assert_allclose(out, np.repeat(gray[..., None], 3, -1) / 255.0, atol=1e-6)

    rgb = _ramp()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    # alpha dropped
    np.testing.assert_allclose(decode_image(str(tmp_path / "a.png")), rgb / 255.0, atol=1e-6)

    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    expect = np.asarray(pal.convert("RGB")) / 255.0
    np.testing.assert_allclose(decode_image(str(tmp_path / "p.png")), expect, atol=1e-6)

    g16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "d.png")  # 16-bit grayscale PNG
    out16 = decode_image(str(tmp_path / "d.png"))
    # scaled, not clipped at 255
    np.testing.assert_allclose(out16[..., 1], g16 / 65535.0, atol=1e-6)
    assert out16.max() > 0.9


def test_list_images_recursive_sorted_filtered(tmp_path):
    for rel in ["b.png", "a.JPG", "sub/c.tif", "sub/deeper/d.webp", "notes.txt", ".hidden.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            p.write_text("x")
        else:
            Image.fromarray(_ramp()).save(p, format={"jpg": "JPEG", "tif": "TIFF", "webp": "WEBP"}
                                          .get(p.suffix.lower()[1:], "PNG"))
    got = [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))]
    assert got == [
        "a.JPG", "b.png",
        os.path.join("sub", "c.tif"),
        os.path.join("sub", "deeper", "d.webp")
    ]


def test_list_images_missing_and_empty_folder_name_key(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope \(data\.tasks\.x\.train\.dir\)"):
        list_images(str(tmp_path / "nope"), "data.tasks.x.train.dir")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"no images .*empty \(k\.dir\)"):
        list_images(str(tmp_path / "empty"), "k.dir")


def test_truncated_image_raises_naming_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                      np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    probe_size(str(tmp_path / "t.png"))  # the header is intact: only a full decode notices
    with pytest.raises(DataError, match=r"truncated.*t\.png"):
        load_image(str(tmp_path / "t.png"))


def test_non_image_missing_and_directory_raise_naming_file(tmp_path):
    (tmp_path / "fake.png").write_text("this is not a PNG")
    for fn in (load_image, probe_size):
        with pytest.raises(DataError, match=r"not an image.*fake\.png"):
            fn(str(tmp_path / "fake.png"))
    with pytest.raises(DataError, match=r"not found.*gone\.png"):
        load_image(str(tmp_path / "gone.png"))
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")  # listed, but unreadable
    assert list_images(
        str(tmp_path)) == [str(tmp_path / "dangling.png"),
                           str(tmp_path / "fake.png")]
    with pytest.raises(DataError, match=r"dangling\.png"):
        load_image(str(tmp_path / "dangling.png"))
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match=r"folder: .*dir\.png"):
        load_image(str(tmp_path / "dir.png"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied_raises_naming_file(tmp_path):
    Image.fromarray(_ramp()).save(tmp_path / "locked.png")
    os.chmod(tmp_path / "locked.png", 0)
    with pytest.raises(DataError, match=r"permission denied.*locked\.png"):
        load_image(str(tmp_path / "locked.png"))


def test_error_messages_are_one_line(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage\n\nmore")
    with pytest.raises(DataError) as e:
        load_image(str(tmp_path / "x.jpg"))
    assert "\n" not in str(e.value) and "x.jpg" in str(e.value)


def test_save_image_clips_and_rejects_nonfinite(tmp_path):
    img = np.array([[[-2.0, 0.0, 2.0]]], np.float32)
    save_image(str(tmp_path / "c.png"), img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), [[[0, 128, 255]]])
    with pytest.raises(ValueError, match="non-finite"):
        save_image(str(tmp_path / "n.png"), np.full((2, 2, 3), np.nan, np.float32))


def test_fit_size_and_resize():
    assert fit_size(300, 451, 128) == (85, 128)
    assert fit_size(100, 50, 0) == (100, 50) and fit_size(100, 50, 200) == (100, 50)
    img = np.full((40, 60, 3), 0.25, np.float32)
    out = resize_float(img, 20, 30)
    assert out.shape == (20, 30, 3)
    np.testing.assert_allclose(out, 0.25, atol=1e-5)


# --- the pixel limit is a key, and says so --------------------------------------------------------

def test_the_pixel_limit_is_named_and_can_be_raised(tmp_path):
    path = str(tmp_path / "big.png")
    write_png(path, 40, 40)
    default = Image.MAX_IMAGE_PIXELS
    try:
        for limit in (1000, 700):  # PIL warns above the limit, refuses above twice it: both named
            image_io.set_max_pixels(limit)
            with pytest.raises(DataError, match=rf"1,600 pixels, above the limit of {limit:,} "
                                                r"\(data.max_image_pixels") as err:
                image_io.decode_image(path)
            assert "corrupt" not in str(err.value)
        image_io.set_max_pixels(1600)
        assert image_io.decode_image(path).shape == (40, 40, 3)
    finally:
        Image.MAX_IMAGE_PIXELS = default


# --- symlink loops are read once ------------------------------------------------------------------

def test_a_symlink_loop_is_read_once_and_said_once(tmp_path, caplog):
    write_png(tmp_path / "photos" / "a.png")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "loop")
    with caplog.at_level(logging.WARNING, logger="rdbm_jax"):
        found = image_io.list_images(str(tmp_path / "photos"))
    assert found == [str(tmp_path / "photos" / "a.png")]
    assert len([r for r in caplog.records if "symbolic links" in r.getMessage()]) == 1


# --- EXIF orientation -----------------------------------------------------------------------------

def test_exif_orientation_is_applied_on_read(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # white on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate by 90° clockwise: white comes on top
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    img = image_io.decode_image(path)
    assert img.shape == (40, 20, 3) and image_io.probe_size(path) == (40, 20)
    assert img[:20].mean() > 0.9 and img[20:].mean() < 0.1
