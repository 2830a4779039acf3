"""User-facing errors: caught by `rdbm_jax.main` and printed as one line, no traceback."""


class RDBMError(Exception):
    """Base class of every error caused by user input (config, files, workdir)."""


class ConfigError(RDBMError, ValueError):
    """A config key has a bad value; the message names the key (e.g. `bridge.lam`)."""


class DataError(RDBMError, ValueError):
    """An input file or folder is missing or unusable; the message names the path."""


class TrainingError(RDBMError, RuntimeError):
    """Training cannot go on (non-finite loss, unwritable workdir, ...)."""


class Interrupted(RDBMError):
    """Ctrl-C (SIGINT) stopped a mode; the message says what was finished and how to go on (the
    command line exits 130, as a shell does for a process SIGINT ended)."""


def no_space_left(path: str, folder: str, finished: str = "the files") -> str:
    """The one line for a full disk (ENOSPC) while writing `path`: its folder, that `finished`
    written before it are complete, and how to go on (every mode's outputs land whole)."""
    return (f"no space left on device writing {path} (folder {folder}): stopped; {finished} "
            "written before it are complete (each lands whole) and it was not written; free space "
            "and run the same command again (finished outputs are kept)")
