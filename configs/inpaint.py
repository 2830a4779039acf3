"""Face inpainting on CelebA-HQ 256×256 with free-form and box masks filled white.

    python -m rdbm_jax.main --config=configs/inpaint.py:B --workdir=runs/inpaint_B \
        --config.data.root=/path/to/datasets
    python -m rdbm_jax.main --config=configs/inpaint.py:B --workdir=runs/inpaint_B \
        --config.data.root=/path/to/datasets --mode=eval \
        --config.eval.lpips_weights=lpips_alex.npz --config.eval.fid_weights=inception_fid.npz

Argument: model size T | S | B | L (default B); add ",tiny" for a smoke test.
Layout under data.root: celeba_hq/train/*.png (clean faces) and celeba_hq/test/*.png. Masks are
generated deterministically per (seed, image index), so every evaluation sees the same holes; to
use fixed mask files instead: --config.data.tasks.inpaint.eval.mask_dir=/path/to/masks (white =
hole, matched by file name).

Evaluation protocol: FID (Inception-v3 pool3, pytorch-fid weights converted with `python -m
rdbm_jax.evaluation.perceptual.convert inception …`, restored vs. ground-truth test images unless
eval.fid_ref_stats is given), LPIPS (AlexNet, lpips v0.1), PSNR/SSIM on RGB, 256², uint8-quantised.
LPIPS/FID are skipped with a notice when their weight files are not given. SSIM: the project's
Gaussian window (eval.ssim_window), uint8 rounding (eval.quantize).

Recipe: where the paper is silent (β2, clipping, EMA, flips), MiliLab/DGSolver's trainer
(configs/common.py dgsolver_recipe); batch 16 and 400k steps are this project's choices.
"""
import ml_collections

from rdbm_jax.config_files import sibling
from rdbm_jax.data.spec import source_spec, task_spec

common = sibling(__file__, "common")  # variant, shrink, dgsolver_recipe


def get_config(arg=None) -> ml_collections.ConfigDict:
    size, tiny, _ = common.variant(arg, default_size="B")
    c = sibling(__file__, "default").get_config()
    c.data.root = "datasets"
    mask = dict(kind="clean", degradation="inpaint", mask_min_ratio=0.1, mask_max_ratio=0.4)
    c.data.tasks = ml_collections.ConfigDict(dict(inpaint=task_spec(
        train=source_spec(dir="celeba_hq/train", **mask),
        eval=source_spec(dir="celeba_hq/test", **mask))))
    c.data.crop_size = 256
    c.model.size = size
    c.train.batch_size = 16
    c.train.num_steps = 400_000
    common.dgsolver_recipe(c)
    common.measured_objective(c)     # residual + fusion: measured best (paper: πε; released: x0)
    c.eval.metrics = "psnr,ssim,lpips,fid"
    return common.shrink(c) if tiny else c
