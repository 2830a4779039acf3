"""Base config: every key of the public CLI surface, with the paper's defaults.

Task configs start from `get_config()` here and override what they need. Keys are locked:
`--config.train.num_stpes=5` (a typo) is rejected.
"""
import ml_collections

from rdbm_jax.data.spec import source_spec, task_spec


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        # Each task: a training and an evaluation source, or several named ones of each (a
        # ConfigDict name → source; named test sets are scored one by one). Keys:
        # rdbm_jax/data/spec.py.
        tasks=ml_collections.ConfigDict(dict(
            main=task_spec(train=source_spec(kind="builtin", split="train", degradation="inpaint"),
                           eval=source_spec(kind="builtin", split="val", degradation="inpaint")),
        )),
        root="",                 # relative source folders are taken relative to this folder
        train_mix="size",        # size | equal: a task with several training sources draws from
                                 # them in proportion to their sizes, or equally; tasks always weigh
                                 # equally
        crop_size=256,           # training random crop (padded first if an image is smaller)
        # Multi-scale training (off by default): each training photo rescaled by a factor drawn
        # log-uniformly in [scale_min, scale_max] before cropping (< 1 zooms out: more context
        # per crop, as at a larger restoration size); 1, 1 = off (no draw, the same crops)
        scale_min=1.0,
        scale_max=1.0,
        crop_sizes="",           # mixed crop sizes, e.g. "64,128" (each <= crop_size): each batch
                                 # cut to one of them, drawn per batch from the seed (a random
                                 # window of the crop_size crops); "" = off. Needs
                                 # train.steps_per_dispatch=1 (one shape per compiled call)
        flip="both",             # training flips: none | horizontal | both (+ vertical). The paper
                                 # names none (256² crops only), DGSolver uses none; the demo's
                                 # figures were measured with both
        num_workers=-1,          # grain worker processes; 0 = in-process; -1 = auto: CPUs − 1 (at
                                 # most 32) when a GPU/TPU runs the step and a source reads files
        prefetch_buffer=2,       # batches prefetched per worker
        crops_per_image=1,       # training crops cut from each decoded image (must divide the
                                 # per-task batch): k > 1 divides decoding per crop by k, but a
                                 # batch then holds B/k distinct images, k crops each (correlated),
                                 # and an epoch (each image decoded once) yields k crops per image
        decode_cache_mib=0,      # keep decoded training images in RAM, up to this many MiB per
                                 # worker process (filled in reading order, never evicted); 0 = off
        skip_bad_files=False,    # True: skip and count unreadable files instead of stopping
        max_image_pixels=89_478_485,  # larger images are refused before decoding (decompression
                                 # bombs); PIL's default. Raise it for huge photos (restored tiled)
    ))

    c.model = ml_collections.ConfigDict(dict(
        size="B",                # T | S | B | L (0.45 M … 7.73 M parameters, as in the paper)
        dtype="float32",         # compute dtype: float32 | bfloat16 | float16
        param_dtype="float32",   # weights the network computes with: float32 | bfloat16 (a rounded
                                 # copy; parameters, EMA and Adam moments always train in float32)
        attention=True,          # self-attention at the lowest resolutions
        condition="mu",          # mu (paper) | mu_mask | mu_mask_fill | mu_mask_bifill |
                                 # mu_mask_mixfill: also the degradation mask (+ a harmonic /
                                 # biharmonic / averaged pre-fill of the holes); x̂0 = μ outside
                                 # the mask (conditioning.py)
        attention_impl="xla",    # xla | cudnn (fused attention: GPU, dtype bfloat16/float16 only)
        dropout=0.0,
        remat=False,             # rematerialise residual blocks (saves memory, costs compute)
    ))

    c.bridge = ml_collections.ConfigDict(dict(
        preset="rdbm",           # rdbm | goub | brownian | irsde | flow
        num_timesteps=100,       # T
        theta_schedule="cosine", # cosine | linear | sigmoid | constant
        lam=10 / 255,            # λ = σ²/(2θ), the stationary variance (paper: 10/255); native: the
                                 # peer's N (GOUB lambda_square / IR-SDE max_sigma), read as
                                 # (N/255)²
        pi="",                   # residual | abs | one | zero, or "" = the preset's own π
        parameterization="x0",   # x0 (released code) | pi_eps (paper) | residual (x̂0 = μ + output)
                                 # | precond (x̂0 = μ + c_skip (x_t − μ) + c_out F;
                                 # docs/preconditioning.md)
        sigma_data="0.5",        # precond's ρ, the prior rms of x0 − μ: one value, or per task
                                 # "inpaint=1.34,noise=0.18"; with a mask condition, inside the mask
        discretization="rdbm",   # rdbm | native (goub/irsde: the schedules and λ of their own
                                 # repositories)
    ))

    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adam",        # adam | adamw
        learning_rate=1e-4,
        weight_decay=0.0,        # adamw only
        b1=0.9,
        b2=0.999,
        warmup_steps=0,
        schedule="constant",     # constant | cosine (decay to min_lr_ratio * lr after warmup)
        min_lr_ratio=0.0,
        grad_clip=0.0,           # global-norm clipping; 0 = off
        ema_decay=0.999,
        ema_warmup="none",       # none (ema_decay from step 1) | ema_pytorch (DGSolver: copy for
                                 # 100 steps, then min(ema_decay, 1 − (1 + k)^(−2/3)))
    ))

    c.train = ml_collections.ConfigDict(dict(
        num_steps=500_000,
        batch_size=20,           # global batch, split over devices (and equally over tasks)
        loss="l1",               # l1 | l2
        t_sampling="uniform",    # uniform | weighted | late: draw of t; weighted: p(t) ∝
                                 # (t + 1)^(−1/2), late: p(t) ∝ 1/(T − t); loss not reweighted
                                 # (program.t_log_weights says why)
        log_every=100,
        eval_every=5_000,
        eval_num_images=8,       # validation images per test set at each periodic evaluation
                                 # (0 = all)
        checkpoint_every=5_000,
        max_to_keep=3,
        steps_per_dispatch=1,    # >1: several steps per compiled call (lax.scan)
        compilation_cache_dir="auto",  # persistent XLA cache of every mode and the API: "auto" =
                                 # $JAX_COMPILATION_CACHE_DIR, else ~/.cache/rdbm_jax/xla (per user,
                                 # $XDG_CACHE_HOME honoured); a folder (gs:// too); "" = off
        tensorboard="tensorboardx",  # event files in <workdir>/tensorboard: tensorboardx | clu
                                 # (TensorFlow) | none
    ))

    c.sample = ml_collections.ConfigDict(dict(
        num_steps=10,            # NFE (paper's best: 10)
        eta=0.0,                 # 0 = deterministic Eq. 19; 1 = posterior sampling
        first_step_eta=0.0,      # η of the first step only (max with eta); 1 = land it on the
                                 # forward marginal (the η = 0 first step from x_{T−1} = μ is
                                 # noise-free)
        fuse=False,              # update each step's x̂0 by what x_t observes (x0 / residual
                                 # networks; docs/preconditioning.md "Fusion")
        fuse_sigma="",           # ... the rms error of the network's x̂0 that the update assumes:
                                 # a number or task=number,… (inside the mask with a mask
                                 # condition); "" = bridge.sigma_data (the prior's rms, an upper
                                 # bound)
        clip=True,               # clip x̂0 to [-1, 1] at each step
        batch_size=4,
        use_ema=True,
        input_dir="",            # --mode=sample: restore every image here (recursive)
        output_dir="",           # ... into this folder, same relative names, PNG
        mask_dir="",             # mask-conditioned models: masks (white = hole) named like the
                                 # inputs, their size; "" = infer each mask from the white fill
        hole_threshold=0.98,     # inferred holes: blobs whose every channel is >= this ([0, 1]),
                                 # grown over the rims JPEG leaves (conditioning.infer_mask)
        overwrite=False,
        checkpoint="",           # explicit checkpoint step dir; "" = latest in --workdir
        tile_size=0,             # >0: restore in overlapping tiles of this size; 0 = whole images,
                                 # tiled automatically when predicted not to fit in memory
        auto_tile=True,          # False: refuse (one line naming sample.tile_size) an image
                                 # predicted not to fit in memory, instead of tiling it
        tile_overlap=32,
    ))

    c.eval = ml_collections.ConfigDict(dict(
        metrics="psnr,ssim",     # any of psnr, ssim, lpips, fid
        color="rgb",             # rgb | y (BT.601 luma)
        crop_border=0,
        quantize="round",        # round | truncate | none: uint8 levels before scoring; truncate =
                                 # DGSolver's x*255 cast to uint8
        ssim_window="gaussian",  # gaussian (σ 1.5, population cov.) | uniform (skimage default:
                                 # 7×7, sample covariance, as DGSolver)
        max_images=0,            # per test set; 0 = all
        per_step=False,          # per-step diagnostic (evaluation/diagnostic.py): x̂0 PSNR per t
                                 # of the sampling grid beside the skip estimate and inversion;
                                 # validation → metrics.jsonl val/per_step/*, --mode=eval →
                                 # eval/per_step.json/.png
        num_grid_images=4,
        lpips_weights="",        # local .npz from `python -m
                                 # rdbm_jax.evaluation.perceptual.convert lpips …`
        lpips_net="alex",        # alex | vgg
        fid_weights="",          # local .npz from `python -m
                                 # rdbm_jax.evaluation.perceptual.convert inception …`
        fid_ref_stats="",        # precomputed reference statistics (.npz) for FID
    ))

    c.sweep = ml_collections.ConfigDict(dict(
        nfe="1,2,5,10,20,50",
        eta="0,1",
    ))

    c.app = ml_collections.ConfigDict(dict(
        host="127.0.0.1",        # --mode=app: the page's address (127.0.0.1: this machine only;
                                 # 0.0.0.0 opens it to the network, with no login)
        port=7860,               # ... and port, 1–65535
        step=-1,                 # ... the checkpoint step it restores with; -1 = the latest
    ))
    return c
