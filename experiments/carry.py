"""Carry an experiment's run directory to the next session as one tar (issue 28).

    python -m experiments.carry pack --workdir RUNS/T128 --out CARRY/T128.tar
    python -m experiments.carry unpack --tar CARRY/T128.tar --runs-dir RUNS

A session's disk does not outlive it; only what git holds does. A long run of the scaling study or
the recipes is carried as its newest checkpoint **that has a CPU count** in study_cpu.json (so the
resumed run counts its CPU-seconds on from it), its config.json, study_cpu.json and, when there,
metrics.jsonl. Older checkpoints and TensorBoard files stay behind.

`unpack` refuses a run directory that is already there (a run is never mixed into another one) and
any member outside `<name>/`; it extracts into a temporary folder and renames it into place, so an
interrupted unpack leaves nothing under the run's name. The orbax files are checked against their
sha256 sums when the run restores them, study_cpu.json when it is read.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile

from experiments import cli, scaling
from rdbm_jax.checkpointing import checkpoints
from rdbm_jax.errors import DataError
from rdbm_jax.runtime import atomic

# What travels beside the checkpoint: the resume check, the CPU count, the training curve.
FILES = ("config.json", scaling.CPU_FILE, "metrics.jsonl")


def carried_step(workdir: str) -> int:
    """The newest complete checkpoint step of `workdir` with a CPU count (DataError when none)."""
    counted = scaling.read_cpu(workdir)
    steps = checkpoints.complete_steps(checkpoints.checkpoint_dir(workdir))
    for step in steps:
        if step in counted:
            return step
    raise DataError(f"{workdir}: no complete checkpoint with a CPU count in {scaling.CPU_FILE} "
                    f"(checkpoints: {steps or 'none'})")


def pack(workdir: str, out: str) -> int:
    """Write `out` (a tar, atomically; never over an existing file); returns the step carried."""
    workdir = os.path.abspath(workdir)
    if os.path.exists(out):
        raise DataError(f"{out}: already exists; carry to another path")
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise DataError(f"{workdir}: not a run directory (no config.json)")
    step = carried_step(workdir)
    name = os.path.basename(workdir)
    ckpt = os.path.relpath(os.path.join(checkpoints.checkpoint_dir(workdir), str(step)), workdir)
    members = [f for f in FILES if os.path.exists(os.path.join(workdir, f))] + [ckpt]
    with atomic.replacing(out) as tmp:
        with tarfile.open(tmp, "w") as tar:
            for member in members:
                tar.add(os.path.join(workdir, member), arcname=os.path.join(name, member))
    return step


def _members(tar: tarfile.TarFile, path: str) -> tuple[str, list[tarfile.TarInfo]]:
    """The one run name every member lies under, and the members; DataError for anything else."""
    members = tar.getmembers()
    names = {m.name.split("/", 1)[0] for m in members}
    if len(names) != 1 or not members:
        raise DataError(f"{path}: not one run directory (top-level names: {sorted(names)})")
    name = names.pop()
    if name in ("", ".", ".."):
        raise DataError(f"{path}: not one run directory (a member lies outside any name)")
    for m in members:
        if os.path.isabs(m.name) or ".." in m.name.split("/"):
            raise DataError(f"{path}: member {m.name!r} lies outside its run directory")
        if not (m.isfile() or m.isdir()):
            raise DataError(f"{path}: member {m.name!r} is not a plain file or folder")
    return name, members


def unpack(tar_path: str, runs_dir: str) -> str:
    """Extract `tar_path` as `<runs_dir>/<name>`, refusing one that exists; returns that path."""
    try:
        tar = tarfile.open(tar_path)
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"{tar_path}: not a readable tar ({e})") from None
    with tar:
        name, members = _members(tar, tar_path)
        dest = os.path.join(runs_dir, name)
        if os.path.lexists(dest):
            raise DataError(f"{dest}: already exists; a carried run is never mixed into another")
        os.makedirs(runs_dir, exist_ok=True)
        # extracted beside its destination, then renamed in one step
        stage = tempfile.mkdtemp(prefix=".carry-", dir=runs_dir)
        try:
            try:
                # the members were checked above; the "data" filter (Python ≥ 3.11.4) also drops
                # modes and owners a tar could carry
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(stage, members=members, **extra)
            except (OSError, tarfile.TarError) as e:
                raise DataError(f"{tar_path}: cannot extract ({e})") from None
            os.rename(os.path.join(stage, name), dest)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return dest


def parser() -> argparse.ArgumentParser:
    """The command line: `pack` or `unpack`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="a run directory's newest counted checkpoint → a tar")
    pk.add_argument("--workdir", required=True)
    pk.add_argument("--out", required=True, help="the tar to write (must not exist)")
    up = sub.add_parser("unpack", help="a carried tar → <runs-dir>/<name>")
    up.add_argument("--tar", required=True)
    up.add_argument("--runs-dir", required=True)
    return p


def main(argv: list[str] | None = None) -> str:
    """Pack or unpack; prints and returns what was done."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "pack":
        step = pack(args.workdir, args.out)
        done = f"{args.out}: {args.workdir} at step {step}"
    else:
        done = f"{unpack(args.tar, args.runs_dir)}: unpacked from {args.tar}"
    print(done)
    return done


if __name__ == "__main__":
    cli.run(main)
