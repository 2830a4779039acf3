"""Training iterator: shapes, crop/flip alignment, padding, task mixture, sharding, resume,
skips."""
from __future__ import annotations

import logging

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from rdbm_jax.data import build_train_iterator
from rdbm_jax.data.spec import source_spec, task_spec
from rdbm_jax.errors import ConfigError, DataError


def _data(tasks: dict, **kw) -> ml_collections.ConfigDict:
    base = dict(crop_size=16, flip="both", num_workers=0, prefetch_buffer=2, skip_bad_files=False)
    base.update(kw)
    return ml_collections.ConfigDict(dict(tasks=ml_collections.ConfigDict(
        {k: task_spec(train=v, eval=v) for k, v in tasks.items()}), **base))


def _write(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _const_folder(tmp_path, n: int, size=(20, 24)):
    """n clean images of constant gray level 30·(i+1): the level identifies the image."""
    for i in range(n):
        _write(tmp_path / "clean" / f"{i:02d}.png", np.full(size + (3,), 30 * (i + 1), np.uint8))
    return str(tmp_path / "clean")


def _ids(batches) -> list[int]:
    out = []
    for b in batches:
        level = np.round((b["x0"][:, 0, 0, 0] + 1) * 127.5).astype(int)
        out += list(level // 30 - 1)
    return out


def test_builtin_batches_have_the_documented_layout():
    data = _data({"main": source_spec(kind="builtin", split="train", degradation="inpaint")})
    it = build_train_iterator(data, global_batch_size=4, seed=0, process_index=0, process_count=1)
    b = next(it)
    assert set(b) == {"x0", "mu", "mask", "task"}
    for k in ("x0", "mu"):
        assert b[k].shape == (4, 16, 16, 3) and b[k].dtype == np.float32
        assert b[k].min() >= -1.0 and b[k].max() <= 1.0
    assert b["mask"].shape == (4, 16, 16, 1) and b["mask"].dtype == np.float32
    assert b["task"].dtype == np.int32 and b["task"].tolist() == [0, 0, 0, 0]
    assert not np.array_equal(b["x0"], b["mu"])


def test_paired_crops_and_flips_stay_aligned(tmp_path):
    y, x = np.mgrid[:30, :40]
    for i in range(3):
        gt = np.stack([(x * 6 + i * 20) % 256, (y * 8) % 256, (x * y + i) % 256],
                      -1).astype(np.uint8)
        _write(tmp_path / "gt" / f"{i}.png", gt)
        _write(tmp_path / "lq" / f"{i}.png", 255 - gt)  # known f: μ = −x0 in model range
    spec = source_spec(kind="paired", lq_dir=str(tmp_path / "lq"), gt_dir=str(tmp_path / "gt"))
    it = build_train_iterator(_data({"p": spec}, crop_size=12), global_batch_size=2, seed=3,
                              process_index=0, process_count=1)
    signs = set()
    for b in _take(it, 12):
        np.testing.assert_allclose(b["mu"], -b["x0"], atol=1e-6)
        signs |= {int(np.sign(b["x0"][j, 0, 1, 0] - b["x0"][j, 0, 0, 0])) for j in range(2)}
    assert signs == {-1, 1}  # horizontal flips happen (red increases left→right in the file)


def test_image_smaller_than_crop_is_reflect_padded(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 6, 3), np.uint8)
    _write(tmp_path / "clean" / "tiny.png", img)
    spec = source_spec(kind="clean", dir=str(tmp_path / "clean"), degradation="lowlight")
    it = build_train_iterator(_data({"c": spec}, crop_size=16, flip="none"),
                              global_batch_size=1, seed=0, process_index=0, process_count=1)
    b = next(it)
    assert b["x0"].shape == (1, 16, 16, 3)
    expect = np.pad(img / 127.5 - 1.0, ((5, 6), (5, 5), (0, 0)), mode="reflect")
    np.testing.assert_allclose(b["x0"][0], expect, atol=1e-6)


def test_training_degradation_is_random_per_epoch(tmp_path):
    _write(tmp_path / "clean" / "a.png", np.full((16, 16, 3), 128, np.uint8))
    spec = source_spec(kind="clean", dir=str(tmp_path / "clean"), degradation="noise")
    it = build_train_iterator(_data({"c": spec}, flip="none"), global_batch_size=1, seed=0,
                              process_index=0, process_count=1)
    a, b = _take(it, 2)  # one image: consecutive batches are consecutive epochs
    np.testing.assert_array_equal(a["x0"], b["x0"])
    assert not np.array_equal(a["mu"], b["mu"])


def test_mixture_gives_equal_task_shares(tmp_path):
    tasks = {
        "noise": source_spec(kind="builtin", degradation="noise"),
        "blur": source_spec(kind="builtin", degradation="gaussian_blur"),
        "dark": source_spec(kind="clean", dir=_const_folder(tmp_path, 3), degradation="lowlight")
    }
    data = _data(tasks, crop_size=8)
    it = build_train_iterator(data, global_batch_size=12, seed=0, process_index=1, process_count=2)
    for b in _take(it, 3):  # task ids = sorted names: blur 0, dark 1, noise 2
        assert b["task"].tolist() == [0, 0, 1, 1, 2, 2]
        assert b["x0"].shape == (6, 8, 8, 3)
        dark = b["x0"][2:4]
        assert np.all(dark == dark[:, :1, :1])  # the constant images landed in the 'dark' share
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        build_train_iterator(data, global_batch_size=8, seed=0, process_index=0, process_count=2)
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        build_train_iterator(data, global_batch_size=9, seed=0, process_index=0, process_count=2)


def test_process_shards_are_disjoint_cover_and_deterministic(tmp_path):
    spec = source_spec(kind="clean", dir=_const_folder(tmp_path, 7), degradation="lowlight")
    data = _data({"c": spec}, crop_size=8)
    seen = []
    for p in range(2):
        it = build_train_iterator(data, global_batch_size=2, seed=5, process_index=p,
                                  process_count=2)
        ids = _ids(_take(it, 8))
        seen.append(set(ids))
        again = build_train_iterator(data, global_batch_size=2, seed=5, process_index=p,
                                     process_count=2)
        assert _ids(_take(again, 8)) == ids
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(7))
    assert {len(s) for s in seen} == {3, 4}
    with pytest.raises(DataError, match=r"cannot be sharded over 8 processes"):
        build_train_iterator(data, global_batch_size=8, seed=5, process_index=0, process_count=8)


def test_epoch_covers_every_image_once(tmp_path):
    spec = source_spec(kind="clean", dir=_const_folder(tmp_path, 5), degradation="lowlight")
    it = build_train_iterator(_data({"c": spec}, crop_size=8), global_batch_size=1, seed=1,
                              process_index=0, process_count=1)
    ids = _ids(_take(it, 10))
    assert sorted(ids[:5]) == list(range(5)) and sorted(ids[5:]) == list(range(5))
    assert ids[:5] != ids[5:] or ids[:5] != list(range(5))  # shuffled


def _rand_folder(tmp_path, name: str, n: int) -> str:
    for i in range(n):
        _write(tmp_path / name / f"{i}.png",
               np.random.default_rng(i).integers(0, 256, (20, 24, 3), np.uint8))
    return str(tmp_path / name)


def _assert_resumes_identically(data, after: int, then: int) -> None:
    """A fresh iterator given the state after `after` batches yields the next `then` batches of an
    uninterrupted one."""
    kw = dict(global_batch_size=4, seed=11, process_index=0, process_count=1)
    it = build_train_iterator(data, **kw)
    _take(it, after)
    state = it.get_state()
    expected = _take(it, then)
    fresh = build_train_iterator(data, **kw)
    fresh.set_state(state)
    _same(_take(fresh, then), expected)
    _same(_take(build_train_iterator(data, **kw), after + then)[after:], expected)


def test_resume_from_saved_state_continues_identically(tmp_path):
    data = _data({"a": source_spec(kind="clean", dir=_rand_folder(tmp_path, "a", 3),
                                   degradation="motion_blur", motion_length=3),
                  "b": source_spec(kind="clean", dir=_rand_folder(tmp_path, "b", 4),
                                   degradation="inpaint")}, crop_size=8)
    _assert_resumes_identically(data, after=3, then=3)


def test_resume_through_orbax_composite(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    data = _data({"a": source_spec(kind="builtin", degradation="noise")}, crop_size=8)
    kw = dict(global_batch_size=2, seed=2, process_index=0, process_count=1)
    it = build_train_iterator(data, **kw)
    _take(it, 2)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = _take(it, 2)
    fresh = build_train_iterator(data, **kw)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    _same(_take(fresh, 2), expected)


def test_worker_processes_match_in_process_and_resume(tmp_path):
    spec = source_spec(kind="clean", dir=_const_folder(tmp_path, 4), degradation="noise")
    kw = dict(global_batch_size=2, seed=4, process_index=0, process_count=1)
    ref = _take(build_train_iterator(_data({"c": spec}, crop_size=8), **kw), 4)
    it = build_train_iterator(_data({"c": spec}, crop_size=8, num_workers=1), **kw)
    try:
        got = _take(it, 2)
        state = it.get_state()
    finally:
        it.close()
    _same(got, ref[:2])
    it2 = build_train_iterator(_data({"c": spec}, crop_size=8, num_workers=1), **kw)
    try:
        it2.set_state(state)
        _same(_take(it2, 2), ref[2:])
    finally:
        it2.close()


def test_bad_file_stops_training_or_is_counted_and_skipped(tmp_path, caplog):
    folder = _const_folder(tmp_path, 3)
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    _write(tmp_path / "clean" / "zz_bad.png", big)
    raw = (tmp_path / "clean" / "zz_bad.png").read_bytes()
    (tmp_path / "clean" / "zz_bad.png").write_bytes(raw[: len(raw) // 2])  # passes the header probe
    spec = source_spec(kind="clean", dir=folder, degradation="lowlight")
    kw = dict(global_batch_size=1, seed=0, process_index=0, process_count=1)
    it = build_train_iterator(_data({"c": spec}, crop_size=8, prefetch_buffer=0), **kw)
    with pytest.raises(DataError, match=r"truncated.*zz_bad\.png \(data\.tasks\.c\.train\.dir\)"):
        _take(it, 4)
    with caplog.at_level(logging.WARNING):
        it = build_train_iterator(_data({"c": spec}, crop_size=8, skip_bad_files=True), **kw)
        ids = _ids(_take(it, 8))
    assert set(ids) == {0, 1, 2}  # the bad file's slot was refilled with a good image
    assert "skipped bad file (1 skipped so far" in caplog.text and "zz_bad.png" in caplog.text
    it = build_train_iterator(_data({"c": spec}, crop_size=8, skip_bad_files=True),
                              global_batch_size=2, seed=0, process_index=1, process_count=2)
    assert set(_ids(_take(it, 6))) == {1}  # shard {01, zz_bad}: refills stay inside the shard


# ----------------------------------------------------------------------------- several training
# sources per task

def _level_folder(tmp_path, name: str, levels) -> str:
    """Clean images of constant gray levels: the level identifies the image (and its source)."""
    for level in levels:
        _write(tmp_path / name / f"{level:03d}.png", np.full((20, 24, 3), level, np.uint8))
    return str(tmp_path / name)


def _levels(batches, rows=slice(None)) -> list[int]:
    return [int(v) for b in batches for v in np.round((b["x0"][rows, 0, 0, 0] + 1) * 127.5)]


BIG, SMALL, OTHER = tuple(range(20, 140, 20)), (200, 240), (248, 252)  # 6, 2 and 2 images


def _two_sources(tmp_path, **kw) -> ml_collections.ConfigDict:
    """Task 'mixed' (id 0) trains on named sources big (6 images) and small (2); task 'other' (id 1)
    on one source (2)."""
    def clean(name, levels):
        return source_spec(kind="clean", dir=_level_folder(tmp_path, name, levels),
                           degradation="lowlight")
    return _data({"mixed": {"big": clean("big", BIG), "small": clean("small", SMALL)},
                  "other": clean("other", OTHER)}, crop_size=8, flip="none", **kw)


@pytest.mark.parametrize("mix, small_share", [("size", 2 / 8), ("equal", 1 / 2)])
def test_training_sources_of_a_task_mix_by_size_or_equally(tmp_path, mix, small_share):
    data = _two_sources(tmp_path, train_mix=mix)
    kw = dict(global_batch_size=4, seed=7, process_index=0, process_count=1)
    batches = _take(build_train_iterator(data, **kw), 100)
    assert all(b["task"].tolist() == [0, 0, 1, 1] for b in batches)  # tasks still weigh equally
    levels = _levels(batches, slice(0, 2))  # the 200 examples of task 'mixed'
    assert set(levels) == set(BIG) | set(SMALL)  # both sources, every image
    assert abs(np.mean([lv in SMALL for lv in levels]) - small_share) < 0.03
    assert set(_levels(batches, slice(2, 4))) == set(OTHER)
    # deterministic
    assert _levels(_take(build_train_iterator(data, **kw), 100), slice(0, 2)) == levels
    assert _levels(_take(build_train_iterator(data, **{**kw, "seed": 8}), 100), slice(0,
                                                                                      2)) != levels


def test_several_sources_shard_disjointly_and_resume_exactly(tmp_path):
    data = _two_sources(tmp_path)
    seen = []
    for p in range(2):
        it = build_train_iterator(data, global_batch_size=4, seed=5, process_index=p,
                                  process_count=2)
        seen.append(set(_levels(_take(it, 30), slice(0, 1))))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(BIG) | set(SMALL)
    data = _data(
        {
            "a": {
                "one": source_spec(kind="clean", dir=_rand_folder(tmp_path, "a1", 3),
                                   degradation="motion_blur", motion_length=3), "two": source_spec(
                                       kind="clean", dir=_rand_folder(tmp_path, "a2", 2),
                                       degradation="inpaint")
            }, "b": source_spec(kind="clean", dir=_rand_folder(tmp_path, "b", 4),
                                degradation="noise")
        }, crop_size=8)
    _assert_resumes_identically(data, after=3, then=4)


def _old_crop(item, crop, flip, rng):
    """The former TrainExample crop: both images as float32, stacked, padded, cropped, flipped."""
    from rdbm_jax.data.pipeline import pad_to
    x0 = item.x0.astype(np.float32) / 255.0
    mu = item.mu.astype(np.float32) / 255.0
    stack = pad_to(np.concatenate([x0, mu], axis=-1), crop)
    h, w = stack.shape[:2]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    stack = stack[top:top + crop, left:left + crop]
    if flip != "none" and rng.uniform() < 0.5:
        stack = stack[:, ::-1]
    if flip == "both" and rng.uniform() < 0.5:
        stack = stack[::-1]
    return stack[..., :3], stack[..., 3:]


@pytest.mark.parametrize("size", [(40, 56), (10, 12)])  # larger than the crop, and padded
def test_pairs_cropped_as_uint8_then_converted_are_bit_identical(tmp_path, size):
    """Pairs are decoded to uint8, cut with one window and converted after the crop: the same floats
    as converting and stacking the two full frames first (the former, 4x slower way)."""
    from rdbm_jax.data.pipeline import TrainExample, _build, named_sources
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(tmp_path / "gt" / f"{i}.png", rng.integers(0, 256, size + (3,), np.uint8))
        _write(tmp_path / "lq" / f"{i}.png", rng.integers(0, 256, size + (3,), np.uint8))
    data = _data(
        {"p": source_spec(kind="paired", lq_dir=str(tmp_path / "lq"), gt_dir=str(tmp_path / "gt"))})
    src = named_sources(data, "p", "train")[0]
    source, degrader, _ = _build(data, src)
    fn = TrainExample(source, degrader, 0, 16, "both", False, src.key)
    for i in range(3):
        item = source.read_pixels(i)
        assert item.x0.dtype == np.uint8
        for seed in range(6):
            got = fn(i, np.random.default_rng(seed))
            x0, mu = _old_crop(item, 16, "both", np.random.default_rng(seed))
            np.testing.assert_array_equal(got["x0"][0], x0 * 2.0 - 1.0)
            np.testing.assert_array_equal(got["mu"][0], mu * 2.0 - 1.0)


def _example_fn(spec, monkeypatch, **kw):
    """(TrainExample of a one-source task, list of the indices its source decoded)."""
    from rdbm_jax.data import sources
    from rdbm_jax.data.pipeline import TrainExample, _build, named_sources
    data = _data({"c": spec}, crop_size=8)
    src = named_sources(data, "c", "train")[0]
    source, degrader, _ = _build(data, src)
    reads = []
    real = sources.CleanSource.read_pixels
    monkeypatch.setattr(sources.CleanSource, "read_pixels",
                        lambda self, i, *rows: reads.append(i) or real(self, i, *rows))
    return TrainExample(source, degrader, 0, 8, "both", False, src.key, **kw), reads


def test_several_crops_per_decoded_image(tmp_path, monkeypatch):
    """data.crops_per_image=k: a batch holds B/k images, k consecutive crops of each, one decode
    each."""
    spec = source_spec(kind="clean", dir=_const_folder(tmp_path, 4, size=(24, 24)),
                       degradation="noise")
    kw = dict(global_batch_size=4, seed=0, process_index=0, process_count=1)
    batches = _take(build_train_iterator(_data({"c": spec}, crop_size=8, crops_per_image=2), **kw),
                    3)
    ids = _ids(batches)
    assert all(b["x0"].shape == (4, 8, 8, 3) for b in batches)
    assert ids[0::2] == ids[1::2]  # crops 2j and 2j+1 come from one image
    fn, reads = _example_fn(spec, monkeypatch, crops=2)
    out = fn(1, np.random.default_rng(0))
    assert reads == [1] and out["x0"].shape == (2, 8, 8, 3)  # one decode, two crops
    assert not np.array_equal(out["mu"][0], out["mu"][1])  # own windows and own degradations
    with pytest.raises(ConfigError, match="data.crops_per_image=3"):
        build_train_iterator(_data({"c": spec}, crop_size=8, crops_per_image=3), **kw)


def test_decoded_image_cache_decodes_each_file_once_within_its_budget(tmp_path, monkeypatch):
    spec = source_spec(kind="clean", dir=_const_folder(tmp_path, 3, size=(24, 24)),
                       degradation="noise")
    kw = dict(global_batch_size=3, seed=0, process_index=0, process_count=1)
    ref = _take(build_train_iterator(_data({"c": spec}, crop_size=8), **kw), 4)
    got = _take(build_train_iterator(_data({"c": spec}, crop_size=8, decode_cache_mib=1), **kw), 4)
    _same(got, ref)  # the cache changes no pixel
    fn, reads = _example_fn(spec, monkeypatch, cache_bytes=2**20)
    for i in [0, 1, 2, 0, 1, 2, 2]:
        fn(i, np.random.default_rng(i))
    assert reads == [0, 1, 2]  # each file decoded once
    small, reads_small = _example_fn(spec, monkeypatch, cache_bytes=24 * 24 * 3 * 2)  # two images
    for i in [0, 1, 2, 0, 1, 2]:
        small(i, np.random.default_rng(i))
    assert reads_small == [0, 1, 2, 2]  # the budget held two: the third is decoded every time
    import pickle
    assert pickle.loads(pickle.dumps(fn))._cache == {}  # workers start with their own, empty cache


def test_auto_workers_only_where_they_help(tmp_path):
    from rdbm_jax.data.pipeline import num_workers
    files = _data(
        {"c": source_spec(kind="clean", dir=_const_folder(tmp_path, 2), degradation="noise")},
        num_workers=-1)
    builtin = _data({"b": source_spec(kind="builtin", split="train", degradation="inpaint")},
                    num_workers=-1)
    assert num_workers(files, accelerator=False) == 0  # a CPU run: the step needs the cores
    assert num_workers(builtin, accelerator=True) == 0  # decoded once, kept in RAM
    import os
    cpus = os.cpu_count() or 1
    assert num_workers(files, accelerator=True) == (min(cpus - 1, 32) if cpus > 2 else 0)
    files.num_workers = 3
    assert num_workers(files, accelerator=False) == 3


def _adam7_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow writes none): seven passes, filter 0 rows."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    h, w = rgb.shape[:2]
    raw = b""
    for top, left, dy, dx in ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4),
                              (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)):
        sub = rgb[top::dy, left::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_one_crop_decodes_png_rows_down_to_its_window_only_and_crops_bit_identically(
        tmp_path, monkeypatch):
    """Default training (one crop, no cache) draws the window from the header's size and decodes a
    PNG only down to the window's last row: the same examples, draw for draw, as a full decode."""
    from rdbm_jax.data import image_io, sources
    rng = np.random.default_rng(3)
    folder = tmp_path / "clean"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 44, 3), np.uint8)).save(folder / "a_rgb.png")
    palette = Image.fromarray(rng.integers(0, 256, (50, 30), np.uint8)).convert("P")
    palette.save(folder / "b_pal.png")
    Image.fromarray(rng.integers(0, 256, (48, 40, 4), np.uint8)).save(folder / "c_rgba.png")
    inter = rng.integers(0, 256, (52, 36, 3), np.uint8)
    (folder / "d_inter.png").write_bytes(_adam7_png(inter))
    Image.fromarray(rng.integers(0, 256, (6, 50, 3), np.uint8)).save(folder / "e_small.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(folder / "f.jpg")
    spec = source_spec(kind="clean", dir=str(folder), degradation="inpaint")
    fn, _ = _example_fn(spec, monkeypatch)
    np.testing.assert_array_equal(image_io.decode_pixels(str(folder / "d_inter.png")), inter)
    decoded = []
    real = image_io._decode_leading_rows
    monkeypatch.setattr(image_io, "_decode_leading_rows",
                        lambda img, rows: decoded.append(rows) if real(img, rows) else False)
    for index in range(6):
        for seed in range(4):
            decoded.clear()
            got = fn(index, np.random.default_rng(seed))
            with monkeypatch.context() as m:
                m.setattr(sources.CleanSource, "LEADING_ROWS", False)  # the whole-image path
                want = fn(index, np.random.default_rng(seed))
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
            # rows decoded: at most the window's bottom (< the height) for the three plain PNGs
            assert (len(decoded) == 1) == (index < 3), (index, decoded)
            assert all(8 <= r < 60 for r in decoded)


def _ramp_folder(tmp_path, n: int = 2, size=(64, 96)) -> str:
    """Clean images whose value rises by 1 grey level per column: a crop's column step measures
    its scale (2 levels per pixel = the photo shrunk by half)."""
    cols = np.arange(size[1], dtype=np.uint8)[None, :, None]
    for i in range(n):
        _write(tmp_path / "ramp" / f"{i}.png", np.broadcast_to(cols + 10 * i, size + (3,)).copy())
    return str(tmp_path / "ramp")


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_multi_scale_rescales_the_photo_before_cropping(tmp_path, factor):
    """data.scale_min = scale_max = f: a crop of the photo rescaled by f (column step 1/f levels),
    same shape; off (1, 1), the crops are those of a config without the option."""
    spec = source_spec(kind="clean", dir=_ramp_folder(tmp_path), degradation="inpaint")  # x0 read
    kw = dict(global_batch_size=2, seed=3, process_index=0, process_count=1)
    plain = _take(build_train_iterator(_data({"r": spec}, flip="none"), **kw), 3)
    off = _take(build_train_iterator(_data({"r": spec}, flip="none", scale_min=1.0,
                                           scale_max=1.0), **kw), 3)
    _same(plain, off)
    on = _take(build_train_iterator(_data({"r": spec}, flip="none", scale_min=factor,
                                          scale_max=factor), **kw), 3)
    for b_plain, b_on in zip(plain, on):
        assert b_on["x0"].shape == b_plain["x0"].shape == (2, 16, 16, 3)
        # grey levels per pixel, away from the crop's edges (where the resampling filter's
        # support leaves the window)
        step = np.diff(b_on["x0"][..., 0], axis=2)[:, 2:-2, 3:-3] * 127.5
        # Lanczos reproduces a ramp on average; upsampling (f > 1) leaves its windowed-sinc
        # ripple on each step, about ±12 % of the step at these phases (0.44–0.54 for 0.5)
        assert step.mean() == pytest.approx(1.0 / factor, rel=0.05)
        np.testing.assert_allclose(step, 1.0 / factor, rtol=0.15)
        np.testing.assert_allclose(np.diff(b_plain["x0"][..., 0], axis=2) * 127.5, 1.0,
                                   atol=1e-4)


def test_multi_scale_draws_factors_in_range_and_resumes(tmp_path):
    spec = source_spec(kind="clean", dir=_ramp_folder(tmp_path, 3), degradation="inpaint")
    data = _data({"r": spec}, flip="none", scale_min=0.5, scale_max=2.0, crop_size=8)
    _assert_resumes_identically(data, after=2, then=3)
    from rdbm_jax.data.pipeline import TrainExample
    fn = TrainExample(None, None, 0, 16, "none", False, "k", scale=(0.5, 2.0))
    rng = np.random.default_rng(0)
    sizes = [fn.window_size(rng) for _ in range(400)]
    assert min(sizes) >= 8 and max(sizes) <= 32  # 16 / 2 … 16 / 0.5
    # log-uniform: as many factors below 1 as above
    assert abs(np.mean(np.array(sizes) > 16) - 0.5) < 0.1


def test_mixed_crop_sizes_per_batch_deterministic_and_resumable(tmp_path):
    data = _data({"a": source_spec(kind="clean", dir=_rand_folder(tmp_path, "a", 3),
                                   degradation="inpaint"),
                  "b": source_spec(kind="clean", dir=_rand_folder(tmp_path, "b", 4),
                                   degradation="noise")}, crop_size=16, crop_sizes="8,16")
    kw = dict(global_batch_size=4, seed=5, process_index=0, process_count=1)
    batches = _take(build_train_iterator(data, **kw), 12)
    shapes = {b["x0"].shape[1:3] for b in batches}
    assert shapes == {(8, 8), (16, 16)}  # both sizes, every example of a batch the same
    for b in batches:
        assert b["mu"].shape[:3] == b["mask"].shape[:3] == b["x0"].shape[:3]
        assert b["task"].shape == (4,)
    _same(_take(build_train_iterator(data, **kw), 12), batches)
    _assert_resumes_identically(data, after=3, then=4)


def test_multi_scale_options_are_validated():
    from tests.helpers import config
    from rdbm_jax import config as config_lib
    config_lib.validate(config(**{"data.scale_min": 0.5, "data.crop_sizes": "16,32"}))
    bad = [({"data.scale_min": 0.0}, r"^data\.scale_min=0\.0 must be > 0"),
           ({"data.scale_min": 2.0}, r"^data\.scale_min=2\.0 must be <= data\.scale_max=1\.0"),
           ({"data.crop_sizes": "64"}, r"^data\.crop_sizes: 64 must be in \(0, data\.crop_size=32"),
           ({"data.crop_sizes": "12"}, r"^data\.crop_sizes: 12 .* multiple of 8"),
           ({"data.crop_sizes": "a"}, r"^data\.crop_sizes='a' is not a comma-separated list"),
           ({"data.crop_sizes": "16", "train.steps_per_dispatch": 2},
            r"^data\.crop_sizes='16' needs train\.steps_per_dispatch=1")]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            config_lib.validate(config(**overrides))
