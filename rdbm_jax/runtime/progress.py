"""Progress bars (tqdm) for sample, eval and sweep: on process 0 only, and only on a terminal."""
from __future__ import annotations

import logging
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rdbm_jax.runtime import distributed

COMPILING = "compiling (the first batch takes longest)"  # the bar's note until the first update


class Bar(tqdm):
    """A tqdm bar on stderr that, while it is shown, routes the console's log lines through
    `tqdm.write` (so they never glue onto the bar) and says that compilation is under way until
    the first item is done. Disabled (writes nothing, touches no logging) off a terminal, on
    processes other than 0, and when there is nothing to do."""

    def __init__(self, total: int, desc: str, unit: str = "image"):
        shown = total > 0 and sys.stderr.isatty() and distributed.is_main_process()
        super().__init__(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                         disable=not shown)
        self._redirect = None
        self._compiling = shown
        if shown:
            # The root logger's console handlers (main.py's) write through tqdm while the bar is up.
            self._redirect = logging_redirect_tqdm(loggers=[logging.root], tqdm_class=tqdm)
            self._redirect.__enter__()
            self.set_postfix_str(COMPILING)

    def update(self, n: float = 1) -> bool | None:
        if getattr(self, "_compiling", False):
            self._compiling = False
            self.set_postfix_str("", refresh=False)
        return super().update(n)

    def close(self) -> None:
        super().close()
        if getattr(self, "_redirect", None) is not None:
            redirect, self._redirect = self._redirect, None
            redirect.__exit__(None, None, None)  # the original handlers come back


def bar(total: int, desc: str, unit: str = "image") -> Bar:
    """A progress bar (see `Bar`); use it as a context manager or close() it."""
    return Bar(total, desc, unit)
