"""Progress bars (tqdm) for sample, eval and sweep: on process 0 only, and only on a terminal."""
from __future__ import annotations

import sys

from tqdm import tqdm

from rdbm_jax import distributed


def bar(total: int, desc: str, unit: str = "image") -> tqdm:
    """A tqdm bar on stderr; disabled (writes nothing) when stderr is not a terminal or not process 0."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not (sys.stderr.isatty() and distributed.is_main_process()))
