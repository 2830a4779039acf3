"""Universal restoration (the paper's main setting): one RDBM over five tasks.

    python -m rdbm_jax.main --config=configs/universal.py:L --workdir=runs/universal_L \
        --config.data.root=/path/to/datasets                       # train
    python -m rdbm_jax.main --config=configs/universal.py:L --workdir=runs/universal_L \
        --config.data.root=/path/to/datasets --mode=eval           # PSNR/SSIM per task

Argument: model size T | S | B | L (default L, as the paper's best); add ",tiny" for a smoke test.
Paper setup: batch 20 split evenly over the 5 tasks (4 each), 256² random crops, Adam lr 1e-4,
500k iterations, cosine θ, λ = 10/255, T = 100; restoration with 10 sampling steps at full resolution.

Expected layout under data.root (LQ = degraded input μ, GT = clean x0, matched by file name;
the extension may differ; sub-folders are allowed and matched by relative path):

    derain/train/{LQ,GT}    Rain13K training pairs        derain/test/{LQ,GT}    Rain100H (or Rain100L)
    lowlight/train/{LQ,GT}  LOL our485 (low / high)       lowlight/test/{LQ,GT}  LOL eval15
    desnow/train/{LQ,GT}    Snow100K training (or CSD)    desnow/test/{LQ,GT}    Snow100K-L test (or CSD)
    dehaze/train/{LQ,GT}    RESIDE ITS (one hazy image per clean name: rename or link the chosen one)
                                                          dehaze/test/{LQ,GT}    SOTS indoor
    deblur/train/{LQ,GT}    GoPro train (blur / sharp)    deblur/test/{LQ,GT}    GoPro test

Any folder can be pointed elsewhere, e.g. --config.data.tasks.derain.eval.lq_dir=/data/Rain100L/rainy.

Evaluation protocol (written into eval/metrics.json): PSNR and SSIM per task on RGB in [0, 1],
uint8-quantised, no border crop, EMA weights, 10 steps, η = 0; "overall" is the mean over tasks.
For the Y-channel convention of some deraining papers: --config.eval.color=y.
"""
import ml_collections

from rdbm_jax.config import shrink, sibling, variant
from rdbm_jax.data.spec import source_spec, task_spec

TASKS = ("derain", "lowlight", "desnow", "dehaze", "deblur")


def paired_task(name: str) -> ml_collections.ConfigDict:
    """A paired task laid out as <name>/{train,test}/{LQ,GT} under data.root."""
    return task_spec(
        train=source_spec(kind="paired", lq_dir=f"{name}/train/LQ", gt_dir=f"{name}/train/GT"),
        eval=source_spec(kind="paired", lq_dir=f"{name}/test/LQ", gt_dir=f"{name}/test/GT"))


def get_config(arg=None) -> ml_collections.ConfigDict:
    size, tiny, _ = variant(arg, default_size="L")
    c = sibling(__file__, "default").get_config()
    c.data.root = "datasets"
    c.data.tasks = ml_collections.ConfigDict({name: paired_task(name) for name in TASKS})
    c.data.crop_size = 256
    c.model.size = size
    c.train.batch_size = 20          # 4 per task
    c.train.num_steps = 500_000
    c.optim.learning_rate = 1e-4
    c.bridge.update(dict(preset="rdbm", theta_schedule="cosine", lam=10 / 255, num_timesteps=100))
    c.sample.num_steps = 10
    c.eval.metrics = "psnr,ssim"
    return shrink(c) if tiny else c
