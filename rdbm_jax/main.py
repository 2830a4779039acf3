"""Command line: `python -m rdbm_jax.main --config=configs/<task>.py --workdir=DIR --mode=MODE`.

Only dispatches. Errors caused by the user's input (RDBMError) print one line, no traceback.
"""
from __future__ import annotations

import errno
import logging
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

MODES = ("train", "eval", "sample", "sweep", "export", "app", "print_config")
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort")  # ours (exit 0), not absl's (exit 1)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<task>.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, samples.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "Multi-process: coordinator host:port.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: this process's id.")


def _fail(message: str, code: int = 2) -> None:
    # One line whatever the message holds (a file name with a newline, say): breaks spelled out.
    sys.stderr.write("error: " + message.replace("\r", "\\r").replace("\n", "\\n") + "\n")
    sys.exit(code)


def _one_line(e: BaseException, last: bool = False) -> str:
    """An exception's message on one line (`last`: only its last line, e.g. after a traceback)."""
    text = _unquote(str(e).strip()).replace("\\n", "\n").replace("\\'", "'")
    lines = [_unquote(part.strip()) for part in text.splitlines() if part.strip()]
    if last and lines:
        return lines[-1]
    return " ".join(lines)


def _unquote(text: str) -> str:
    """Drop the quotes around a whole quoted message (a KeyError's repr), and only those."""
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _config_path(argv: list[str]) -> str:
    """The file named by --config (without its `:arg`), or "" when there is none."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    return ""


def _config_file_error(e: BaseException, path: str) -> str | None:
    """One line naming the config file (and line) when `e` comes from loading it, else None."""
    import traceback

    folder = os.path.dirname(os.path.abspath(path))
    chain, seen = [], e
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, SyntaxError) and err.filename:
            return f"{err.filename}:{err.lineno}: syntax error: {err.msg}"
        if isinstance(err, AttributeError) and "get_config" in str(err):
            return f"{path}: the config file defines no get_config(arg=None) function"
        frames = [
            f for f in traceback.extract_tb(err.__traceback__)
            if os.path.dirname(os.path.abspath(f.filename)) == folder and f.filename.endswith(".py")
        ]
        if frames:
            where = f"{frames[-1].filename}:{frames[-1].lineno}"
            return f"{where}: {type(err).__name__} in get_config: {_one_line(err)}"
    if not os.path.isfile(path) and any(isinstance(err, OSError) for err in chain):
        return f"{path}: no such config file"
    return None


def _override_error(e: BaseException, argv: list[str]) -> str:
    """One line for a failed `--config.KEY=VALUE`: the full key, and "unknown" when it does not
    exist (ml_collections names only its last part, e.g. KeyError('lr'))."""
    what = _one_line(e)
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    named = [k for k in keys if what.split(" ")[0].strip("'\"") in k.split(".")]
    if isinstance(e, (KeyError, AttributeError)) and named:
        return (f"unknown config key {named[0]} (--config.{named[0]}): no such key "
                "(configs/default.py lists every key)")
    return f"bad --config override{f' --config.{named[0]}' if named else ''}: {what}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config-file and config-override problems as one-line errors."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        from rdbm_jax import cli_help
        sys.stdout.write(cli_help.text(MODES))
        sys.exit(0)
    path = _config_path(argv)
    try:
        rest = flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 — every failure becomes one line or is re-raised
        message = _config_file_error(e, path) if path else None
        if message:
            _fail(message)
        if isinstance(e, flags.Error):
            message = _one_line(e)
            _fail(_one_line(e, last=True) if "Traceback" in message else message)
        # unknown/locked config keys
        if isinstance(e, (AttributeError, KeyError, TypeError, ValueError)):
            _fail(_override_error(e, argv))
        raise
    cfg = _CONFIG.value
    if cfg is not None and not isinstance(cfg, ml_collections.ConfigDict):
        # A file config_flags could not open becomes a placeholder that raises an OSError (its
        # documented "Configuration is not available" error) on any access: only that error is a
        # load failure; anything else is a get_config() that returned the wrong type.
        try:
            cfg["seed"]
        except OSError as e:
            cause = _one_line(e.__cause__ or e, last=True)
            _fail(_config_file_error(e, path) or f"--config={path}: {cause}")
        except Exception:  # noqa: BLE001 — e.g. an int has no items: reported just below
            pass
        _fail(
            f"{path}: get_config() returned {type(cfg).__name__}, not an ml_collections.ConfigDict")
    return rest


def _drop_closed_loop_noise() -> None:
    """Silence "Event loop is closed" errors that orbax's reader threads can raise, after a failed
    checkpoint read was already reported in one line, into an event loop orbax has closed.

    An orbax-checkpoint 0.12.8 workaround (see checkpointing/orbax_workarounds.py); installed
    here because the threads outlive the call that failed, for the rest of the process.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        _fail("--config is required (e.g. --config=configs/demo.py)")
    if _MODE.value == "print_config":
        from rdbm_jax import cli_help
        from rdbm_jax.errors import ConfigError
        try:
            sys.stdout.write(cli_help.resolved_config(_CONFIG.value) + "\n")
        except ConfigError as e:
            _fail(str(e))
        return
    if not _WORKDIR.value:
        _fail("--workdir is required")
    _drop_closed_loop_noise()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    logging.getLogger("rdbm_jax").setLevel(logging.INFO)  # orbax/absl chatter stays at WARNING
    from rdbm_jax.runtime import distributed
    from rdbm_jax.errors import ConfigError, Interrupted, RDBMError

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        if _MODE.value == "train":
            from rdbm_jax.train import train_and_evaluate
            train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "eval":
            from rdbm_jax.evaluate import run_eval
            run_eval(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "sample":
            from rdbm_jax.restore_files import run_restore_files
            run_restore_files(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "sweep":
            from rdbm_jax.sweep import run_sweep
            run_sweep(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "app":
            from rdbm_jax.app import serve
            serve(_CONFIG.value, _WORKDIR.value)
        else:
            from rdbm_jax.export import run_export
            run_export(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:  # a bad key or a path a key names, found before anything ran
        _fail(str(e), code=2)
    except Interrupted as e:  # Ctrl-C, reported by the mode with what it had finished
        _fail(str(e), code=130)
    except RDBMError as e:
        _fail(str(e), code=1)
    except KeyboardInterrupt:  # Ctrl-C where no mode reported it (loading, compiling, …)
        _fail(_INTERRUPTED[_MODE.value], code=130)
    except OSError as e:  # a full disk or a vanished folder while writing outputs
        _fail(_os_error(e), code=1)


# What Ctrl-C outside a mode's own report leaves behind (every file lands whole or not at all).
_INTERRUPTED = {
    "train": "interrupted (Ctrl-C) while training was loading or saving: the checkpoints are "
             "intact; run the same command again to resume from the newest one",
    "eval": "interrupted (Ctrl-C): eval/ files are written at the end, so none of this "
            "evaluation was written; run the same command again",
    "sweep": "interrupted (Ctrl-C): sweep/ files are written at the end, so none of this sweep "
             "was written; run the same command again",
    "sample": "interrupted (Ctrl-C) before the first output was written; run the same command "
              "again",
    "export": "interrupted (Ctrl-C): the export was not finished (a restorer.json that does not "
              "match restorer.jax is refused by the loader); run the same command again",
}


def _os_error(e: OSError) -> str:
    """One line for an OSError while writing outputs; a full disk names the file, its folder and
    that the files written before it are whole."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and e.filename:
        from rdbm_jax.errors import no_space_left
        return no_space_left(e.filename, os.path.dirname(os.fspath(e.filename)))
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else _one_line(e)


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
