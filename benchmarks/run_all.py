"""Every benchmark of issues 7/14 in one run: startup (cold/warm cache), peaks, train, sampling,
variants.

    python -m benchmarks.run_all --out-dir "$OUT"            # GPU, ~7 min (budget-guarded)
    python -m benchmarks.run_all --out-dir "$OUT" --quick    # GPU, size B only, ~3-4 min
    python -m benchmarks.run_all --out-dir /tmp/b --tiny     # CPU smoke run

Order: (1) time to the first train step in two fresh processes sharing a new persistent compilation
cache — cold, then warm; (2) this process adopts that cache (so the K = 1 step of the first size is
not compiled twice) and measures the device peaks; (3) the preset's stages in priority order (full:
train B batch 16 with the twin eager and compiled; sampling B (256² × 16, 720×1280 × 1) with the
twin's loop; train L like B; then the variants: cuDNN attention for train B, sampling and train L; B
and L at the largest batch the memory model predicts (the faster attention; twin eager at the same
batch); B with K = 4 steps per dispatch; B in a fresh process with other XLA flags). No
configuration starts after --budget-s. Writes bench_train.json, bench_sample.json, results.json and
table.md to --out-dir after every configuration (a run cut short keeps what it measured) and prints
the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

_T0 = time.time()

from benchmarks import bench_sample, bench_train  # noqa: E402
from benchmarks import cli, measure, roofline as rl  # noqa: E402
from benchmarks.report import merge_saved, render  # noqa: E402
from rdbm_jax.runtime import atomic  # noqa: E402

# Stages in priority order (a stage past the time budget is skipped, config by config).
CUDNN = ["--variant", "cudnn:model.attention_impl=cudnn"]
TIMED = ["--steps", "40", "--warmup", "5"]
SAMPLE = ["--size", "B", "--steps", "10", "--warmup", "2"]
PRESETS = {
    "full": dict(
        stages=[
            ("train", ["--size", "B", "--steps-per-dispatch", "1", *TIMED]),
            ("sample", [*SAMPLE, "--attention-impl", "xla"]),
            ("train", ["--size", "L", "--steps-per-dispatch", "1", *TIMED]),
            ("train", ["--size", "B", "--steps-per-dispatch", "1", "--skip-base", *TIMED, *CUDNN]),
            ("sample", [*SAMPLE, "--attention-impl", "cudnn"]),
            ("train", ["--size", "L", "--steps-per-dispatch", "1", "--skip-base", *TIMED, *CUDNN]),
            ("train", ["--size", "B", "--max-batch-only", *TIMED]),
            ("train", ["--size", "B", "--steps-per-dispatch", "4", "--twin", "off", *TIMED]),
            ("train", ["--size", "L", "--max-batch-only", *TIMED]),
            ("xla", ["--size", "B", "--steps-per-dispatch", "1", "--twin", "off",
                     *TIMED], "--xla_gpu_enable_latency_hiding_scheduler=true")
        ], startup=["--size", "B"], budget=450.0),
    "quick": dict(
        stages=[("train",
                 ["--size", "B", "--steps-per-dispatch", "1,4", "--steps", "30", "--warmup", "3"]),
                ("sample", ["--size", "B", "--steps", "10", "--warmup", "2"])],
        startup=["--size", "B"], budget=300.0),
    "tiny": dict(stages=[("train", ["--tiny"]), ("sample", ["--tiny"])], startup=["--tiny"],
                 budget=0.0),
}


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="",
                   help="where the JSON files and table.md go (required to run)")
    p.add_argument("--render", nargs="+", default=None, metavar="JSON",
                   help="only print the table of saved results: a results.json, then bench_train/"
                   "bench_sample JSON files of later runs on the same device (rows appended)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="size B only, fewer timed steps")
    g.add_argument("--tiny", action="store_true", help="CPU smoke run (size T, 32², batch 2)")
    p.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16; tiny: float32)")
    p.add_argument("--device-name", default=None,
                   help="label for the device (default: device_kind)")
    p.add_argument("--twin", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--twin-compile", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new configuration after this many seconds (0 = no limit)")
    p.add_argument("--skip-startup", action="store_true", help="skip the cold/warm startup runs")
    p.add_argument("--cache-dir", default="", help="persistent cache of the startup runs (must be "
                   "empty or absent; default: a new temporary folder)")
    p.add_argument("--startup-timeout-s", type=float, default=300.0)
    p.add_argument("--matmul-n", type=int, default=None,
                   help="peak matmul size (default 8192; tiny 256)")
    p.add_argument("--copy-mib", type=int, default=None,
                   help="peak copy size (default 1024; tiny 16)")
    p.add_argument("--train-args", default="", help="extra bench_train arguments (one string)")
    p.add_argument("--sample-args", default="", help="extra bench_sample arguments (one string)")
    return p


def common_args(opts: argparse.Namespace) -> list[str]:
    """Arguments passed to both benchmarks."""
    out = ["--twin", opts.twin]
    if opts.dtype:
        out += ["--dtype", opts.dtype]
    if opts.device_name:
        out += ["--device-name", opts.device_name]
    return out


def startup_run(args: list[str], cache_dir: str, timeout: float) -> dict[str, Any]:
    """One fresh `bench_train --startup-child` process; its breakdown plus spawn → step-1 wall
    time."""
    cmd = [sys.executable, "-m", "benchmarks.bench_train", *args, "--startup-child", cache_dir]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=bench_train.REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.time() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("STARTUP ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"startup run failed (exit {proc.returncode}): {' | '.join(tail)}")
    out = json.loads(lines[-1][len("STARTUP "):])
    out["to_step1_s"] = out["step1_done_epoch"] - t0
    out["process_wall_s"] = wall
    return out


def startup(opts: argparse.Namespace, preset: dict, cache_dir: str) -> dict[str, Any]:
    """Cold then warm time-to-first-train-step, both in fresh processes sharing `cache_dir`."""
    if os.path.isdir(cache_dir) and os.listdir(cache_dir):
        raise ValueError(f"--cache-dir {cache_dir}: not empty, so the first run would not be cold")
    os.makedirs(cache_dir, exist_ok=True)
    args = preset["startup"] + common_args(opts)
    cold = startup_run(args, cache_dir, opts.startup_timeout_s)
    print(f"startup cold: step 1 after {cold['to_step1_s']:.1f} s", flush=True)
    warm = startup_run(args, cache_dir, opts.startup_timeout_s)
    print(f"startup warm: step 1 after {warm['to_step1_s']:.1f} s", flush=True)
    return {"cache_dir": cache_dir, "args": args, "cold": cold, "warm": warm}


def xla_flags_run(flags: str, argv: list[str], peak: dict, deadline: float,
                  out_dir: str) -> dict[str, Any]:
    """bench_train in a fresh process with XLA_FLAGS += `flags` (XLA reads them once per process);
    its rows are labelled with the flags and their roofline recomputed against this run's peaks."""
    if deadline and time.time() > deadline:
        return {
            "results": [], "errors": [],
            "skipped": [f"XLA_FLAGS={flags}: past the run's time budget"]
        }
    out = os.path.join(tempfile.mkdtemp(prefix="rdbm_bench_xla_"), "train.json")
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    log = os.path.join(out_dir, "xla_flags_run.log")
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_train", *argv, "--no-peak", "--out", out],
            cwd=bench_train.REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
            timeout=max(60.0, deadline - time.time() + 120) if deadline else None)
    if not os.path.isfile(out):
        raise RuntimeError(
            f"XLA_FLAGS={flags}: bench_train exited {proc.returncode} without results "
            f"(see {os.path.basename(log)})")
    with open(out, encoding="utf-8") as f:
        data = json.load(f)
    for r in data["results"]:
        r["variant"] = f"{r.get('variant', 'base')}, XLA_FLAGS={flags}"
        if "step_ms" in r:
            r.update(
                rl.roofline(r.get("flops_per_step"), r.get("bytes_per_step"), r["step_ms"] / 1e3,
                            peak))
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run everything; returns the merged results (also written to <out-dir>/results.json)."""
    cli.share_gpu_with_torch()  # before JAX starts a backend (the twin shares the GPU)
    start = _T0 if argv is None else time.time()  # the command line: count the imports too
    p = parser()
    opts = p.parse_args(sys.argv[1:] if argv is None else argv)
    if opts.render:
        merged = merge_saved(opts.render)
        print(render(merged), end="", flush=True)
        return merged
    if not opts.out_dir:
        p.error("--out-dir is required (unless --render)")
    name = "tiny" if opts.tiny else "quick" if opts.quick else "full"
    preset = PRESETS[name]
    budget = preset["budget"] if opts.budget_s is None else opts.budget_s
    deadline = start + budget if budget > 0 else 0.0
    os.makedirs(opts.out_dir, exist_ok=True)
    merged: dict[str, Any] = {"preset": name, "argv": argv if argv is not None else sys.argv[1:],
                              "budget_s": budget, "startup": None, "skipped": []}

    def save() -> str:
        merged["wall_s"] = time.time() - start
        measure.write_json(os.path.join(opts.out_dir, "results.json"), merged)
        table = render(merged)
        atomic.write_text(os.path.join(opts.out_dir, "table.md"), table)
        return table

    if not opts.skip_startup:
        cache_dir = opts.cache_dir or tempfile.mkdtemp(prefix="rdbm_bench_xla_cache_")
        try:
            merged["startup"] = startup(opts, preset, cache_dir)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            merged["skipped"].append(f"startup: {e}")
        import jax  # noqa: PLC0415 — this process compiles nothing before this point
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    env = measure.environment(opts.device_name)
    tiny_cpu = bench_train.TINY if opts.tiny else {}
    dtype = opts.dtype or tiny_cpu.get("dtype", "bfloat16")
    peak = rl.measure_peak(dtype, opts.matmul_n or tiny_cpu.get("matmul_n", 8192),
                           opts.copy_mib or tiny_cpu.get("copy_mib", 1024))
    merged.update(environment=env, peak=peak)
    print(f"peak: {peak['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s matmul, "
          f"{peak['copy_bytes_per_s'] / 1e9:.0f} GB/s copy ({peak['method']})", flush=True)
    save()
    deadline_args = ["--deadline", str(deadline)] if deadline else []
    for stage, args, *flags in preset["stages"]:
        kind = "sample" if stage == "sample" else "train"
        # the stage overrides
        argv_stage = common_args(opts) + args + deadline_args + ["--keep-going"]
        if kind == "train":
            argv_stage += ["--twin-compile", opts.twin_compile]
        argv_stage += shlex.split(opts.train_args if kind == "train" else opts.sample_args)
        earlier = dict(merged[kind]) if merged.get(kind) else None

        def progress(data: dict, kind=kind, earlier=earlier) -> None:
            merged[kind] = data if earlier is None else {
                **data,
                **{key: earlier[key] + data[key]
                   for key in ("results", "skipped", "errors")}
            }
            measure.write_json(os.path.join(opts.out_dir, f"bench_{kind}.json"), merged[kind])
            save()

        try:
            if stage == "xla":
                data = xla_flags_run(flags[0], argv_stage, peak, deadline, opts.out_dir)
            elif stage == "train":
                data = bench_train.main(argv_stage, peak=peak, env=env, on_result=progress,
                                        measured=(earlier or {}).get("results", []))
            else:
                data = bench_sample.main(argv_stage, peak=peak, env=env, on_result=progress)
        except Exception as e:  # noqa: BLE001 — one broken stage must not lose the others
            import traceback  # noqa: PLC0415
            traceback.print_exc()
            merged["skipped"].append(
                f"stage {stage} {' '.join(args)}: {type(e).__name__}: {e}"[:300])
            save()
            continue
        progress(data)
    table = save()
    print(table, flush=True)
    print(f"run_all: {merged['wall_s']:.0f} s wall; results in {opts.out_dir}", flush=True)
    return merged


if __name__ == "__main__":
    main()
