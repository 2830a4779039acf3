"""PyTorch twin of rdbm_jax's UNet, RDBM training step and sampler (for the GPU speed comparison).

Same architecture and parameter count as `rdbm_jax.models.UNet` per size; `load_flax_params` loads
Flax weights into it. Tensors are NCHW (PyTorch convention; channels_last memory format is used
for speed). Needs only torch and numpy: no JAX at import time.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GN_EPS = 1e-5

# name: (channels, channel_mult, num_blocks, num_heads, groups) — mirrors rdbm_jax.models.SIZES.
SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], int, int]] = {
    "T": (16, (1, 1, 2, 2), (1, 1, 2, 2), 1, 8),
    "S": (24, (1, 2, 3, 3), (1, 1, 1, 1), 3, 8),
    "B": (32, (1, 2, 3, 3), (1, 2, 1, 2), 3, 8),
    "L": (48, (1, 1, 3, 4), (1, 1, 1, 1), 6, 8),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of timesteps t [B] -> [B, dim] (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, time scale-shift after the 2nd norm, dropout, conv; 1×1 skip if
    needed."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm0 = nn.GroupNorm(groups, cin, eps=GN_EPS)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm1 = nn.GroupNorm(groups, cout, eps=GN_EPS)
        self.drop = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv1(self.drop(h))


class AttnBlock(nn.Module):
    """Multi-head self-attention over all positions (scaled_dot_product_attention), residual."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.heads = num_heads
        self.norm = nn.GroupNorm(groups, channels, eps=GN_EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # free for channels_last
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.heads,
                                        c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(o).view(b, h, w, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Stride-2 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TwinUNet(nn.Module):
    """The rdbm_jax UNet in PyTorch: forward(x, cond, t) with x, cond NCHW and t [B] integers."""

    def __init__(self, size: str = "B", attention: bool = True, in_channels: int = 3,
                 out_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
        c0, mult, nblocks, heads, groups = SIZES[size]
        self.c0 = c0
        self.factor = 2 ** (len(mult) - 1)
        emb = 4 * c0
        self.time_mlp0 = nn.Linear(c0, emb)
        self.time_mlp1 = nn.Linear(emb, emb)
        self.conv_in = nn.Conv2d(2 * in_channels, c0, 3, padding=1)
        # The plan: (attribute name = Flax module name, kind, push the output as a skip).
        self.plan: list[tuple[str, str, bool]] = []
        last, ch, skips = len(mult) - 1, c0, [c0]

        def add(name: str, module: nn.Module, kind: str, push: bool = False) -> None:
            self.add_module(name, module)
            self.plan.append((name, kind, push))

        for i, m in enumerate(mult):
            attn_here = attention and i == last
            for j in range(nblocks[i]):
                add(f"down{i}_res{j}", ResBlock(ch, c0 * m, emb, groups, dropout), "res",
                    push=not attn_here)
                ch = c0 * m
                if attn_here:
                    add(f"down{i}_attn{j}", AttnBlock(ch, heads, groups), "plain", push=True)
                skips.append(ch)
            if i < last:
                add(f"down{i}_downsample", Downsample(ch), "plain", push=True)
                skips.append(ch)
        add("mid_res0", ResBlock(ch, ch, emb, groups, dropout), "res")
        if attention:
            add("mid_attn", AttnBlock(ch, heads, groups), "plain")
        add("mid_res1", ResBlock(ch, ch, emb, groups, dropout), "res")
        for i in reversed(range(len(mult))):
            for j in range(nblocks[i] + 1):
                add(f"up{i}_res{j}", ResBlock(ch + skips.pop(), c0 * mult[i], emb, groups, dropout),
                    "cat_res")
                ch = c0 * mult[i]
                if attention and i == last:
                    add(f"up{i}_attn{j}", AttnBlock(ch, heads, groups), "plain")
            if i > 0:
                add(f"up{i}_upsample", Upsample(ch), "plain")
        self.norm_out = nn.GroupNorm(groups, ch, eps=GN_EPS)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(f"TwinUNet: input {tuple(x.shape)} (NCHW): H, W must be multiples of "
                             f"{self.factor}")
        emb = self.time_mlp1(F.silu(self.time_mlp0(timestep_embedding(t, self.c0))))
        emb = F.silu(emb)
        h = self.conv_in(torch.cat([x, cond], dim=1))
        skips = [h]
        for name, kind, push in self.plan:
            block = getattr(self, name)
            if kind == "cat_res":
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            elif kind == "res":
                h = block(h, emb)
            else:
                h = block(h)
            if push:
                skips.append(h)
        return self.conv_out(F.silu(self.norm_out(h))).float()


def count_params(model: nn.Module) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())


def _flat(
    tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    out: dict[tuple[str, ...], np.ndarray] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = np.asarray(v, dtype=np.float32)
    return out


def load_flax_params(torch_model: TwinUNet, flax_params: Mapping[str, Any]) -> TwinUNet:
    """Copies Flax UNet params (conv HWIO→OIHW, dense (in,out)→(out,in), GroupNorm scale→weight)."""
    tree = flax_params.get("params", flax_params)
    targets = dict(torch_model.named_parameters())
    done: set[str] = set()
    with torch.no_grad():
        for path, value in _flat(tree).items():
            module = torch_model.get_submodule(".".join(path[:-1]))
            leaf = path[-1]
            if leaf == "kernel" and isinstance(module, nn.Conv2d):
                value, attr = value.transpose(3, 2, 0, 1), "weight"
            elif leaf == "kernel" and isinstance(module, nn.Linear):
                value, attr = value.T, "weight"
            elif leaf == "scale" and isinstance(module, nn.GroupNorm):
                attr = "weight"
            elif leaf == "bias":
                attr = "bias"
            else:
                raise ValueError(f"load_flax_params: no torch counterpart for {'/'.join(path)}")
            name = ".".join(path[:-1] + (attr,))
            if targets[name].shape != value.shape:
                raise ValueError(f"load_flax_params: {'/'.join(path)} has shape {value.shape}, "
                                 f"torch {name} has {tuple(targets[name].shape)}")
            targets[name].copy_(torch.tensor(value))
            done.add(name)
    missing = sorted(set(targets) - done)
    if missing:
        raise ValueError(f"load_flax_params: torch parameters not in the Flax tree: {missing[:5]}")
    return torch_model


# ---------------------------------------------------------------------------- bridge schedule
def cosine_tables(num_timesteps: int = 100, lam: float = 10 / 255) -> tuple[np.ndarray, np.ndarray]:
    """Θ_t and Σ_t (Eqs. 12–13) for the improved-DDPM cosine θ schedule, float64."""
    def abar(s: np.ndarray) -> np.ndarray:
        return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    i = np.arange(num_timesteps, dtype=np.float64)
    theta = np.minimum(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999)
    cum = np.cumsum(theta)
    total, rest = cum[-1], cum[-1] - cum
    big_theta = np.sinh(rest) / np.sinh(total)
    sigma = np.sqrt(np.maximum(2 * lam * np.sinh(cum) * np.sinh(rest) / np.sinh(total), 0.0))
    return big_theta, sigma


def timestep_pairs(num_timesteps: int, num_steps: int) -> list[tuple[int, int]]:
    """(t, s) pairs of the sampling grid int(linspace(−1, T−1, S+1)) reversed."""
    grid = [int(v) for v in np.linspace(-1, num_timesteps - 1, num_steps + 1)][::-1]
    return list(zip(grid[:-1], grid[1:]))


def _tables(schedule_tables: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(schedule_tables, "Theta"):
        return np.asarray(schedule_tables.Theta,
                          np.float64), np.asarray(schedule_tables.Sigma, np.float64)
    theta, sigma = schedule_tables
    return np.asarray(theta, np.float64), np.asarray(sigma, np.float64)


# ---------------------------------------------------------------------------- training
def make_optimizer(model: nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """Adam (fused on CUDA), the paper's optimiser."""
    cuda = next(model.parameters()).is_cuda
    return torch.optim.Adam(model.parameters(), lr=lr, fused=cuda)


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, schedule_tables: Any,
                    parameterization: str = "x0", loss: str = "l1",
                    amp_dtype: torch.dtype | None = None, channels_last: bool = True,
                    compile: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """RDBM step: x_t = μ + Θ_t(x0−μ) + Σ_t π ε, π = x0−μ (Eq. 11); L1/L2 to x0 or πε; Adam."""
    if parameterization not in ("x0", "pi_eps"):
        raise ValueError(f"parameterization {parameterization!r}: expected x0 | pi_eps")
    if loss not in ("l1", "l2"):
        raise ValueError(f"loss {loss!r}: expected l1 | l2")
    device = next(model.parameters()).device
    big_theta, sigma = (torch.as_tensor(a, dtype=torch.float32, device=device)
                        for a in _tables(schedule_tables))
    num_t = big_theta.shape[0]
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()

    def loss_fn(x0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                eps: torch.Tensor) -> torch.Tensor:
        pi = x0 - mu
        x_t = mu + big_theta[t].view(-1, 1, 1, 1) * pi + sigma[t].view(-1, 1, 1, 1) * pi * eps
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype
                            is not None):
            out = model(x_t, mu, t)
        target = x0 if parameterization == "x0" else pi * eps
        diff = out.float() - target
        return diff.abs().mean() if loss == "l1" else diff.square().mean()

    if compile:
        loss_fn = torch.compile(loss_fn)

    def step(x0: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        x0, mu = x0.contiguous(memory_format=fmt), mu.contiguous(memory_format=fmt)
        t = torch.randint(0, num_t, (x0.shape[0],), device=device)
        value = loss_fn(x0, mu, t, torch.randn_like(x0))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        return value.detach()

    return step


# ---------------------------------------------------------------------------- sampling
def sampler_step(x: torch.Tensor, mu: torch.Tensor, x0_hat: torch.Tensor, theta_t: float,
                 sigma_t: float, theta_s: float, sigma_s: float) -> torch.Tensor:
    """Eq. 19 in x0 form; singular first step (Σ_t = 0): x_s = μ + Θ_s(x̂0 − μ)."""
    if sigma_t == 0:
        return mu + theta_s * (x0_hat - mu)
    r = sigma_s / sigma_t
    return mu + r * (x - mu) + (theta_s - theta_t * r) * (x0_hat - mu)


@torch.no_grad()
def sample(
        model: Callable[..., torch.Tensor], mu: torch.Tensor, schedule_tables: Any,
        num_steps: int = 10, clip: bool = True, amp_dtype: torch.dtype | None = None,
        return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Deterministic RDBM sampler (x0-parameterised net): x_{T−1} = μ → … → x̂0 (last step)."""
    big_theta, sigma = _tables(schedule_tables)
    x, traj = mu.clone(), []
    for t, s in timestep_pairs(len(big_theta), num_steps):
        tt = torch.full((mu.shape[0],), t, dtype=torch.long, device=mu.device)
        with torch.autocast(mu.device.type, dtype=amp_dtype or torch.bfloat16,
                            enabled=amp_dtype is not None):
            x0_hat = model(x, mu, tt).to(mu.dtype)
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        if s < 0:
            x = x0_hat
        else:
            x = sampler_step(x, mu, x0_hat, float(big_theta[t]), float(sigma[t]),
                             float(big_theta[s]), float(sigma[s]))
        traj.append(x)
    return (x, traj) if return_trajectory else x
