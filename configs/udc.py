"""Under-display camera restoration: POLED or TOLED (Zhou et al. 2021 UDC dataset).

    python -m rdbm_jax.main --config=configs/udc.py:poled,B --workdir=runs/udc_poled_B \
        --config.data.root=/path/to/datasets
    python -m rdbm_jax.main --config=configs/udc.py:toled,B --workdir=runs/udc_toled_B \
        --config.data.root=/path/to/datasets --mode=eval

Argument: poled | toled (default poled), a model size T | S | B | L (default B), ",tiny" for a
smoke test; e.g. `configs/udc.py:toled,L`.
Layout under data.root: UDC/<POLED|TOLED>/train/{LQ,GT} and UDC/<POLED|TOLED>/test/{LQ,GT}
(the dataset's 1024×2048 pairs, matched by file name). Training uses 256² random crops;
evaluation restores the full 1024×2048 images (set --config.sample.tile_size=512 to bound memory).

Evaluation protocol: PSNR and SSIM on RGB in [0, 1], uint8-quantised, no border crop.
"""
import ml_collections

from rdbm_jax.config import shrink, sibling, variant
from rdbm_jax.data.spec import source_spec, task_spec


def get_config(arg=None) -> ml_collections.ConfigDict:
    size, tiny, options = variant(arg, default_size="B", options=("poled", "toled"))
    panel = (options or ["poled"])[-1].upper()
    c = sibling(__file__, "default").get_config()
    c.data.root = "datasets"
    c.data.tasks = ml_collections.ConfigDict({panel.lower(): task_spec(
        train=source_spec(kind="paired", lq_dir=f"UDC/{panel}/train/LQ", gt_dir=f"UDC/{panel}/train/GT"),
        eval=source_spec(kind="paired", lq_dir=f"UDC/{panel}/test/LQ", gt_dir=f"UDC/{panel}/test/GT"))})
    c.data.crop_size = 256
    c.model.size = size
    c.train.batch_size = 16
    c.train.num_steps = 300_000
    c.eval.metrics = "psnr,ssim"
    return shrink(c) if tiny else c
