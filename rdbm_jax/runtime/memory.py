"""How much memory there is (device and host) and how much a compiled program needs: the checks
that refuse or tile work before it fails with an out-of-memory traceback."""
from __future__ import annotations

import os
from typing import Any

import jax


def needed_bytes(compiled: Any) -> int:
    """Bytes per device a compiled program needs (XLA's memory analysis: arguments, outputs and
    temporaries, less what outputs alias); 0 when the backend does not say."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 — not every backend implements it
        return 0
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def device_budget(fraction: float = 0.9) -> int:
    """Bytes a program may use on the first local device: its free memory (accelerators), or the
    host's available memory (the CPU backend), times `fraction` (headroom for other buffers)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    else:
        free = host_available()
    return int(free * fraction)


def host_available() -> int:
    """Host memory available to this process: MemAvailable of /proc/meminfo (free + reclaimable
    cache), else the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gib(n: float) -> str:
    """Bytes as GiB for messages, e.g. '2.35 GiB'."""
    return f"{n / 2**30:.2f} GiB"
