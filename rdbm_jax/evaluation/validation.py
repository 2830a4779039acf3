"""Periodic validation during training: the EMA parameters restore held-out images, scored as
`--mode=eval` scores them, beside the classical baseline and the input, with a grid."""
from __future__ import annotations

import json
import logging
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from rdbm_jax.evaluation import diagnostic
from rdbm_jax.runtime import distributed
from rdbm_jax import program
from rdbm_jax.evaluation.reports import grid_labels, make_grid, protocol_name, summary_line, title
from rdbm_jax.evaluation.scoring import SCORES, Baselines, protocol, sampling_key, score_sources

log = logging.getLogger("rdbm_jax")


class Validator:
    """Periodic validation during training: EMA restoration of held-out images, PSNR/SSIM, a
    grid."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh: Mesh, sources: dict[str, Any]):
        self.cfg = cfg
        self.sources = sources
        self.sampler = program.build_sampler(cfg, mesh)
        # The baselines never change between validations: computed at the first call only.
        self.baseline = Baselines(true_mask=self.sampler.uses_mask)
        log.info("validation protocol (val/* scores): %s", json.dumps(protocol(cfg)))

    def __call__(self, params: Any, step: int) -> tuple[dict[str, float], np.ndarray]:
        """(val/* scores, the grid as uint8) of `params` at training step `step`."""
        _, per_task, grids = score_sources(self.sampler, params, self.sources, self.cfg,
                                           sampling_key(self.cfg.seed), baseline=self.baseline)
        scores = {f"val/{k}": v for k, v in per_task["overall"].items() if k in SCORES}
        if len(self.sources) > 1:  # val/<task>/... and val/<task>/<set>/...
            scores.update({f"val/{t}/{k}": v for t, s in per_task.items() if t != "overall"
                           for k, v in s.items() if k in SCORES})
        if distributed.is_main_process():
            for label, s in per_task.items():
                if label != "overall" or len(self.sources) > 1:
                    log.info("step %d val %s (%s; baseline: %s): %s", step, title(label, s),
                             protocol_name(self.cfg), s.get("baseline", "mean over tasks"),
                             summary_line(s))
        if self.cfg.eval.per_step:  # issue 19's per-step diagnostic (diagnostic.py)
            scores.update(diagnostic.scalars(diagnostic.run(
                self.sampler, params, self.sources, self.cfg.sample.batch_size,
                sampling_key(self.cfg.seed + 3))))
        rows = [r for g in grids.values() for r in g][: self.cfg.eval.num_grid_images]
        names = {per_task[label]["baseline"] for label in grids if label in per_task}
        labels = grid_labels(names.pop() if len(names) == 1 else "")
        return scores, make_grid(rows, labels=labels, title=f"step {step}")
