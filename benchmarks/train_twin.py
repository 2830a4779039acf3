"""The PyTorch twin's train step timed beside ours: eager AMP and torch.compile."""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks import measure
from benchmarks.programs import default_config
from benchmarks.train_step import synthetic_batches


def twin_unavailable(on_gpu: bool) -> str | None:
    """None if the PyTorch twin can run comparably here, else why not."""
    try:
        import torch  # noqa: F401
        from benchmarks import torch_twin  # noqa: F401
    except ImportError as e:
        return f"torch not importable ({e})"
    if on_gpu and not torch.cuda.is_available():
        return "JAX runs on a GPU but torch sees no CUDA device: a CPU twin would not be comparable"
    return None


def bench_twin(size: str, batch: int, resolution: int, compile_: bool,
               opts: argparse.Namespace, scale_steps: bool = False) -> dict[str, Any]:
    """The twin's `make_train_step` (autocast bf16 unless float32, channels_last, fused Adam)."""
    import torch

    from benchmarks import torch_twin as tw

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = tw.TwinUNet(size).to(device)
    amp = None if opts.dtype == "float32" else getattr(torch, opts.dtype)
    default = default_config()
    tables = tw.cosine_tables(default.bridge.num_timesteps, default.bridge.lam)
    step = tw.make_train_step(model, tw.make_optimizer(model, default.optim.learning_rate), tables,
                              default.bridge.parameterization, default.train.loss, amp_dtype=amp,
                              channels_last=True, compile=compile_)
    data = synthetic_batches(1, batch, resolution)
    x0, mu = (torch.from_numpy(data[k][0].transpose(0, 3, 1, 2).copy()).to(device)
              .contiguous(memory_format=torch.channels_last) for k in ("x0", "mu"))

    def sync(out):
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    t0 = time.perf_counter()
    first = float(sync(step(x0, mu)))
    t_first = time.perf_counter() - t0
    shrink = max(1, batch // opts.batch) if scale_steps else 1
    timing = measure.time_windows(lambda: step(x0, mu), sync,
                                  warmup=max(0, opts.warmup // shrink - 1),
                                  steps=max(4, opts.steps // shrink),
                                  window=max(1, opts.window // shrink))
    last = float(sync(step(x0, mu)))
    step_s = timing["median_s"]
    out = {"impl": "twin_compiled" if compile_ else "twin_eager", "variant": "base", "size": size,
           "params": tw.count_params(model), "batch": batch, "resolution": resolution,
           "dtype": opts.dtype, "amp": str(amp), "channels_last": True, "torch_device": str(device),
           "first_call_s": t_first, "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * timing["min_s"],
           "images_per_s": batch / step_s, "timed_steps": timing["calls"],
           "loss_first": first, "loss_last": last, "finite": bool(np.isfinite([first, last]).all())}
    return out
