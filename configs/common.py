"""Helpers for writing task configs: the size/tiny argument, the tiny variant, DGSolver's recipe.

Loaded by the task configs with `sibling(__file__, "common")` (not a config itself).
"""
import ml_collections

from rdbm_jax.data import spec as data_spec
from rdbm_jax.models import sizes as model_sizes
from rdbm_jax.errors import ConfigError


def variant(arg, default_size, options=()):
    """Parse a config argument like "B", "L,tiny" or "toled": (model size, tiny?, other options)."""
    size, tiny, rest = default_size, False, []
    for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        if token in model_sizes.SIZES:
            size = token
        elif token == "tiny":
            tiny = True
        elif token in options:
            rest.append(token)
        else:
            sizes = ", ".join(model_sizes.SIZES)
            raise ConfigError(f"unknown config argument {token!r} (sizes {sizes}, 'tiny'"
                              + (f", {', '.join(options)}" if options else "") + ")")
    return size, tiny, rest


def shrink(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `tiny` variant of a task config: same pipeline, seconds on a CPU (smoke tests)."""
    c.model.size = "T"
    c.data.crop_size = 32
    c.train.num_steps = 2
    c.train.batch_size = 2 * len(c.data.tasks)
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.eval_num_images = 1
    c.train.checkpoint_every = 2
    c.optim.update(dict(optimizer="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0,
                        grad_clip=0.0, ema_decay=0.99))
    c.sample.num_steps = 2
    c.sample.batch_size = 1
    c.eval.max_images = 2
    c.eval.metrics = "psnr,ssim"
    for task in c.data.tasks:
        for src in data_spec.named_sources(c.data, task, "eval"):
            src.cfg.eval_size = 32
            src.cfg.eval_fit = "crop"
    return c


def dgsolver_recipe(c: ml_collections.ConfigDict) -> None:
    """Where the paper is silent: the trainer of MiliLab/DGSolver (same first author, same 5
    tasks)."""
    c.data.flip = "none"             # paper: 256² random crops only; DGSolver: no flips
    c.optim.b2 = 0.99                # paper: "Adam" (no betas); DGSolver: Adam(betas=(0.9, 0.99))
    c.optim.grad_clip = 1.0          # paper: silent; DGSolver: clip_grad_norm_(max_norm=1.0)
    # paper: silent; DGSolver: ema_pytorch EMA(beta=0.995, update_every=1) with its default
    # warm-up (copy for 100 steps, then ramp)
    c.optim.ema_decay = 0.995
    c.optim.ema_warmup = "ema_pytorch"


def measured_objective(c: ml_collections.ConfigDict) -> None:
    """The restoration configs' objective (residual: x̂0 = μ + output, L1 on x0) and x̂0 update
    (fusion), measured best in miniature by experiments/ablation.py: the figures are in
    docs/results.md ("Why the restoration configs train the residual objective with fusion").

    The paper trains πε, the released code (code/rdbm.py) x0. The paper's πε:
    --config.bridge.parameterization=pi_eps --config.sample.fuse=False (πε reads x̂0 off x_t
    already); the released code's: x0. With π = x0 − μ the fusion update does not depend on ρ
    (bridge.sigma_data). Without fusion: --config.sample.fuse=False.
    """
    c.bridge.parameterization = "residual"
    c.sample.fuse = True
    c.sweep.eta = "0"  # fusion with π = x0 − μ takes η = 0 only (config._check_fused_steps)
