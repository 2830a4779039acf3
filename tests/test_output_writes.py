"""Output writes: temporary files of our own, removed only when their writer is provably gone; a
name the file system refuses skips that file only; a full disk names the file and folder; the
output folder is never the input folder; reports and exports land whole or not at all."""
import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rdbm_jax.runtime import atomic, paths
from rdbm_jax import export, export_loader, main
from rdbm_jax.data import image_io
from rdbm_jax.evaluation import reports
from rdbm_jax.errors import ConfigError, DataError
from rdbm_jax.restore_files import run_restore_files
from tests.helpers import REPO, config, sample_config, write_png

# A writer in another process: makes its temporary file, says its name, and waits.
_WRITER = """
import sys, time
from rdbm_jax.runtime import atomic
tmp = atomic.temp_path(sys.argv[1])
open(tmp, "wb").write(b"half")
print(tmp, flush=True)
time.sleep(120)
"""


def test_user_files_with_look_alike_names_survive(tmp_path):
    """The old cleanup removed every `.<name>.<digits>.tmp` (a user's `.notes.2024.tmp`)."""
    (tmp_path / "sub").mkdir()
    mine = [tmp_path / ".notes.2024.tmp", tmp_path / "sub" / ".draft.1.tmp",
            tmp_path / ".a.png.123.tmp", tmp_path / ".~rdbm-notes.tmp"]
    for path in mine:
        path.write_text("keep me")
    assert atomic.remove_stale(str(tmp_path)) == 0
    assert all(p.read_text() == "keep me" for p in mine)


def test_a_live_writers_temp_survives_and_a_dead_writers_is_removed(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "a.png")], cwd=REPO,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": REPO})
    try:
        tmp = writer.stdout.readline().strip()
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.exists(tmp)
        assert atomic.remove_stale(str(tmp_path)) == 0  # its writer runs: in flight, not stale
        assert os.path.exists(tmp)
    finally:
        writer.kill()
        writer.wait()
    assert atomic.remove_stale(str(tmp_path)) == 1  # killed: provably stale
    assert not os.path.exists(tmp)


def test_temp_names_are_short_whatever_the_target(tmp_path):
    long_name = "x" * 250 + ".png"
    assert len(os.path.basename(atomic.temp_path(str(tmp_path / long_name)))) < 64
    atomic.write_bytes(str(tmp_path / long_name), b"data")  # `.<name>.<pid>.tmp` was > 255 bytes
    assert (tmp_path / long_name).read_bytes() == b"data"
    assert os.listdir(tmp_path) == [long_name]


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    target = tmp_path / "eval" / "metrics.json"
    with pytest.raises(OSError) as err:
        atomic.write_text(str(target), "{}")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    line = main._os_error(err.value)  # what the command line prints (exit 1)
    assert f"writing {target} (folder {tmp_path / 'eval'})" in line
    assert "files written before it are complete" in line
    assert not target.exists() and os.listdir(tmp_path / "eval") == []


def _inputs(folder, names):
    folder.mkdir()
    rs = np.random.RandomState(0)
    for name in names:
        Image.fromarray(rs.randint(0, 256, (16, 16, 3)).astype(np.uint8)).save(folder / name)


def test_sample_long_names_one_bad_output_and_a_full_disk(trained_workdir, tmp_path, monkeypatch):
    long_name = "n" * 250 + ".png"
    src = tmp_path / "in"
    _inputs(src, ["a.png", "b.png", "c.png", long_name])
    out = tmp_path / "out"
    cfg = config(**{"sample.input_dir": str(src), "sample.output_dir": str(out)})
    # 1. a 250-character name is restored like any other (its temp name was > 255 bytes: the whole
    # run aborted, the other inputs never tried)
    assert run_restore_files(cfg, trained_workdir)["restored"] == 4
    assert sorted(os.listdir(out)) == sorted(["a.png", "b.png", "c.png", long_name])

    # 2. an output the file system refuses skips that input only, named in the failed count
    save = image_io.save_image

    def refuse_b(path, img):
        if os.path.basename(path) == "b.png":
            raise OSError(errno.ENAMETOOLONG, "File name too long", path)
        save(path, img)

    monkeypatch.setattr(image_io, "save_image", refuse_b)
    cfg.sample.output_dir, cfg.sample.overwrite = str(tmp_path / "out2"), True
    with pytest.raises(DataError, match=r"^1 of 4 input\(s\) could not be restored .*b.png: its "
                                        r"output .*b.png could not be written \(File name too"):
        run_restore_files(cfg, trained_workdir)
    assert sorted(os.listdir(tmp_path / "out2")) == sorted(["a.png", "c.png", long_name])

    # 3. a full disk stops the run naming the file and folder; the outputs before it are whole
    def full_at_c(path, img):
        if os.path.basename(path) == "c.png":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        save(path, img)

    monkeypatch.setattr(image_io, "save_image", full_at_c)
    cfg.sample.output_dir = str(tmp_path / "out3")
    with pytest.raises(DataError) as err:
        run_restore_files(cfg, trained_workdir)
    msg = str(err.value)
    assert f"no space left on device writing {tmp_path / 'out3' / 'c.png'} (folder " \
           f"{tmp_path / 'out3'})" in msg and "2 output(s) written before it are complete" in msg
    assert sorted(os.listdir(tmp_path / "out3")) == ["a.png", "b.png"]
    for name in ("a.png", "b.png"):  # complete: the same bytes as the uninterrupted run's
        assert (tmp_path / "out3" / name).read_bytes() == (out / name).read_bytes()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    from rdbm_jax.errors import ConfigError
    _inputs(tmp_path / "in", ["a.png"])
    (tmp_path / "out.png").write_text("a file")
    cfg = config(**{"sample.input_dir": str(tmp_path / "in"),
                    "sample.output_dir": str(tmp_path / "out.png")})
    with pytest.raises(ConfigError, match=r"sample.output_dir=.*out.png' is a file, not a folder"):
        run_restore_files(cfg, str(tmp_path / "no_workdir"))
    assert (tmp_path / "out.png").read_text() == "a file"


def _tmpfs(mount, kib):
    """Mount a tmpfs of `kib` KiB on `mount` (skip the test where that needs root)."""
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 96 KB tmpfs (a few 64x64 PNGs fit, twelve do not)."""
    _tmpfs(tmp_path / "tmpfs", 96)
    yield tmp_path / "tmpfs"
    subprocess.run(["umount", str(tmp_path / "tmpfs")], capture_output=True)


@contextlib.contextmanager
def _on_a_small_disk(trained_run, tmp_path, spare_kib: int, mode: str):
    """Run `--mode=<mode>` on a copy of `trained_run` on a tmpfs with `spare_kib` KiB to spare (a
    4 KB page per file and folder besides); yields (workdir, the last stderr line) while mounted.
    It must fail with exit 1 and no traceback."""
    from tests.helpers import run_cli
    used = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(trained_run) for f in fs)
    files = sum(len(fs) + 1 for _, _, fs in os.walk(trained_run))
    mount = tmp_path / "tmpfs"
    _tmpfs(mount, used // 1024 + 4 * files + spare_kib)
    try:
        workdir = mount / "run"
        shutil.copytree(trained_run, workdir)
        proc = run_cli("--config=configs/demo.py:tiny", f"--workdir={workdir}", f"--mode={mode}")
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        yield workdir, proc.stderr.strip().splitlines()[-1]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_really_full_disk_during_export_is_one_line(trained_run, tmp_path):
    """The workdir on a tmpfs that holds its checkpoint and little more: the export's artifact
    (MBs) does not fit; one line names it and its folder (it named no file: `[Errno 28]`)."""
    with _on_a_small_disk(trained_run, tmp_path, 256, "export") as (workdir, last):
        export = workdir / "export"
        assert last.startswith(f"error: no space left on device writing {export}/restorer.jax "
                               f"(folder {export}): stopped; the files written before it are "
                               "complete"), last
        assert not export.exists() or os.listdir(export) == []  # nothing half-written


def test_a_really_full_disk_during_eval_is_one_line(trained_run, tmp_path):
    """The workdir on a tmpfs that holds its checkpoint and 8 KB more: the evaluation's reports
    do not fit; one line names the file and its folder, nothing half-written (every file that is
    there decodes whole)."""
    with _on_a_small_disk(trained_run, tmp_path, 8, "eval") as (workdir, last):
        assert last.startswith(f"error: no space left on device writing {workdir}/eval/"), last
        assert f"(folder {workdir}/eval" in last and "are complete" in last, last
        for root, _, names in os.walk(workdir / "eval"):
            assert not any(n.startswith(".~rdbm-") for n in names)  # no temporary left
            for name in names:
                if name.endswith(".json"):
                    json.load(open(os.path.join(root, name), encoding="utf-8"))
                elif name.endswith(".png"):
                    with Image.open(os.path.join(root, name)) as img:
                        img.load()


def test_a_really_full_disk_during_sample_is_one_line(trained_workdir, tmp_path, small_tmpfs):
    """A real ENOSPC (tmpfs): the command line names the file and folder, exits 1; every output
    written before it decodes whole, and no temporary file is left."""
    from tests.helpers import run_cli
    src = tmp_path / "in"
    src.mkdir()
    rs = np.random.RandomState(0)
    for i in range(12):  # noise compresses badly: ~12 KB a PNG
        Image.fromarray(rs.randint(0, 256, (64, 64, 3)).astype(np.uint8)).save(src / f"{i:02d}.png")
    out = small_tmpfs / "out"
    proc = run_cli("--config=configs/demo.py:tiny", f"--workdir={trained_workdir}", "--mode=sample",
                   f"--config.sample.input_dir={src}", f"--config.sample.output_dir={out}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    written = sorted(os.listdir(out))
    assert 0 < len(written) < 12 and all(not n.startswith(".") for n in written)
    assert last.startswith(f"error: no space left on device writing {out}/{len(written):02d}.png "
                           f"(folder {out}): stopped; the {len(written)} output(s) written before "
                           "it are complete"), last
    for name in written:  # complete: each decodes whole
        with Image.open(out / name) as img:
            img.load()


# --- the output folder is never the input folder (real paths) -------------------------------------

def test_output_dir_symlinked_to_the_input_dir_is_refused_and_inputs_are_untouched(tmp_path):
    src = tmp_path / "in"
    write_png(src / "a.png")
    before = (src / "a.png").read_bytes()
    os.symlink(src, tmp_path / "link")
    cfg = sample_config(src, tmp_path / "link", **{"sample.overwrite": True})
    with pytest.raises(ConfigError, match="sample.output_dir.*is the input folder"):
        run_restore_files(cfg, str(tmp_path / "no_workdir_needed"))
    assert (src / "a.png").read_bytes() == before and os.listdir(src) == ["a.png"]


def test_output_dir_inside_the_input_dir_is_refused(tmp_path):
    src = tmp_path / "in"
    write_png(src / "a.png")
    with pytest.raises(ConfigError, match="inside sample.input_dir"):
        run_restore_files(sample_config(src, src / "restored"), str(tmp_path / "no_workdir_needed"))
    assert not (src / "restored").exists()


# --- atomic reports -------------------------------------------------------------------------------

def _killed_at_fsync(monkeypatch):
    """Make the next atomic write die as a kill would: its bytes written, not yet renamed."""
    def die(fd):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(atomic.os, "fsync", die)


def test_a_killed_eval_report_keeps_the_previous_metrics_json(tmp_path, monkeypatch):
    out = str(tmp_path / "eval")
    per_task = {"main": {"psnr": 20.0}, "overall": {"psnr": 20.0}}
    reports.write_report(out, [{"task": "main", "name": "a", "psnr": 20.0}], per_task, {"step": 1})
    before = {f: open(os.path.join(out, f), "rb").read() for f in ("metrics.json", "per_image.csv")}
    _killed_at_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        reports.write_report(out, [{"task": "main", "name": "a", "psnr": 30.0}],
                              {"main": {"psnr": 30.0}, "overall": {"psnr": 30.0}}, {"step": 2})
    after = {f: open(os.path.join(out, f), "rb").read() for f in ("metrics.json", "per_image.csv")}
    assert after == before  # whole, and the previous results
    assert sorted(os.listdir(out)) == ["metrics.json", "per_image.csv"]  # no temporary left


def test_export_killed_between_artifact_and_metadata_is_refused_by_the_loader(tmp_path,
                                                                           monkeypatch):
    out = str(tmp_path / "export")
    os.makedirs(out)
    export.write_unit(out, b"old artifact", {"artifact_sha256": export_loader.hashlib.sha256(
        b"old artifact").hexdigest(), "step": 1})
    real_write_text = paths.write_text

    def write_text(path, text):
        if path.endswith(export.METADATA):
            raise KeyboardInterrupt("killed after the artifact's rename")
        real_write_text(path, text)

    monkeypatch.setattr(paths, "write_text", write_text)
    with pytest.raises(KeyboardInterrupt):
        export.write_unit(out, b"new artifact", {"artifact_sha256": export_loader.hashlib.sha256(
            b"new artifact").hexdigest(), "step": 2})
    with pytest.raises(ValueError, match="describes another artifact.*run --mode=export again"):
        export_loader.load(os.path.join(out, export.ARTIFACT))


def test_sample_removes_the_temporary_files_a_killed_run_left(tmp_path, trained_workdir, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png")
    write_png(out / "sub" / "keep.png")
    # a writer that died (exited) with its temporary file in place
    code = ("import sys; from rdbm_jax.runtime import atomic; "
            "f = open(atomic.temp_path(sys.argv[1]), 'wb'); f.write(b'half a png'); "
            "print(f.name)")
    stale = subprocess.run([sys.executable, "-c", code, str(out / "sub" / "b.png")], cwd=REPO,
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": REPO}).stdout.strip()
    assert os.path.exists(stale)
    (out / "notes.tmp").write_text("the user's own")
    (out / "sub" / ".b.png.4242.tmp").write_text("the user's own too")  # the old temp pattern
    with caplog.at_level(logging.INFO, logger="rdbm_jax"):
        run_restore_files(sample_config(src, out), trained_workdir)
    assert not os.path.exists(stale) and (out / "notes.tmp").exists() and (out / "a.png").exists()
    assert (out / "sub" / ".b.png.4242.tmp").exists()
    assert "removed 1 temporary file(s)" in caplog.text
