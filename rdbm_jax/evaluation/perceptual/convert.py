"""Convert PyTorch LPIPS / FID-Inception weights to flat .npz files (`weights.py` reads them).

    python -m rdbm_jax.evaluation.perceptual.convert lpips --net alex --torch-backbone alexnet.pth \
        --torch-lin .../lpips/weights/v0.1/alex.pth --out lpips_alex.npz
    python -m rdbm_jax.evaluation.perceptual.convert inception \
        --torch pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The backbone file is torchvision's `alexnet`/`vgg16` state dict (`features.N.*`; lpips' own
`net.sliceK.N.*` naming is accepted too); the linear heads are lpips' `weights/v0.1/{alex,vgg}.pth`
(shipped inside the `lpips` package). The Inception file is pytorch-fid's state dict (torchvision
`Inception3` names; pytorch-fid's `blocks.I.J.*` wrapper names are accepted too).
An .npz maps "params/a/b/kernel" (and "batch_stats/...") to arrays, plus "meta/kind" and "meta/net".
torch is needed only to read .pth files (the `test` extra); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Mapping

import numpy as np

from rdbm_jax.errors import ConfigError, DataError, RDBMError
from rdbm_jax.evaluation.perceptual import inception as inc, lpips as lp
from rdbm_jax.evaluation.perceptual.weights import check_arrays, meta_entries, save_npz

# torchvision `features` indices of the conv layers, in order (ReLU/max-pool indices carry no
# weights).
TORCHVISION_CONV_INDEX = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
# pytorch-fid's `InceptionV3.blocks[i][j]` -> torchvision Inception3 attribute (pools carry no
# weights).
_FID_BLOCKS = (
    ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
    ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
    ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
     "Mixed_6e"),
    ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
)

_BACKBONE_KEY = re.compile(r"^(?:module\.)?(?:features|(?:net\.)?slice\d+)\.(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^(?:module\.)?lin(\d+)\.model\.\d+\.weight$")
_FID_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def _np(x: Any) -> np.ndarray:
    """A torch tensor or array-like as a float32 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _conv_kernel(w: Any) -> np.ndarray:
    """Torch conv weight [O, I, kh, kw] -> Flax kernel [kh, kw, I, O]."""
    w = _np(w)
    if w.ndim != 4:
        raise DataError(f"expected a 4-d conv weight, got shape {w.shape}")
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def convert_lpips(backbone_state_dict: Mapping[str, Any], lin_state_dict: Mapping[str, Any],
                  net: str) -> dict[str, np.ndarray]:
    """torchvision alexnet/vgg16 state dict + lpips v0.1 linear heads -> flat LPIPS arrays."""
    if net not in lp.NETS:
        raise ConfigError(f"eval.lpips_net must be one of {lp.NETS}, got {net!r}")
    convs: dict[int, dict[str, Any]] = {}
    for k, v in backbone_state_dict.items():
        m = _BACKBONE_KEY.match(k)
        if m:
            convs.setdefault(int(m.group(1)), {})[m.group(2)] = v
    flat: dict[str, np.ndarray] = {}
    for i, idx in enumerate(TORCHVISION_CONV_INDEX[net]):
        layer = convs.pop(idx, {})
        for part in ("weight", "bias"):
            if part not in layer:
                raise DataError(f"backbone state dict has no features.{idx}.{part} "
                                f"(expected torchvision's {lp.BACKBONE_NAMES[net]} state dict)")
        flat[f"params/net/conv{i}/kernel"] = _conv_kernel(layer["weight"])
        flat[f"params/net/conv{i}/bias"] = _np(layer["bias"])
    if convs:
        raise DataError(f"backbone state dict has weights at features.{min(convs)}, which "
                        f"{lp.BACKBONE_NAMES[net]} has no conv at (is it the other network?)")
    for k, v in lin_state_dict.items():
        m = _LIN_KEY.match(k)
        if m:
            flat[f"params/lin{int(m.group(1))}/kernel"] = _conv_kernel(v)
    check_arrays(flat, lp.variable_shapes(net), f"LPIPS-{net} weights")
    flat.update(meta_entries("lpips", net))
    return flat


def _fid_name(key: str) -> str:
    """pytorch-fid `blocks.I.J.rest` -> torchvision `Name.rest` (other keys unchanged)."""
    key = key[len("module."):] if key.startswith("module.") else key
    m = _FID_BLOCK_KEY.match(key)
    if not m:
        return key
    i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if i >= len(_FID_BLOCKS) or j >= len(_FID_BLOCKS[i]):
        raise DataError(f"unexpected pytorch-fid key {key} (no weighted layer at blocks.{i}.{j})")
    return f"{_FID_BLOCKS[i][j]}.{rest}"


def convert_inception(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """pytorch-fid's FID InceptionV3 state dict -> flat arrays (params + BatchNorm batch_stats)."""
    flat: dict[str, np.ndarray] = {}
    for key, v in state_dict.items():
        name = _fid_name(key)
        if name.startswith(("fc.", "AuxLogits.")) or name.endswith("num_batches_tracked"):
            continue  # the classifier heads are not part of the pool3 features
        path, _, leaf = name.rpartition(".")
        path = path.replace(".", "/")
        if leaf == "weight" and path.endswith("/conv"):
            flat[f"params/{path}/kernel"] = _conv_kernel(v)
        elif path.endswith("/bn") and leaf in ("weight", "bias"):
            flat[f"params/{path}/{'scale' if leaf == 'weight' else 'bias'}"] = _np(v)
        elif path.endswith("/bn") and leaf in ("running_mean", "running_var"):
            flat[f"batch_stats/{path}/{leaf[len('running_'):]}"] = _np(v)
        else:
            raise DataError(f"unexpected key {key} in the Inception state dict "
                            f"(expected pytorch-fid's pt_inception-2015-12-05 weights)")
    check_arrays(flat, inc.variable_shapes(), "FID Inception weights")
    flat.update(meta_entries("inception", "inception_v3_fid"))
    return flat


def _torch_load(path: str, flag: str) -> Mapping[str, Any]:
    """Read a PyTorch state dict on CPU (weights only); DataError naming the file and flag."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path} ({flag})")
    try:
        import torch
    except ImportError:
        raise DataError(f"reading {path} ({flag}) needs PyTorch: pip install torch") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"not a readable PyTorch state dict ({msg}): {path} ({flag})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise DataError(f"expected a state dict (name -> tensor), got {type(sd).__name__}: "
                        f"{path} ({flag})")
    return sd


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m rdbm_jax.evaluation.perceptual.convert",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    pl = sub.add_parser("lpips", help="LPIPS backbone + linear heads")
    pl.add_argument("--net", choices=lp.NETS, default="alex")
    pl.add_argument("--torch-backbone", required=True, help="torchvision alexnet/vgg16 state dict")
    pl.add_argument("--torch-lin", required=True, help="lpips weights/v0.1/{alex,vgg}.pth")
    pl.add_argument("--out", required=True)
    pi = sub.add_parser("inception", help="pytorch-fid InceptionV3")
    pi.add_argument("--torch", required=True, help="pt_inception-2015-12-05-*.pth")
    pi.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        if args.kind == "lpips":
            backbone = _torch_load(args.torch_backbone, "--torch-backbone")
            lin = _torch_load(args.torch_lin, "--torch-lin")
            try:
                flat = convert_lpips(backbone, lin, args.net)
            except DataError as e:
                raise DataError(f"{e} [{args.torch_backbone}, {args.torch_lin}]") from None
        else:
            sd = _torch_load(args.torch, "--torch")
            try:
                flat = convert_inception(sd)
            except DataError as e:
                raise DataError(f"{e} [{args.torch}]") from None
        save_npz(args.out, flat)
    except RDBMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({sum(v.size for k, v in flat.items() if not k.startswith('meta/'))} "
          f"weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
