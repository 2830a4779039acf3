"""Workdir files of every mode and the API through one path type, etils.epath (as orbax): local
folders and object stores (gs://, s3://) alike.

Every write lands whole: a local file is written beside its final name and renamed; an object
store publishes an object only when its upload completes, so a plain write is all-or-nothing.
"""
from __future__ import annotations

import importlib.util
import io
import os

import fsspec
import numpy as np
from etils import epath
from PIL import Image

from rdbm_jax.runtime import atomic
from rdbm_jax.errors import ConfigError

# The package fsspec (epath's backend) needs for each object store, and our extra that installs it.
BACKENDS = {"gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"), "s3": ("s3fs", None),
            "az": ("adlfs", None), "hf": ("huggingface_hub", None)}
_usable: set[str] = set()  # schemes whose backend was found (asked once per process)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is an object-store URL (gs://…, s3://…) rather than a local path."""
    return "://" in os.fspath(path)


def check_backend(path: str | os.PathLike, key: str = "") -> None:
    """Refuse (ConfigError, one line naming `key` or the path and the extra to install) an
    object-store URL whose file-system package is missing; local paths pass."""
    text = os.fspath(path)
    if not is_remote(text):
        return
    scheme = text.split("://", 1)[0].lower()
    if scheme in _usable:
        return
    where = f"{key}={text!r}" if key else repr(text)
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        if not _tensorflow_installed():  # with TensorFlow, epath reads gs:// through tf.io.gfile
            package, extra = BACKENDS.get(scheme, (f"the {scheme} file system", None))
            how = (f"pip install -e \".[{extra}]\" (or pip install {package})" if extra
                   else f"pip install {package}")
            raise ConfigError(f"{where}: {scheme}:// paths need the {package} package, which is "
                              f"not installed: {how}") from None
    except ValueError:
        raise ConfigError(f"{where}: unknown object store {scheme}:// (known: "
                          f"{', '.join(f'{k}://' for k in BACKENDS)})") from None
    _usable.add(scheme)


def _tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported (then epath uses it for object stores, not fsspec)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path (local paths made absolute; an object store's missing package is a
    one-line ConfigError, `check_backend`)."""
    text = os.fspath(path)
    if is_remote(text):
        check_backend(text)
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base`/`parts`… as a string, for local paths and URLs alike."""
    return os.fspath(as_path(base).joinpath(*parts))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` whole (parents created; see the module docstring)."""
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        target.write_bytes(data)
        return
    atomic.write_bytes(os.fspath(target), data)  # temp file + rename


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` whole."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` to a log file. Object stores have no append: the object is rewritten whole
    (metrics logs hold a few hundred bytes per logged step)."""
    target = as_path(path)
    if not is_remote(path):
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = target.read_text(encoding="utf-8") if target.exists() else ""
    target.write_text(old + text, encoding="utf-8")


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """A uint8 image [H, W(, 3)] as a PNG file, written whole."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
