"""The UNet size presets T/S/B/L as plain data (no jax, no flax: config files read the names)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SizePreset:
    """Width/depth of one UNet size: base channels, per-level multipliers and residual blocks."""

    channels: int
    channel_mult: tuple[int, ...]
    num_blocks: tuple[int, ...]
    num_heads: int
    groups: int = 8


# Paper: T 0.45 M, B 3.65 M (23.97 GMAC @256²), L 7.73 M (32.93 GMAC); S sits in between.
SIZES: dict[str, SizePreset] = {
    "T": SizePreset(16, (1, 1, 2, 2), (1, 1, 2, 2), num_heads=1),
    "S": SizePreset(24, (1, 2, 3, 3), (1, 1, 1, 1), num_heads=3),
    "B": SizePreset(32, (1, 2, 3, 3), (1, 2, 1, 2), num_heads=3),
    "L": SizePreset(48, (1, 1, 3, 4), (1, 1, 1, 1), num_heads=6),
}
