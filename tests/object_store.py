"""A stand-in object store for tests: `gs://bucket/…` served from a local folder, no network.

epath routes gs:// through fsspec's "gs" filesystem: here a local one whose listings read like GCS
("bucket/key"). orbax writes arrays through TensorStore, which would open its own GCS driver: its
path normaliser maps the same URLs to the local folder. Everything else — orbax's GCS code paths
(no atomic rename: commit-success files), epath, the package — sees gs:// URLs.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from fsspec.implementations.local import LocalFileSystem


class _LocalGCS(LocalFileSystem):
    protocol = ("gs", "gcs")
    root = ""  # the local folder standing in for gs://

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        if path.startswith(("gs://", "gcs://")):
            path = os.path.join(cls.root, path.split("://", 1)[1])
        return super()._strip_protocol(path)

    def glob(self, path, **kwargs):
        prefix = self.root.rstrip("/") + "/"  # GCS lists "bucket/key" (epath puts gs:// back)
        return [
            p[len(prefix):] if p.startswith(prefix) else p for p in super().glob(path, **kwargs)
        ]

    def __init__(self, *args, finalize_on_close=None, **kwargs):
        del finalize_on_close  # a GCS option
        super().__init__(*args, auto_mkdir=True, **kwargs)


def local_of(url: str) -> str:
    """The local file behind a gs:// URL of the stand-in."""
    return os.path.join(_LocalGCS.root, url.split("://", 1)[1])


@contextlib.contextmanager
def fake_gcs(root: str, monkeypatch) -> Iterator[None]:
    """Serve gs:// from `root` for the duration (fsspec, epath and orbax/TensorStore)."""
    from orbax.checkpoint._src.path import gcs_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    monkeypatch.setattr(_LocalGCS, "root", root)
    registry = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` is a read-only view
    for name in ("gs", "gcs"):
        # the real one (if any) comes back at the end
        monkeypatch.setitem(registry, name, _LocalGCS)
    normalize = ts_utils._normalize_path
    monkeypatch.setattr(ts_utils, "_normalize_path", lambda p: normalize(
        _LocalGCS._strip_protocol(p) if str(p).startswith("gs://") else p))
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    yield
