"""The command-line pieces every benchmark shares (common options, the --tiny preset, GPU
memory)."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Mapping


def share_gpu_with_torch() -> None:
    """Keep JAX from taking 75 % of a GPU that the PyTorch twin shares (before JAX starts a
    backend)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def add_common_args(p: "argparse.ArgumentParser", tiny: Mapping[str, Any], what: str) -> None:
    """The options every benchmark shares: device label, peak measurement, deadline, --tiny,
    --out."""
    p.add_argument("--device-name", default=None,
                   help="label for the device (default: device_kind)")
    p.add_argument("--matmul-n", type=int, default=8192, help="peak measurement matmul size")
    p.add_argument("--copy-mib", type=int, default=1024, help="peak measurement copy size")
    p.add_argument("--no-peak", action="store_true", help="skip the peak measurement")
    p.add_argument("--deadline", type=float, default=0.0,
                   help=f"epoch s: skip {what}s started later")
    p.add_argument("--keep-going", action="store_true",
                   help=f"record a failing {what} in `errors` and go on with the next")
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke preset: " + json.dumps(dict(tiny)))
    p.add_argument("--out", default="", help="write the raw results here (JSON)")


def parse_with_preset(p: "argparse.ArgumentParser", argv: list[str] | None, tiny: Mapping[str, Any],
                      positive: tuple[str, ...]) -> "argparse.Namespace":
    """Parse; --tiny replaces every default the command line does not set; check ≥ 1 / ≥ 0
    options."""
    opts = p.parse_args(argv)
    if opts.tiny:
        p.set_defaults(**tiny)
        opts = p.parse_args(argv)
    for name in positive:
        if getattr(opts, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if opts.warmup < 0:
        p.error("--warmup must be ≥ 0")
    return opts
