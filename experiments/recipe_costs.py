"""Training cost per step of recipes, measured one after another on this machine (issue 28): the
basis of `recipes.STEP_SHARE`, the step counts at which a dearer recipe costs the demo's CPU time.

    python -m experiments.recipe_costs --out experiments/results/recipes/costs.json \
        --recipes demo,S,crop128,multiscale

Each recipe's fold-0 config trains --steps steps through the real training loop (input pipeline
and pre-fill included); the cost is the process CPU time (all threads) and the wall time from step
--skip to --steps, after compilation, synced to the host at both ends only. `share` = the first
recipe's CPU-s per step over the recipe's. Run it on an otherwise idle machine: the ratios come
from one run on one device.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import sys
import tempfile
import time
from typing import Any

from experiments import cli, recipes, scaling
from rdbm_jax import train
from rdbm_jax.errors import ConfigError, TrainingError
from rdbm_jax.runtime import atomic


def measure(recipe: str, steps: int, skip: int, tiny: bool) -> dict[str, float]:
    """{cpu_s_per_step, wall_s_per_step} of `recipe`'s training between steps `skip` and
    `steps`."""
    cfg = recipes.fold_config(recipe, 0, steps, tiny)
    # The recipe's own share is not applied (the cost per step is measured). One step past the
    # window: the last step's checkpoint falls outside it. Logged (host-synced) only at the
    # window's ends, so the steps run as a real run's.
    cfg.train.num_steps = steps + 1
    cfg.train.log_every = math.gcd(skip, steps)
    cfg.train.checkpoint_every = steps + 1
    marks: dict[int, tuple[float, float]] = {}

    def hook(step: int, state: Any) -> None:
        del state
        if step in (skip, steps):
            marks[step] = (time.process_time(), time.time())

    workdir = tempfile.mkdtemp(prefix=f"cost_{recipe}_")
    try:
        train.train_and_evaluate(cfg, workdir, hooks=[hook])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if set(marks) != {skip, steps}:  # a stop signal ended the run early (it saved and returned)
        raise TrainingError(f"{recipe}: training stopped before step {steps}; nothing written")
    n = steps - skip
    return {"cpu_s_per_step": (marks[steps][0] - marks[skip][0]) / n,
            "wall_s_per_step": (marks[steps][1] - marks[skip][1]) / n}


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="costs.json")
    p.add_argument("--recipes", default="demo,S,crop128,multiscale",
                   help="comma-separated; the first is the reference of `share`")
    p.add_argument("--steps", type=int, default=300, help="timed window's last step")
    p.add_argument("--skip", type=int, default=100, help="untimed first steps (compilation)")
    p.add_argument("--tiny", action="store_true", help="smoke run: configs/demo.py:tiny shapes")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure each recipe; write and return {machine, commit, utc, steps, recipes: {...}}."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not names or not 0 < args.skip < args.steps:
        raise ConfigError("--recipes must be non-empty and 0 < --skip < --steps")
    costs = {name: measure(name, args.steps, args.skip, args.tiny) for name in names}
    ref = costs[names[0]]["cpu_s_per_step"]
    for cost in costs.values():
        cost["share"] = ref / cost["cpu_s_per_step"]
    doc = {"machine": scaling.machine(), "commit": scaling.commit(),
           "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "steps": args.steps, "skip": args.skip, "reference": names[0], "recipes": costs}
    atomic.write_text(args.out, json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    cli.run(main)
