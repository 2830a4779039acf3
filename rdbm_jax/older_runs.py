"""Saved configs of older rdbm_jax versions: the keys added since the first release, filled in as
those runs behaved (`upgrade`), so an old checkpoint is evaluated, sampled and exported as it was
trained. The one place that knows; config.check_saved and the program specs call it."""
from __future__ import annotations

from ml_collections import ConfigDict

from rdbm_jax import conditioning

# Keys added after the first release: a saved config of an older run lacks them. Each value is
# what the code did before the key existed (for most: the default it was added with, chosen to
# change nothing). tests/test_config_upgrade.py holds the first release's saved config
# and fails when a key is added to configs/default.py without an entry here.
OLDER_RUNS = {"train.t_sampling": "uniform", "sample.auto_tile": True,
              "sample.hole_threshold": conditioning.HOLE_THRESHOLD, "sample.first_step_eta": 0.0,
              "sample.fuse": False, "sample.fuse_sigma": "",
              "model.condition": "mu", "model.attention_impl": "xla",
              "bridge.discretization": "rdbm", "bridge.sigma_data": "0.5",
              "data.root": "", "data.train_mix": "size", "data.crops_per_image": 1,
              "data.decode_cache_mib": 0, "data.max_image_pixels": 89_478_485,
              "data.scale_min": 1.0, "data.scale_max": 1.0, "data.crop_sizes": "",
              "optim.ema_warmup": "none", "train.tensorboard": "tensorboardx",
              "sample.mask_dir": "", "eval.ssim_window": "gaussian", "eval.per_step": False,
              "app.host": "127.0.0.1", "app.port": 7860, "app.step": -1}


def upgrade(cfg: ConfigDict) -> ConfigDict:
    """`cfg` with every key of OLDER_RUNS it lacks (an older run's saved config) filled in; `cfg`
    itself when it has them all."""
    missing = [k for k in OLDER_RUNS if k.split(".")[0] not in cfg
               or k.split(".")[1] not in cfg[k.split(".")[0]]]
    renamed = "data" in cfg and "flip" not in cfg.data  # data.random_flip (bool) before data.flip
    # eval.quantize was a bool before it named a rule: True rounded to uint8 levels
    retyped = "eval" in cfg and isinstance(cfg.eval.get("quantize"), bool)
    if not missing and not renamed and not retyped:
        return cfg
    out = cfg.to_dict()  # a plain dict: ConfigDict refuses a value of another type (quantize)
    for key in missing:
        section, name = key.split(".")
        out.setdefault(section, {})[name] = OLDER_RUNS[key]  # app: a section added later
    if renamed:  # random_flip=True flipped horizontally and vertically: "both"
        out["data"]["flip"] = "both" if out["data"].get("random_flip", True) else "none"
    if retyped:
        out["eval"]["quantize"] = "round" if out["eval"]["quantize"] else "none"
    return ConfigDict(out)
