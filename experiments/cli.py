"""The experiments' command-line entry: logging set up once, a project error as one line, exit 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from rdbm_jax.errors import RDBMError


def run(main: Callable[[], object]) -> None:
    """Run an experiment's `main()`: INFO lines of rdbm_jax, WARNING of the libraries; an
    RDBMError (a bad argument, a refused resume) is one `error:` line and exit 2."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    logging.getLogger("rdbm_jax").setLevel(logging.INFO)
    try:
        main()
    except RDBMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
