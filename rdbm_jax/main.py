"""Command line: `python -m rdbm_jax.main --config=configs/<task>.py --workdir=DIR --mode=MODE`.

Only dispatches. Errors caused by the user's input (RDBMError) print one line, no traceback.
"""
from __future__ import annotations

import logging
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

MODES = ("train", "eval", "sample", "sweep", "export")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<task>.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, samples.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "Multi-process: coordinator host:port.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: this process's id.")


def _fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def _one_line(e: BaseException, last: bool = False) -> str:
    """An exception's message on one line (`last`: only its last line, e.g. after a traceback)."""
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    lines = [part.strip().strip("'\"") for part in text.splitlines() if part.strip()]
    if last and lines:
        return lines[-1]
    return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config-file and config-override problems as one-line errors."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        message = _one_line(e)
        _fail(_one_line(e, last=True) if "Traceback" in message else message)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # unknown/locked config keys
        _fail(f"bad --config override: {_one_line(e)}")
    cfg = _CONFIG.value
    if cfg is not None and not isinstance(cfg, ml_collections.ConfigDict):
        try:  # config_flags keeps a placeholder that raises the load error when used
            cfg["seed"]
        except Exception as e:  # noqa: BLE001
            cause = e.__cause__ or e
            _fail(f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: {_one_line(cause, last=True)}")
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        _fail("--config is required (e.g. --config=configs/demo.py)")
    if not _WORKDIR.value:
        _fail("--workdir is required")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("rdbm_jax").setLevel(logging.INFO)  # orbax/absl chatter stays at WARNING
    from rdbm_jax import distributed
    from rdbm_jax.errors import RDBMError

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        if _MODE.value == "train":
            from rdbm_jax.train import train_and_evaluate
            train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "eval":
            from rdbm_jax.evaluate import run_eval
            run_eval(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "sample":
            from rdbm_jax.inference import restore_folder
            restore_folder(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "sweep":
            from rdbm_jax.sweep import run_sweep
            run_sweep(_CONFIG.value, _WORKDIR.value)
        else:
            from rdbm_jax.export import run_export
            run_export(_CONFIG.value, _WORKDIR.value)
    except RDBMError as e:
        _fail(str(e), code=1)


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
