"""Recipes chosen on more than one photo (issue 28, item 2): k-fold over the 8 training photos.

    python -m experiments.recipes --out-dir runs/recipes --recipes demo,nofuse
    python -m experiments.recipes --out-dir /tmp/rec --recipes demo,nofuse --tiny   # smoke

Each recipe (`RECIPES`: overrides of configs/demo.py) is trained once per fold on `fold<i>_train`
(six photos) and scored on `fold<i>` (the two held-out photos; rdbm_jax/data/builtin.py); no
validation photo is ever read. Scores: PSNR inside the holes at each --sizes (experiments/holes.py)
of the model at --nfe (or the recipe's own `sample.num_steps`), beside the input, scikit-image's
biharmonic and the recipe's own pre-fill on the same held-out photos and masks. Reported per
recipe: mean ± spread (sample standard deviation) over the folds of the model and of its gain
over biharmonic; and for each recipe against the first listed (the reference) and, where it is
another, against the listed recipe it extends (the one trained as long whose overrides it extends
by the fewest keys), the per-fold paired differences with a verdict:

**Decision rule.** With d_i = model_B − model_A on fold i (same photos, same masks), k folds,
mean d̄ and sample deviation s: B **wins** when every d_i > 0 and the one-sided paired t statistic
d̄ / (s / √k) is at least Student's t quantile 0.95 with k − 1 degrees of freedom (2.35 for 4
folds); B **loses** when the same holds for −d; otherwise **no verdict**: the difference is within
the spread over folds. (All k folds agreeing in sign alone has probability 2^−(k−1) under no
difference: 1/8 for 4 folds, too weak by itself; the t test alone can pass on one large fold.)

A recipe that changes only how the network samples (`sample.*` keys, e.g. `nofuse`) trains
nothing: it is scored on the weights of the recipe with its other overrides (`trained_as`), so the
paired difference measures the sampling choice alone, on the very same networks.

Resumable as the scaling study is: recipes.csv grows one (recipe, fold) at a time, atomically; a
rerun skips what it holds and resumes a run from its checkpoint (<runs-dir>/<recipe>_fold<i>).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
from typing import Any

import ml_collections
import numpy as np
from scipy import stats

from experiments import cli, holes, results_csv, scaling, scaling_study
from rdbm_jax.runtime import atomic
from rdbm_jax import config as config_lib
from rdbm_jax.config_files import load
from rdbm_jax.data import builtin
from rdbm_jax.errors import ConfigError

# What every recipe starts from: the demo as these folds measured it (configs/demo.py has since
# taken recipe `mixfill`'s pre-fill; the recorded rows keep their meaning and settings hash).
BASE: dict[str, Any] = scaling_study.DEMO_BASE
# The demo's choices that matter (issue 28), each a set of overrides of BASE.
RECIPES: dict[str, dict[str, Any]] = {
    "demo": {},
    "harmonic": {"model.condition": "mu_mask_fill"},  # the previous demo's pre-fill
    "nofuse": {"sample.fuse": False},
    "crop128": {"data.crop_size": 128},
    "S": {"model.size": "S"},
    # multi-scale (issue 28, item 3): photos shrunk by up to 2× before cropping, batches of 64²
    # and 128² crops
    "multiscale": {"data.scale_min": 0.5, "data.scale_max": 1.0, "data.crop_size": 128,
                   "data.crop_sizes": "64,128"},
    # multi-scale at the demo's cost per step: the demo's 64² crops cut from photos shrunk by up
    # to 5× (log-uniform), so crops also look like the 128 px evaluation photos (the built-in
    # photos are 451–1 411 px; 128 px is 0.09–0.28 of them). `multiscale` costs more per step.
    "rescale": {"data.scale_min": 0.2, "data.scale_max": 1.0},
    # one sampling step (the scaling study's longer runs gain at NFE 1 and lose at NFE 10)
    "nfe1": {"sample.num_steps": 1},
    # The dearer recipes at the demo's training compute (`STEP_SHARE`): is the choice better, not
    # the extra compute? (The scaling study measures what more compute buys.)
    "S_eq": {"model.size": "S"},
    "crop128_eq": {"data.crop_size": 128},
    "multiscale_eq": {"data.scale_min": 0.5, "data.scale_max": 1.0, "data.crop_size": 128,
                      "data.crop_sizes": "64,128"},
    # The demo trained 8× longer (STEP_SHARE), scored at NFE 10 and at NFE 1: the scaling study's
    # T64 run gained at NFE 1 only at its 8× point, on the validation photos; this asks the folds.
    "long": {},
    "long_nfe1": {"sample.num_steps": 1},
    # The average of the harmonic and biharmonic fills as the pre-fill: on the folds' held-out
    # photos, with no network, each of the two fills beats the other on some fold by up to 1.4 dB
    # (experiments/prefills.py); their average is the plain ensemble of the two.
    "mixfill": {"model.condition": "mu_mask_mixfill"},
    # mixfill (the demo since 2026-12-07) trained with L2 instead of L1: PSNR scores the squared
    # error, whose minimiser is the conditional mean; L1's is the median (decided before any run).
    "mixfill_l2": {"model.condition": "mu_mask_mixfill", "train.loss": "l2"},
    # mixfill at 3× the learning rate (3e-3, same warm-up and cosine): its network adds nothing
    # over its pre-fill even on its own training photos (−0.02 dB at 128 px, mean of 4 folds;
    # experiments/fit_gap.py), so at the demo's 1 500 steps it under-fits (decided before any run).
    "mixfill_lr3": {"model.condition": "mu_mask_mixfill", "optim.learning_rate": 3e-3},
    # mixfill with t drawn log-uniformly in the distance to T (`program.t_log_weights`): its
    # training loss falls while what it adds at t = T stays 0, as if the falling loss were the
    # small-t steps, where x_t shows x0 (decided before any run).
    "mixfill_late": {"model.condition": "mu_mask_mixfill", "train.t_sampling": "late"},
}
# The share of --steps a recipe trains for (1 when absent); steps are rounded to a multiple of 25.
# The `_eq` recipes' shares make their training cost the demo's time: the demo's CPU-s per step
# over the recipe's, measured on the idle 2-core machine with the final
# experiments/recipe_costs.py (experiments/results/recipes/costs.json).
STEP_SHARE: dict[str, float] = {"S_eq": 0.544, "crop128_eq": 0.284, "multiscale_eq": 0.435,
                                "long": 8.0, "long_nfe1": 8.0}
SCORES = ("input", "biharmonic", "prefill", "model")
NUMERIC = ("fold", "steps", "size", "nfe") + SCORES + ("train_cpu_s",)
FIELDS = ("recipe",) + NUMERIC + ("settings", "commit", "utc")
CSV_NAME = "recipes.csv"
log = logging.getLogger("rdbm_jax")


def fold_config(recipe: str, fold: int, steps: int, tiny: bool) -> ml_collections.ConfigDict:
    """configs/demo.py with the recipe's overrides, trained on fold<i>_train, scored on fold<i>."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipes: unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    if not 0 <= fold < len(builtin.FOLDS):
        raise ConfigError(f"--folds: fold {fold} not in [0, {len(builtin.FOLDS)})")
    cfg = load("configs/demo.py:tiny" if tiny else "configs/demo.py", root=scaling.REPO)
    config_lib.put(cfg, {**BASE, **RECIPES[recipe]})
    if tiny:
        cfg.data.crop_size = 32
        cfg.data.crop_sizes = "16,32" if cfg.data.crop_sizes else ""
        cfg.eval.max_images = 0  # the fold's two photos
    cfg.data.tasks.main.train.split = f"fold{fold}_train"
    cfg.data.tasks.main.eval.split = f"fold{fold}"
    cfg.train.num_steps = steps_of(recipe, steps)
    cfg.train.eval_every = 0
    # every 500 steps (a killed run loses at most 500) and at the last step (the trainer always
    # saves it)
    cfg.train.checkpoint_every = min(cfg.train.num_steps, 500)
    cfg.eval.per_step = False
    return cfg


def steps_of(recipe: str, steps: int) -> int:
    """The steps `recipe` trains for at --steps: `steps` × its STEP_SHARE, to a multiple of 25
    (at least 25); under 100 steps (a tiny smoke run) `steps` itself."""
    share = STEP_SHARE.get(recipe, 1.0)
    if share == 1.0 or steps < 100:
        return steps
    return max(25, int(round(steps * share / 25)) * 25)


def trained_as(recipe: str) -> str:
    """The recipe whose training runs `recipe` uses: itself, unless its overrides differ from
    another recipe's only in `sample.*` keys (sampling choices need no training of their own)."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipes: unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    trains = {k: v for k, v in RECIPES[recipe].items() if not k.startswith("sample.")}
    share = STEP_SHARE.get(recipe, 1.0)
    for name, overrides in RECIPES.items():  # the first listed wins: "demo" before the others
        if name != recipe and overrides == trains and STEP_SHARE.get(name, 1.0) == share:
            return name
    return recipe


def nfe_of(recipe: str, default: int) -> int:
    """The sampling steps a recipe is scored at: its own `sample.num_steps`, else --nfe."""
    return int(RECIPES[recipe].get("sample.num_steps", default))


def verdict(diffs: list[float]) -> tuple[str, float, float]:
    """(win | loss | no verdict, paired t statistic, its one-sided 95 % critical value) of the
    per-fold differences B − A (module docstring)."""
    d = np.asarray(diffs, np.float64)
    k = len(d)
    if k < 2:
        return "no verdict", math.nan, math.nan
    crit = float(stats.t.ppf(0.95, k - 1))
    s = float(d.std(ddof=1))
    if s == 0.0:  # every fold the same difference: the sign decides (or nothing, at 0)
        t = math.copysign(math.inf, d.mean()) if d.mean() != 0 else 0.0
    else:
        t = float(d.mean() / (s / math.sqrt(k)))
    if np.all(d > 0) and t >= crit:
        return "win", t, crit
    if np.all(d < 0) and -t >= crit:
        return "loss", t, crit
    return "no verdict", t, crit


def mean_sd(values: list[float]) -> str:
    """mean ± sample standard deviation over folds (— when not measured)."""
    v = np.asarray(values, np.float64)
    if not np.all(np.isfinite(v)):
        return "—"
    sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return f"{v.mean():.2f}" + (f" ± {sd:.2f}" if math.isfinite(sd) else "")


def _protocol(rows: list[dict[str, Any]], recipes: list[str], machine: str = "") -> list[str]:
    """What the table's numbers are: the recipes' overrides, folds, steps, NFE, where measured."""
    steps = sorted({int(r["steps"]) for r in rows})
    nfes = sorted({int(r["nfe"]) for r in rows})
    commits = sorted({r["commit"] for r in rows})
    when = sorted(r["utc"] for r in rows)
    base = ", ".join(f"`{k}={v!r}`" for k, v in BASE.items())
    lines = [f"Protocol: each recipe is `configs/demo.py` with {base} (the demo these folds "
             "decided against; `demo` below) and its own overrides, trained on "
             "`fold<i>_train` (six of the 8 built-in training photos) for "
             f"{', '.join(map(str, steps))} steps (a recipe with a STEP_SHARE trains that share "
             "of --steps: an `_eq` recipe's is meant to cost the demo's training time, `long`'s "
             "is 8; the train CPU-s column depends "
             "on the machine's load when each was run) and scored on `fold<i>` (the other two: "
             + "; ".join(f"fold {i}: {', '.join(f)}" for i, f in enumerate(builtin.FOLDS))
             + "); no validation photo is read. PSNR inside the holes (`psnr_masked`: RGB in "
             "[0, 1], uint8-rounded, no border crop), whole photo resized to the long side, "
             f"fixed masks per (seed, photo), NFE {', '.join(map(str, nfes))} (a recipe's own "
             "`sample.num_steps`, else --nfe), η = 0; "
             "biharmonic is scikit-image's given the true mask; pre-fill is the recipe's own "
             "pre-fill alone. Mean ± sample standard deviation over folds.", "",
             "| recipe | overrides | trained as | steps |", "|---|---|---|---|"]
    for name in recipes:
        over = ", ".join(f"`{k}={v!r}`" for k, v in RECIPES.get(name, {}).items()) or "—"
        trained = sorted({int(r["steps"]) for r in rows if r["recipe"] == name})
        lines.append(f"| {name} | {over} | {trained_as(name) if name in RECIPES else name} | "
                     f"{', '.join(map(str, trained)) or '—'} |")
    # PSNR depends on the CPU's floating-point kernels: a paired comparison needs one machine
    where = f" on {machine}" if machine else ""
    lines += ["", f"Measured{where} from commit(s) {', '.join(c[:12] for c in commits)}, "
              f"{when[0]} – {when[-1]} UTC (recipes.csv).", ""]
    return lines


def summary(rows: list[dict[str, Any]], recipes: list[str], machine: str = "") -> str:
    """Markdown: per size, each recipe over folds, then each recipe against the first listed and
    against the listed one it extends (`reference_of`), paired by fold."""
    lines = ["# Recipes by k-fold over the training photos", "",
             "Generated by `experiments/recipes.py` from recipes.csv; do not edit by hand. "
             "Decision rule: experiments/recipes.py's docstring (a **win** needs every fold to "
             "agree and the one-sided paired t test at 95 %).", ""]
    if rows:
        lines += _protocol(rows, recipes, machine)
    # (reference, recipe) pairs to judge: each against the first listed, and against the one it
    # extends where that is another (the same pairs at every size)
    judged = [(recipes[0], name) for name in recipes[1:]]
    judged += [(ref, name) for name in recipes[1:]
               if (ref := reference_of(name, recipes)) != recipes[0]]
    for size in sorted({r["size"] for r in rows}):
        at = {(r["recipe"], int(r["fold"])): r for r in rows if r["size"] == size}
        folds = sorted({f for _, f in at})
        lines += [f"## {size:.0f} px", "", "| recipe | folds | model | gain over biharmonic | "
                  "gain over pre-fill | pre-fill | biharmonic | input | train CPU-s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in recipes:
            mine = [at[(name, f)] for f in folds if (name, f) in at]
            if mine:
                cols = [mean_sd([r[k] for r in mine]) for k in ("model",)]
                cols.append(mean_sd([r["model"] - r["biharmonic"] for r in mine]))
                cols.append(mean_sd([r["model"] - r["prefill"] for r in mine]))
                cols += [mean_sd([r[k] for r in mine]) for k in ("prefill", "biharmonic",
                                                                   "input")]
                cols.append(f"{np.mean([r['train_cpu_s'] for r in mine]):.0f}")
                lines.append(f"| {name} | {len(mine)} | " + " | ".join(cols) + " |")
        compared: dict[str, list[str]] = {}  # reference → its table's rows
        for ref, name in judged:
            pairs = [f for f in folds if (name, f) in at and (ref, f) in at]
            diffs = [at[(name, f)]["model"] - at[(ref, f)]["model"] for f in pairs]
            if not diffs:
                continue
            word, t, crit = verdict(diffs)
            cells = [f"{at[(name, f)]['model'] - at[(ref, f)]['model']:+.2f}" if f in pairs
                     else "—" for f in folds]
            # one fold has no spread, so no t statistic
            tested = f"{t:.2f} ({crit:.2f})" if len(diffs) > 1 else f"— ({len(diffs)} fold)"
            compared.setdefault(ref, []).append(f"| {name} | " + " | ".join(cells)
                                                + f" | {mean_sd(diffs)} | {tested} | **{word}** |")
        for ref, table in compared.items():
            lines += ["", f"Against `{ref}` (per-fold differences, same photos and masks):", "",
                      "| recipe | " + " | ".join(f"fold {f}" for f in folds)
                      + " | mean ± sd | t (critical) | verdict |",
                      "|---" * (len(folds) + 4) + "|"] + table
        lines.append("")
    return "\n".join(lines)


def reference_of(name: str, listed: list[str]) -> str:
    """The listed recipe `name` extends: the one trained for as many steps whose overrides it
    extends by the fewest keys (the first listed among equals: mixfill_lr3 → mixfill, mixfill →
    demo), so that one choice differs; else the first listed. `summary` judges each recipe
    against the first listed and, where it is another, against this one too."""
    mine = set(RECIPES.get(name, {}).items())
    share = STEP_SHARE.get(name, 1.0)
    parents = [r for r in listed if r != name and set(RECIPES.get(r, {}).items()) < mine
               and STEP_SHARE.get(r, 1.0) == share]
    if not parents:
        return listed[0]
    return max(parents, key=lambda r: len(RECIPES.get(r, {})))  # max keeps the first of equals


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True, help="recipes.csv, summary.md")
    p.add_argument("--runs-dir", default="", help="workdirs (default <out-dir>/runs)")
    p.add_argument("--recipes", default="demo,nofuse",
                   help=f"comma-separated; each is judged against the first and the listed one "
                        f"it extends; from {sorted(RECIPES)}")
    p.add_argument("--folds", default=",".join(str(i) for i in range(len(builtin.FOLDS))))
    p.add_argument("--steps", type=int, default=0, help="training steps (default: the demo's "
                   "1 500; tiny: 2)")
    p.add_argument("--sizes", default="", help="long sides, px (default 128,256,512; tiny: 32)")
    p.add_argument("--nfe", type=int, default=10, help="sampling steps of the model")
    p.add_argument("--tiny", action="store_true", help="smoke run: configs/demo.py:tiny shapes")
    p.add_argument("--machine", default="", help="the machine that measured the CSV's rows, "
                   "named in summary.md")
    p.add_argument("--report", action="store_true", help="only write summary.md from the "
                   "recipes.csv in --out-dir (no training; any later checkout may report)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train and score every (recipe, fold) not yet in recipes.csv; write summary.md."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    try:
        folds = [int(f) for f in args.folds.split(",") if f.strip()]
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip()) or (
            (32,) if args.tiny else holes.SIZES)
    except ValueError as e:
        raise ConfigError(f"--folds / --sizes: not a list of integers ({e})") from None
    steps = args.steps or (2 if args.tiny else 1500)
    if steps < 1 or args.nfe < 1 or not recipes or not folds:
        raise ConfigError("--steps and --nfe must be >= 1, --recipes and --folds non-empty")
    csv_path = os.path.join(args.out_dir, CSV_NAME)
    rows = results_csv.read_rows(csv_path, FIELDS, NUMERIC)
    if args.report:
        return write_summary(args.out_dir, rows, recipes, folds, {"evaluated": []},
                             args.machine)
    runs = args.runs_dir or os.path.join(args.out_dir, "runs")
    out: dict[str, Any] = {"evaluated": []}
    for recipe in recipes:
        for fold in folds:
            cfg = fold_config(recipe, fold, steps, args.tiny)
            nfe = nfe_of(recipe, args.nfe)
            settings = settings_of(cfg, sizes, nfe)
            if measured(rows, csv_path, recipe, fold, settings):
                continue
            trainer = trained_as(recipe)
            train_cfg = cfg if trainer == recipe else fold_config(trainer, fold, steps, args.tiny)
            workdir = os.path.join(runs, f"{trainer}_fold{fold}")
            scaling.check_workdir(train_cfg, workdir)
            own = train_cfg.train.num_steps  # the recipe's share of --steps
            cpu, _ = scaling.train_to(train_cfg, workdir, own)
            conf = scaling.Configuration(recipe, "configs/demo.py", (), (own,), own, (nfe,), 0.0)
            scores, _ = scaling.evaluate_point(cfg, workdir, conf, sizes)
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
            new = [{"recipe": recipe, "fold": fold, "steps": own, "size": s["size"],
                    "nfe": nfe, "input": s["input"], "biharmonic": s["biharmonic"],
                    "prefill": s["prefill"], "model": s[f"model_nfe{nfe}"],
                    "train_cpu_s": cpu, "settings": settings, "commit": scaling.commit(),
                    "utc": stamp} for s in scores]
            rows = results_csv.add_rows(csv_path, FIELDS, NUMERIC, new, ("recipe", "fold", "size"))
            out["evaluated"].append((recipe, fold))
    return write_summary(args.out_dir, rows, recipes, folds, out, args.machine)


def measured(rows: list[dict[str, Any]], path: str, recipe: str, fold: int,
             settings: str) -> bool:
    """Whether table `path`'s `rows` hold (recipe, fold); a ConfigError when they were measured
    with other `settings` (a table never mixes two protocols)."""
    mine = [r for r in rows if (r["recipe"], int(r["fold"])) == (recipe, fold)]
    if any(r["settings"] != settings for r in mine):
        raise ConfigError(f"{path}: {recipe} fold {fold} was measured with other settings; use "
                          "another --out-dir")
    return bool(mine)


def write_summary(out_dir: str, rows: list[dict[str, Any]], recipes: list[str],
                  folds: list[int], out: dict[str, Any], machine: str = "") -> dict[str, Any]:
    """summary.md of the chosen recipes and folds; `out` with the text added."""
    mine = [r for r in rows if r["recipe"] in recipes and int(r["fold"]) in folds]
    text = summary(mine, recipes, machine)
    atomic.write_text(os.path.join(out_dir, "summary.md"), text)
    out["summary"] = text
    return out


def settings_of(cfg: ml_collections.ConfigDict, sizes: tuple[int, ...], nfe: int) -> str:
    """A short hash of what makes a (recipe, fold)'s numbers: its config, sizes and NFE."""
    return results_csv.settings_hash(cfg, sizes, nfe)


if __name__ == "__main__":
    cli.run(main)
