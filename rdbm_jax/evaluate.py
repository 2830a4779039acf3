"""`--mode=eval`: restore every configured test split with a trained checkpoint and score it
(eval/metrics.json, per_image.csv, grids; scoring.py scores, reports.py writes)."""
from __future__ import annotations

import logging
from typing import Any

import ml_collections

from rdbm_jax import config as config_lib, data, inference, program
from rdbm_jax.evaluation import diagnostic
from rdbm_jax.runtime import distributed, paths, progress
from rdbm_jax.data import spec as data_spec
from rdbm_jax.evaluation.reports import (comparison_table, grid_labels, make_grid, protocol_name,
    write_report)
from rdbm_jax.evaluation.scoring import (Perceptual, check_fid_sizes, protocol, sampling_key,
    score_sources)

log = logging.getLogger("rdbm_jax")


def run_eval(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`--mode=eval`: restore every configured test split, write eval/metrics.json,
    per_image.csv, grids."""
    config_lib.validate(cfg)
    data_spec.check_folders(cfg.data, ("eval",))
    mesh = distributed.make_mesh()
    trained = inference.load_trained(cfg, workdir, mesh, cfg.sample.checkpoint,
                                   check_saved=config_lib.check_saved)
    params = trained.params
    step = trained.step
    data.set_max_pixels(cfg.data.max_image_pixels)
    sources = data.build_eval_sources(cfg.data, max_images=cfg.eval.max_images)
    check_fid_sizes(cfg.eval, sources)
    sampler = program.build_sampler(cfg, mesh)
    with progress.bar(sum(len(s) for s in sources.values()), "eval") as pbar:
        rows, per_task, grids = score_sources(sampler, params, sources, cfg, sampling_key(cfg.seed),
                                              Perceptual(cfg.eval),
                                              on_image=lambda *_: pbar.update(1))
    out_dir = paths.join(workdir, "eval")
    # The per-step diagnostic runs on every process (the network's arrays span them all).
    per_step = (diagnostic.run(sampler, params, sources, cfg.sample.batch_size,
                               sampling_key(cfg.seed + 3))
                if cfg.eval.per_step else None)
    if distributed.is_main_process():
        write_report(out_dir, rows, per_task, {"step": step, "protocol": protocol(cfg)})
        written = [paths.join(out_dir, f) for f in ("metrics.json", "per_image.csv")]
        for label, g in grids.items():  # grid_<task>.png, grid_<task>.<set>.png
            if g:
                written.append(paths.join(out_dir, f"grid_{label.replace('/', '.')}.png"))
                grid = make_grid(g, labels=grid_labels(per_task[label]["baseline"]),
                                 title=f"{label}, step {step}")
                paths.save_png(written[-1], grid)
        if per_step is not None:  # eval/per_step.json + .png
            written += diagnostic.write(out_dir, per_step, {"step": step})
        log.info("eval of step %d (%s):\n%s", step, protocol_name(cfg), comparison_table(per_task))
        log.info("wrote %s", ", ".join(written))
    return per_task
