"""User-facing errors: caught by `rdbm_jax.main` and printed as one line, no traceback."""


class RDBMError(Exception):
    """Base class of every error caused by user input (config, files, workdir)."""


class ConfigError(RDBMError, ValueError):
    """A config key has a bad value; the message names the key (e.g. `bridge.lam`)."""


class DataError(RDBMError, ValueError):
    """An input file or folder is missing or unusable; the message names the path."""


class TrainingError(RDBMError, RuntimeError):
    """Training cannot go on (non-finite loss, unwritable workdir, ...)."""
