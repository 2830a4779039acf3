"""Files that are read only in part, or not at all, are said so (once), never silently."""
import logging

import numpy as np
from PIL import Image

from rdbm_jax.data import image_io


def _frames(n, size=(12, 10)):
    return [Image.fromarray(np.full(size[::-1] + (3,), 40 * (i + 1), np.uint8)) for i in range(n)]


def test_an_animated_gif_in_a_folder_is_named_not_skipped_silently(tmp_path, caplog):
    first, *rest = _frames(3)
    first.save(tmp_path / "anim.gif", save_all=True, append_images=rest)
    first.save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger="rdbm_jax"):
        assert image_io.list_images(str(tmp_path), "k") == [str(tmp_path / "a.png")]
    said = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(said) == 1 and "anim.gif" in said[0] and "(.gif)" in said[0]


def test_a_multi_page_tiff_says_only_its_first_page_is_read_once(tmp_path, caplog):
    first, *rest = _frames(3)
    path = str(tmp_path / "pages.tif")
    first.save(path, save_all=True, append_images=rest)
    with caplog.at_level(logging.WARNING, logger="rdbm_jax"):
        for _ in range(3):  # training reads a file many times: said once
            pixels = image_io.decode_pixels(path, "k")
    np.testing.assert_array_equal(pixels, np.asarray(first))  # the first page
    said = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
    assert said == [f"{path} (k) has 3 frames (pages); only the first is read"]
    one = str(tmp_path / "one.tif")
    first.save(one)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rdbm_jax"):
        image_io.decode_pixels(one)
    assert not caplog.records
