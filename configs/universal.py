"""Universal restoration (the paper's main setting): one RDBM over five tasks.

    python -m rdbm_jax.main --config=configs/universal.py:L --workdir=runs/universal_L \
        --config.data.root=/path/to/datasets                       # train
    python -m rdbm_jax.main --config=configs/universal.py:L --workdir=runs/universal_L \
        --config.data.root=/path/to/datasets --mode=eval           # PSNR/SSIM per test set and task

Argument: model size T | S | B | L (default L, as the paper's best); add ",tiny" for a smoke test.
Paper setup: batch 20 split evenly over the 5 tasks (4 each), 256² random crops, Adam lr 1e-4, 500k
iterations, cosine θ, λ = 10/255, T = 100; restoration with 10 sampling steps at full resolution.
The batch must be a multiple of lcm(devices, 5 × processes): 20 runs on 1, 2, 4, 5, 10 or 20 devices
of one process; on 8 devices use --config.train.batch_size=40 (not the paper's setting). Where the
paper is silent the recipe follows MiliLab/DGSolver (`configs/common.py`'s `dgsolver_recipe`, each
line sourced); unknown and not reproduced: DGSolver resizes images smaller than the crop up, this
project reflect-pads them.

Datasets (named sources: each test set is scored and reported on its own as <task>/<set>, its task
as the mean over its test sets, "overall" as the mean over tasks; a task with several training sets
draws from them per data.train_mix). Layout under data.root: <task>/<dataset>/<train|test>/{LQ,GT}
(LQ = degraded input μ, GT = clean x0, matched by file name; the extension may differ; sub-folders
are allowed and matched by relative path):

    task     training set (name: folder)                test sets (name: folder)
    derain   rain13k:  derain/Rain13K/train/{LQ,GT}     rain100h: derain/Rain100H/test/{LQ,GT}
                                                        rain100l: derain/Rain100L/test/{LQ,GT}
    lowlight lol:      lowlight/LOL/train/{LQ,GT}       lol:      lowlight/LOL/test/{LQ,GT}
                       (our485 low / high)                        (eval15 low / high)
    desnow   snow100k: desnow/Snow100K/train/{LQ,GT}    snow100k_l: desnow/Snow100K-L/test/{LQ,GT}
    dehaze   its:      dehaze/RESIDE-ITS/train/{LQ,GT}  sots_indoor: dehaze/SOTS-indoor/test/{LQ,GT}
                       (one hazy image per clean name: rename or link the chosen one)
    deblur   gopro:    deblur/GoPro/train/{LQ,GT}       gopro:    deblur/GoPro/test/{LQ,GT}
                       (blur / sharp)                             (blur / sharp)

Any folder can be pointed elsewhere, e.g.
--config.data.tasks.derain.eval.rain100l.lq_dir=/data/Rain100L/rainy (keys: data.tasks.<task>.
<train|eval>.<name>.<key>). Adding or removing a set needs a config file (command-line overrides
cannot add keys): copy DATASETS below.

Evaluation protocol (written into eval/metrics.json): DGSolver's scorer, the closest public
evidence of the authors' (the paper does not state its SSIM variant): RGB truncated to uint8
((x*255).astype(uint8)), PSNR on it, SSIM = scikit-image's default `structural_similarity` call
(7×7 uniform window, sample covariance) per channel, averaged; no border crop, EMA weights,
10 steps, η = 0; "overall" is the mean over tasks. The project's Gaussian SSIM:
--config.eval.ssim_window=gaussian --config.eval.quantize=round.
For the Y-channel convention of some deraining papers: --config.eval.color=y.
"""
import ml_collections

from rdbm_jax.config_files import sibling
from rdbm_jax.data.spec import source_spec, task_spec

common = sibling(__file__, "common")  # variant, shrink, dgsolver_recipe

# task → (training sets, test sets), each name → folder under data.root (see the docstring)
DATASETS = {
    "derain": ({"rain13k": "derain/Rain13K/train"},
               {"rain100h": "derain/Rain100H/test", "rain100l": "derain/Rain100L/test"}),
    "lowlight": ({"lol": "lowlight/LOL/train"}, {"lol": "lowlight/LOL/test"}),
    "desnow": ({"snow100k": "desnow/Snow100K/train"}, {"snow100k_l": "desnow/Snow100K-L/test"}),
    "dehaze": ({"its": "dehaze/RESIDE-ITS/train"}, {"sots_indoor": "dehaze/SOTS-indoor/test"}),
    "deblur": ({"gopro": "deblur/GoPro/train"}, {"gopro": "deblur/GoPro/test"}),
}
TASKS = tuple(DATASETS)


def paired(folder: str) -> ml_collections.ConfigDict:
    """A paired source laid out as <folder>/{LQ,GT} (relative to data.root)."""
    return source_spec(kind="paired", lq_dir=f"{folder}/LQ", gt_dir=f"{folder}/GT")


def paired_task(name: str) -> ml_collections.ConfigDict:
    """Task `name` with its named training sets and test sets of DATASETS."""
    train, test = DATASETS[name]
    return task_spec(train={k: paired(v) for k, v in train.items()},
                     eval={k: paired(v) for k, v in test.items()})


def get_config(arg=None) -> ml_collections.ConfigDict:
    size, tiny, _ = common.variant(arg, default_size="L")
    c = sibling(__file__, "default").get_config()
    c.data.root = "datasets"
    c.data.tasks = ml_collections.ConfigDict({name: paired_task(name) for name in TASKS})
    c.data.crop_size = 256
    c.model.size = size
    c.train.batch_size = 20          # paper: 20, 4 per task (see the docstring for 8 devices)
    c.train.num_steps = 500_000      # paper
    c.optim.learning_rate = 1e-4     # paper
    common.dgsolver_recipe(c)
    c.bridge.update(dict(preset="rdbm", theta_schedule="cosine", lam=10 / 255, num_timesteps=100))
    common.measured_objective(c)     # residual + fusion: measured best (paper: πε; released: x0)
    c.sample.num_steps = 10
    c.eval.metrics = "psnr,ssim"
    c.eval.ssim_window = "uniform"   # DGSolver's scorer (see the docstring)
    c.eval.quantize = "truncate"
    return common.shrink(c) if tiny else c
