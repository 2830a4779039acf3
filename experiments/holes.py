"""PSNR inside the holes of one trained network at several sizes and NFEs, beside its pre-fill
alone, scikit-image's biharmonic and the input, on the same images (issue 28's protocol).

Shared by experiments/scaling.py and experiments/recipes.py; on its own it scores one trained
workdir (a table on stdout):

    python -m experiments.holes --config configs/demo.py --workdir /tmp/rdbm_demo

The protocol is the project's (`rdbm_jax.evaluation.scoring`): RGB in [0, 1], uint8-quantised, no
border crop, mean over the test set's images; "inside the holes" is `psnr_masked`. The biharmonic
baseline is always given the true mask (whatever the network sees), so every configuration is
compared with the same reference. The pre-fill alone is what a zero network restores with a FILLED
condition and the residual parameterisation (`conditioning.output_offset`): the harmonic or
biharmonic fill of μ's holes.
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import cli
from rdbm_jax import api, conditioning, data, inference, program
from rdbm_jax import config as config_lib
from rdbm_jax.config_files import load
from rdbm_jax.runtime import distributed
from rdbm_jax.data import spec as data_spec
from rdbm_jax.errors import ConfigError
from rdbm_jax.evaluation.scoring import Baselines, by_task, sampling_key, score_pair, score_sources

SIZES = (128, 256, 512)  # long side of the evaluated photos (whole photo resized, then degraded)
KEY = "psnr_masked"


def at_size(cfg: ml_collections.ConfigDict, size: int, fit: str = "resize"
            ) -> ml_collections.ConfigDict:
    """A copy of `cfg` whose every eval source is the whole photo resized to long side `size`
    (fit "crop": its centre crop of side `size` at full scale, the training crops' scale)."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    for task in data_spec.task_names(out.data):
        for src in data_spec.named_sources(out.data, task, "eval"):
            src.cfg.eval_size = int(size)
            src.cfg.eval_fit = fit
    return out


def has_prefill(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the network restores its pre-fill when its output is zero (a pre-fill to beat)."""
    return (cfg.model.condition in conditioning.FILLED
            and cfg.bridge.parameterization == "residual")


# One jitted function per pre-fill, shared by every call (a pre-fill is the condition's fill
# channels: `conditioning.PREFILLS`).
_JITTED_FILLS = {kind: jax.jit(fill) for kind, fill in conditioning.PREFILLS.items()}


def prefill_psnr(kind: str, example: dict[str, Any], ev: ml_collections.ConfigDict) -> float:
    """PSNR inside the holes of condition `kind`'s pre-fill alone on one eval example."""
    out = np.asarray(_JITTED_FILLS[kind](example["mu"][None], example["mask"][None]))[0]
    return score_pair(out, example["x0"], ev, example["mask"]).get(KEY, np.nan)


def prefill_scores(cfg: ml_collections.ConfigDict, sources: dict[str, Any]) -> float:
    """Mean PSNR inside the holes of the network's pre-fill alone (scoring's aggregation)."""
    per_set = {}
    for label, source in sources.items():
        values = [prefill_psnr(cfg.model.condition, source[i], cfg.eval)
                  for i in range(len(source))]
        per_set[label] = {KEY: float(np.mean(values)), "num_images": len(values)}
    return float(by_task(per_set)["overall"][KEY])


def measure(cfg: ml_collections.ConfigDict, params: Any, sizes: tuple[int, ...] = SIZES,
            nfes: tuple[int, ...] = (1, 10), fit: str = "resize") -> list[dict[str, float]]:
    """One row per size: `size`, `input`, `biharmonic`, `prefill` (NaN without one) and
    `model_nfe<n>` per NFE, each the mean PSNR inside the holes (dB) of cfg's eval sources
    (`at_size`'s `fit`)."""
    mesh = distributed.make_mesh()
    rows = []
    for size in sizes:
        sized = at_size(cfg, size, fit)
        sources = data.build_eval_sources(sized.data, max_images=sized.eval.max_images)
        baseline = Baselines(true_mask=True)  # per size: its cache is keyed by (label, index)
        row: dict[str, float] = {"size": int(size)}
        for nfe in nfes:
            sampler = program.build_sampler(sized, mesh, num_steps=nfe)
            _, per_task, _ = score_sources(sampler, params, sources, sized,
                                           sampling_key(sized.seed), baseline=baseline)
            overall = per_task["overall"]
            row[f"model_nfe{nfe}"] = float(overall[KEY])
            row["biharmonic"] = float(overall[f"{KEY}_baseline"])
            row["input"] = float(overall[f"{KEY}_input"])
        row["prefill"] = prefill_scores(sized, sources) if has_prefill(sized) else float("nan")
        rows.append(row)
    return rows


def table(rows: list[dict[str, float]], nfes: tuple[int, ...]) -> str:
    """Markdown: per size, the model at each NFE beside its pre-fill, biharmonic and the input."""
    head = ["long side", *(f"model NFE {n}" for n in nfes), "pre-fill", "biharmonic", "input",
            f"NFE {nfes[-1]} − pre-fill", f"NFE {nfes[-1]} − biharmonic"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        best = r[f"model_nfe{nfes[-1]}"]
        cells = [f"{r['size']} px", *(f"{r[f'model_nfe{n}']:.2f}" for n in nfes),
                 f"{r['prefill']:.2f}", f"{r['biharmonic']:.2f}", f"{r['input']:.2f}",
                 f"{best - r['prefill']:+.2f}", f"{best - r['biharmonic']:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_setting(text: str) -> tuple[str, Any]:
    """KEY=VALUE of --set: the value as a Python literal (1, 0.5, True, 'x'), else the string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. sample.eta=1")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def main(argv: list[str] | None = None) -> str:
    """Score a trained workdir's EMA weights inside the holes of its config's eval photos."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="", help="config file[:argument], as for rdbm_jax.main "
                   "(default: the config the run was trained with, from its checkpoint)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="long sides, px")
    p.add_argument("--nfes", default="1,10", help="sampling steps, comma-separated")
    p.add_argument("--set", action="append", default=[], type=parse_setting, metavar="KEY=VALUE",
                   help="a sampling setting to score with, e.g. sample.first_step_eta=1 "
                        "(repeatable; sample.* only: the network is the run's)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    sizes = tuple(int(v) for v in args.sizes.split(","))
    nfes = tuple(int(v) for v in args.nfes.split(","))
    not_sampling = [key for key, _ in args.set if not key.startswith("sample.")]
    if not_sampling:
        raise ConfigError(f"--set {not_sampling[0]}: only sample.* settings can be changed here")
    if args.config:
        cfg = load(args.config)
        params = inference.load_trained(cfg, args.workdir, distributed.make_mesh()).params
    else:
        trained = api.load(args.workdir)
        cfg, params = trained.config, trained.params
    config_lib.put(cfg, dict(args.set))
    config_lib.validate(cfg)
    text = table(measure(cfg, params, sizes, nfes), nfes)
    where = args.config or "its saved config"
    settings = "".join(f", {key}={value!r}" for key, value in args.set)
    print(f"PSNR inside the holes (dB), {where} at {args.workdir}{settings}:\n\n{text}")
    return text


if __name__ == "__main__":
    cli.run(main)
