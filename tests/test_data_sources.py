"""Sources: pairs line up by content, side-by-side halves, built-in split, and every bad input."""
from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from rdbm_jax.data import build_eval_sources
from rdbm_jax.data import builtin
from rdbm_jax.data.spec import source_spec, task_names, task_spec
from rdbm_jax.errors import ConfigError, DataError


def _names(src) -> list[str]:
    """The example names of an evaluation source, in order (its examples' "name" fields)."""
    return [name for name, _ in src.source.entries]


def _img(i: int, h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _data(eval_src, train_src=None, **kw) -> ml_collections.ConfigDict:
    base = dict(crop_size=8, flip="both", num_workers=0, prefetch_buffer=2, skip_bad_files=False)
    base.update(kw)
    return ml_collections.ConfigDict(
        dict(
            tasks=ml_collections.ConfigDict(
                dict(t=task_spec(train=train_src or eval_src, eval=eval_src))), **base))


def _paired_dirs(tmp_path, stems=("a/x1", "b", "c/d/e"), lq_ext=".bmp"):
    """GT = random images; LQ = 255 − GT (the known f), other extension, same relative stems."""
    for i, stem in enumerate(stems):
        gt = _img(i, 10 + i, 14 + 2 * i)
        _write(tmp_path / "gt" / f"{stem}.png", gt)
        _write(tmp_path / "lq" / f"{stem}{lq_ext}", 255 - gt)
    return str(tmp_path / "lq"), str(tmp_path / "gt")


def _paired(lq, gt, **kw):
    return source_spec(kind="paired", lq_dir=lq, gt_dir=gt, **kw)


def test_paired_folders_line_up_by_content(tmp_path):
    lq, gt = _paired_dirs(tmp_path)
    src = build_eval_sources(_data(_paired(lq, gt)))["t"]
    assert _names(src) == ["a/x1", "b", "c/d/e"] and len(src) == 3
    for i in range(3):
        ex = src[i]
        assert ex["task_name"] == "t" and ex["name"] == _names(src)[i]
        np.testing.assert_allclose(ex["x0"], _img(i, 10 + i, 14 + 2 * i) / 127.5 - 1, atol=1e-6)
        np.testing.assert_allclose(ex["mu"], -ex["x0"], atol=1e-6)  # μ = f(x0) pixel by pixel


def test_paired_strip_matches_prefixed_names(tmp_path):
    for i in (1, 2):
        _write(tmp_path / "gt" / f"norain-{i}.png", _img(i))
        _write(tmp_path / "lq" / f"rain-{i}.png", 255 - _img(i))
    src = build_eval_sources(_data(_paired(str(tmp_path / "lq"), str(tmp_path / "gt"),
                                           lq_strip="rain-", gt_strip="norain-")))["t"]
    assert _names(src) == ["1", "2"]
    np.testing.assert_allclose(src[1]["mu"], -src[1]["x0"], atol=1e-6)


@pytest.mark.parametrize("extra,what", [("gt/zz.png", "GT"), ("lq/sub/zz.bmp", "LQ")])
def test_unpaired_file_fails_at_build_or_is_skipped(tmp_path, caplog, extra, what):
    lq, gt = _paired_dirs(tmp_path)
    _write(tmp_path / extra, _img(9))
    with pytest.raises(
            DataError, match=rf"1 {what} file\(s\) without a partner .*data\.tasks\.t\.eval\."
            rf"(lq|gt)_dir.*zz\.(png|bmp)"):
        build_eval_sources(_data(_paired(lq, gt)))
    with caplog.at_level(logging.WARNING):
        src = build_eval_sources(_data(_paired(lq, gt), skip_bad_files=True))["t"]
    assert _names(src) == ["a/x1", "b", "c/d/e"] and "zz" in caplog.text


def test_pair_size_mismatch_build_time_read_time_and_skip(tmp_path):
    lq, gt = _paired_dirs(tmp_path)
    _write(tmp_path / "lq" / "b.bmp", _img(1, 9, 9))
    with pytest.raises(DataError,
                       match=r"size mismatch: LQ .*b\.bmp is 9x9 but GT .*b\.png is 16x11"):
        build_eval_sources(_data(_paired(lq, gt)))
    src = build_eval_sources(_data(_paired(lq, gt, check_headers=False)))["t"]
    src[0]
    with pytest.raises(DataError, match=r"size mismatch.*b\.bmp"):
        src[1]  # no header check: caught when read, never a wrong pair
    src = build_eval_sources(_data(_paired(lq, gt), skip_bad_files=True))["t"]
    assert _names(src) == ["a/x1", "c/d/e"] and src.source.num_skipped == 1


def test_empty_and_missing_folders_fail_at_build(tmp_path):
    lq, gt = _paired_dirs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images .*empty \(data\.tasks\.t\.eval\.gt_dir\)"):
        build_eval_sources(_data(_paired(lq, str(tmp_path / "empty"))))
    with pytest.raises(DataError, match=r"not found: .*missing \(data\.tasks\.t\.eval\.lq_dir\)"):
        build_eval_sources(_data(_paired(str(tmp_path / "missing"), gt)))
    with pytest.raises(DataError, match=r"not found: .*missing \(data\.tasks\.t\.eval\.dir\)"):
        build_eval_sources(_data(source_spec(kind="clean", dir=str(tmp_path / "missing"),
                                             degradation="noise")))


def test_non_image_file_found_at_build_by_header_probe(tmp_path):
    lq, gt = _paired_dirs(tmp_path)
    (tmp_path / "gt" / "b.png").write_text("not an image")
    with pytest.raises(DataError,
                       match=r"not an image.*gt/b\.png \(data\.tasks\.t\.eval\.gt_dir\)"):
        build_eval_sources(_data(_paired(lq, gt)))
    src = build_eval_sources(_data(_paired(lq, gt, check_headers=False)))["t"]
    with pytest.raises(DataError, match=r"not an image.*gt/b\.png"):
        src[1]


def test_truncated_file_found_when_read_or_dropped_by_eval_verify(tmp_path, caplog):
    lq, gt = _paired_dirs(tmp_path, stems=("a", "b"))
    big = _img(5, 64, 64)
    _write(tmp_path / "gt" / "b.png", big)
    _write(tmp_path / "lq" / "b.bmp", 255 - big)
    data = (tmp_path / "gt" / "b.png").read_bytes()
    (tmp_path / "gt" / "b.png").write_bytes(data[: len(data) // 2])
    src = build_eval_sources(_data(_paired(lq, gt)))["t"]  # header fine: passes the build
    with pytest.raises(DataError, match=r"truncated.*gt/b\.png \(data\.tasks\.t\.eval\.gt_dir\)"):
        src[1]
    with caplog.at_level(logging.WARNING):  # skip_bad_files: eval sources are decoded at build
        src = build_eval_sources(_data(_paired(lq, gt), skip_bad_files=True))["t"]
    assert _names(src) == ["a"] and "skipped 1 bad file" in caplog.text


def test_ambiguous_stems_fail(tmp_path):
    lq, gt = _paired_dirs(tmp_path)
    _write(tmp_path / "gt" / "b.jpg", _img(1))
    with pytest.raises(DataError, match=r"two files match the same name 'b'"):
        build_eval_sources(_data(_paired(lq, gt)))


@pytest.mark.parametrize("condition", ["left", "right"])
def test_side_by_side_condition_half(tmp_path, condition):
    a, b = _img(1, 8, 10), _img(2, 8, 10)
    _write(tmp_path / "ab" / "p.png", np.concatenate([a, b], axis=1))
    src = build_eval_sources(_data(source_spec(kind="side_by_side", dir=str(tmp_path / "ab"),
                                               condition=condition)))["t"]
    ex = src[0]
    cond, clean = (a, b) if condition == "left" else (b, a)
    np.testing.assert_allclose(ex["mu"], cond / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(ex["x0"], clean / 127.5 - 1, atol=1e-6)
    _write(tmp_path / "ab" / "q.png", _img(3, 8, 21))
    with pytest.raises(DataError, match=r"odd width 21.*q\.png"):
        build_eval_sources(_data(source_spec(kind="side_by_side", dir=str(tmp_path / "ab"))))


def test_builtin_split_is_fixed_disjoint_and_ships_with_packages():
    train = builtin.builtin_files("train")
    val = builtin.builtin_files("val")
    assert not {n for n, _ in train} & {n for n, _ in val}
    assert len(val) >= 2 and len(train) >= 6
    assert {p for _, p in train}.isdisjoint({p for _, p in val})
    assert all(os.path.isfile(p) for _, p in train + val)
    with pytest.raises(ConfigError, match="split"):
        builtin.builtin_files("test", "data.tasks.main.eval.split")


def test_builtin_folds_partition_train_and_never_touch_val():
    from rdbm_jax.data.spec import BUILTIN_SPLITS, NUM_FOLDS
    train = {n for n, _ in builtin.builtin_files("train")}
    val = {n for n, _ in builtin.builtin_files("val")}
    assert len(builtin.FOLDS) == NUM_FOLDS and "tune" not in BUILTIN_SPLITS
    held = [{n for n, _ in builtin.builtin_files(f"fold{i}")} for i in range(NUM_FOLDS)]
    for i, fold in enumerate(held):
        rest = {n for n, _ in builtin.builtin_files(f"fold{i}_train")}
        assert fold and not fold & rest and fold | rest == train  # disjoint, together all of train
        assert not (fold | rest) & val  # no validation photo, held out or trained on
        assert f"fold{i}" in BUILTIN_SPLITS and f"fold{i}_train" in BUILTIN_SPLITS
        for j in range(i):
            assert not fold & held[j]  # the folds are disjoint ...
    assert set().union(*held) == train  # ... and cover every training photo once
    # the stereo pair is held out together: no held-out scene is trained on from another view
    assert any({"motorcycle_left", "motorcycle_right"} <= fold for fold in held)
    spec = source_spec(kind="builtin", split="fold0", degradation="noise", eval_size=32)
    assert _names(build_eval_sources(_data(spec))["t"]) == sorted(builtin.FOLDS[0])
    with pytest.raises(ConfigError, match=r"data\.tasks\.t\.eval\.split.*fold0_train"):
        build_eval_sources(_data(source_spec(kind="builtin", split="tune", degradation="noise")))


def test_builtin_eval_size_keeps_eval_cheap():
    spec = source_spec(kind="builtin", split="val", degradation="noise", eval_size=64)
    src = build_eval_sources(_data(spec))["t"]
    assert _names(src) == ["chelsea", "flower", "rocket"]
    ex = src[0]
    assert max(ex["x0"].shape[:2]) == 64 and ex["x0"].shape == ex["mu"].shape == (43, 64, 3)
    assert ex["x0"].min() >= -1 and ex["x0"].max() <= 1
    crop = build_eval_sources(_data(source_spec(kind="builtin", split="val", degradation="noise",
                                                eval_size=50, eval_fit="crop")), max_images=1)["t"]
    assert len(crop) == 1 and crop[0]["x0"].shape == (50, 50, 3)


def test_config_errors_name_the_key(tmp_path):
    cases = [
        (source_spec(kind="builtin", degradation="none"), r"data\.tasks\.t\.eval\.degradation"),
        (source_spec(kind="paired", lq_dir="a", gt_dir="b", degradation="noise"),
         r"data\.tasks\.t\.eval\.degradation"),
        (source_spec(kind="pairs"), r"data\.tasks\.t\.eval\.kind"),
        (source_spec(kind="paired", gt_dir="b"), r"data\.tasks\.t\.eval\.lq_dir"),
        (source_spec(kind="builtin", degradation="noise", noise_sigma=-1.0),
         r"data\.tasks\.t\.eval\.noise_sigma"),
        (source_spec(kind="builtin", degradation="inpaint", mask_min_ratio=0.5, mask_max_ratio=0.2),
         r"data\.tasks\.t\.eval\.mask_min_ratio"),
        (source_spec(kind="side_by_side", dir=str(tmp_path), condition="top"),
         r"data\.tasks\.t\.eval\.condition"),
    ]
    for spec, key in cases:
        with pytest.raises(ConfigError, match=key):
            build_eval_sources(_data(spec))
    with pytest.raises(ConfigError, match="unknown data-source key"):
        source_spec(lq_dri="x")
    bad = ml_collections.ConfigDict(dict(kind="builtin", degradation="noise", nosie_sigma=0.2))
    with pytest.raises(ConfigError, match=r"data\.tasks\.t\.eval\.nosie_sigma: unknown"):
        build_eval_sources(_data(bad))
    partial = ml_collections.ConfigDict(dict(kind="builtin", split="val", degradation="jpeg"))
    assert len(build_eval_sources(_data(partial))["t"]) == 3  # missing keys take their defaults


def test_task_names_sorted():
    cfg = ml_collections.ConfigDict(
        dict(tasks=ml_collections.ConfigDict(
            dict(zeta=task_spec(source_spec(), source_spec()), alpha=task_spec(
                source_spec(), source_spec())))))
    assert task_names(cfg) == ["alpha", "zeta"]


# ----------------------------------------------------------------------------- named sources
# (several per task)

def test_named_test_sets_are_built_one_by_one_and_labelled(tmp_path):
    lq, gt = _paired_dirs(tmp_path)
    val = source_spec(kind="builtin", split="val", degradation="noise")
    sources = build_eval_sources(
        _data(ml_collections.ConfigDict({"real": _paired(lq, gt), "photos": val})), max_images=2)
    assert list(sources) == ["t/photos", "t/real"]  # <task>/<set>, sets sorted
    real = sources["t/real"]
    assert (real.task, real.test_set, real.label) == ("t", "real", "t/real")
    assert _names(real) == ["a/x1", "b"]
    assert real[0]["task_name"] == "t" and len(sources["t/photos"]) == 2  # max_images holds per set
    np.testing.assert_allclose(real[1]["mu"], -real[1]["x0"], atol=1e-6)
    single = build_eval_sources(_data(val))["t"]  # one eval source: a set named after its task
    assert (single.task, single.test_set, single.label) == ("t", "t", "t")


def test_named_source_errors_name_the_full_key(tmp_path):
    from rdbm_jax.data.spec import validate_tasks
    lq, gt = _paired_dirs(tmp_path)
    good = _paired(lq, gt)
    cases = [
        (dict(rain100l=source_spec(kind="pairs")),
         r"^data\.tasks\.t\.eval\.rain100l\.kind: must be one of"),
        (dict(rain100l=ml_collections.ConfigDict(dict(kind="paired", lq_dri=lq, gt_dir=gt))),
         r"^data\.tasks\.t\.eval\.rain100l\.lq_dri: unknown data-source key"),
        (dict(rain100h=good,
              rain100l=_paired("", gt)), r"^data\.tasks\.t\.eval\.rain100l\.lq_dir: a paired"),
        ({"rain 100": good}, r"^data\.tasks\.t\.eval\.rain 100: a source name may hold only"),
    ]
    for sets, key in cases:
        data = _data(ml_collections.ConfigDict(sets), train_src=good)
        for check in (validate_tasks, build_eval_sources):
            with pytest.raises(ConfigError, match=key) as e:
                check(data)
            assert "\n" not in str(e.value)
    mixed = ml_collections.ConfigDict(
        dict(kind="paired", lq_dir=lq, gt_dir=gt, extra=dict(kind="builtin")))
    with pytest.raises(ConfigError, match=r"^data\.tasks\.t\.eval\.extra: unknown data-source key"):
        # a named set beside source keys: one spec, a bad key
        validate_tasks(_data(mixed, train_src=good))
    missing = ml_collections.ConfigDict(dict(rain100l=_paired(str(tmp_path / "nope"), gt)))
    with pytest.raises(DataError, match=r"nope \(data\.tasks\.t\.eval\.rain100l\.lq_dir\)"):
        build_eval_sources(_data(missing, train_src=good))
    bad_train = _data(
        good, train_src=ml_collections.ConfigDict(dict(rain13k=_paired(lq, gt, eval_fit="zoom"))))
    with pytest.raises(ConfigError,
                       match=r"^data\.tasks\.t\.train\.rain13k\.eval_fit: must be one of"):
        validate_tasks(bad_train)
