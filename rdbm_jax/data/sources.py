"""Random-access image sources (`__len__` / `read(i)`): paired folders, side-by-side, clean,
built-in.

Folder-level problems (missing or empty folder, unpaired files) raise DataError when a source is
built; per-file problems raise DataError when read (and at build time by a header probe when
`check_headers`). With `skip_bad_files` the bad files / unpaired files are dropped, counted and
logged instead.
"""
from __future__ import annotations

import abc
import dataclasses
import logging

import ml_collections
import numpy as np

from rdbm_jax.data import builtin
from rdbm_jax.data.image_io import (RowsNeeded, decode_pixels, list_images, pixels_to_unit,
                                    probe_size, relative_stem)
from rdbm_jax.errors import ConfigError, DataError

_MAX_LISTED = 3


@dataclasses.dataclass
class RawItem:
    """One example before cropping: clean x0 and (if the source has one) condition μ, in [0, 1]
    (`read`) or as decoded pixels, uint8 or float32 in [0, 1] (`read_pixels`)."""
    x0: np.ndarray
    mu: np.ndarray | None
    name: str


class ImageSource(abc.ABC):
    """Base: a sorted list of (name, file paths) entries, filtered for bad files at build time."""

    FILE_KEYS: tuple[str, ...] = ("dir",)  # config key of each path of an entry (for messages)
    LEADING_ROWS = False  # whether `read_pixels` can decode only the leading rows a crop needs

    def __init__(self, entries: list[tuple[str, tuple[str, ...]]], key: str, *, max_images: int,
                 skip_bad_files: bool, check: str):
        self.key = key
        self.file_keys = tuple(f"{key}.{k}" if k else key for k in self.FILE_KEYS)
        self.skip_bad_files = skip_bad_files
        kept, bad = [], []
        for entry in entries:
            if max_images and len(kept) >= max_images:
                break
            try:
                if check == "decode":
                    self._read_entry(entry)
                elif check == "header":
                    self._probe(entry)
            except DataError as e:
                if not skip_bad_files:
                    raise
                bad.append(str(e))
            else:
                kept.append(entry)
        if bad:
            logging.warning("%s: skipped %d bad file(s) at build time (skip_bad_files=True), "
                            "e.g. %s", key, len(bad), "; ".join(bad[:_MAX_LISTED]))
        if not kept:
            raise DataError(f"no usable images for {key}"
                            + (f" ({len(bad)} skipped as bad)" if bad else ""))
        self.entries = kept
        self.num_skipped = len(bad)

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> RawItem:
        """Decode example `index` to float32 in [0, 1]; DataError naming the file(s) on a
        problem."""
        item = self.read_pixels(index)
        mu = None if item.mu is None else pixels_to_unit(item.mu)
        return RawItem(pixels_to_unit(item.x0), mu, item.name)

    def read_pixels(self, index: int, rows: RowsNeeded | None = None) -> RawItem:
        """Example `index` as stored pixels (`image_io.decode_pixels`): crop, then convert.
        `rows` (sources with LEADING_ROWS only): see `decode_pixels`; x0 may hold fewer rows."""
        if rows is not None:
            return self._read_rows(self.entries[index], rows)
        return self._read_entry(self.entries[index])

    def _read_rows(self, entry: tuple[str, tuple[str, ...]], rows: RowsNeeded) -> RawItem:
        """The leading rows a crop needs; a source that cannot stop early decodes the whole image
        (more rows than needed is always a valid answer). Only LEADING_ROWS sources save work."""
        del rows
        return self._read_entry(entry)

    @abc.abstractmethod
    def _read_entry(self, entry: tuple[str, tuple[str, ...]]) -> RawItem:
        """Decode one (name, file paths) entry: each source kind says how."""

    def _probe(self, entry: tuple[str, tuple[str, ...]]) -> None:
        for path, key in zip(entry[1], self.file_keys):
            probe_size(path, key)


class CleanSource(ImageSource):
    """Clean images only (μ is synthesised by a degradation)."""

    LEADING_ROWS = True

    def _read_entry(self, entry):
        name, (path,) = entry
        return RawItem(decode_pixels(path, self.file_keys[0]), None, name)

    def _read_rows(self, entry, rows):
        name, (path,) = entry
        return RawItem(decode_pixels(path, self.file_keys[0], rows), None, name)


class BuiltinSource(CleanSource):
    """The built-in photos of one split; decoded pixels are kept in memory (11 small files)."""

    FILE_KEYS = ("split",)
    LEADING_ROWS = False  # whole images are kept in memory

    def __init__(self, *args, **kwargs):
        self._cache: dict[str, np.ndarray] = {}
        super().__init__(*args, **kwargs)

    def _read_entry(self, entry):
        name, (path,) = entry
        if path not in self._cache:
            self._cache[path] = decode_pixels(path, self.file_keys[0])
        return RawItem(self._cache[path], None, name)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}  # do not ship decoded images to worker processes
        return state


class PairedSource(ImageSource):
    """lq_dir + gt_dir matched by relative path without extension; sizes must agree."""

    FILE_KEYS = ("lq_dir", "gt_dir")

    def _read_entry(self, entry):
        name, (lq_path, gt_path) = entry
        mu = decode_pixels(lq_path, self.file_keys[0])
        x0 = decode_pixels(gt_path, self.file_keys[1])
        if mu.shape != x0.shape:
            raise DataError(
                f"pair size mismatch: LQ {lq_path} is {mu.shape[1]}x{mu.shape[0]} but GT "
                f"{gt_path} is {x0.shape[1]}x{x0.shape[0]} ({self.key})")
        return RawItem(x0, mu, name)

    def _probe(self, entry):
        _, (lq_path, gt_path) = entry
        hl, wl = probe_size(lq_path, self.file_keys[0])
        hg, wg = probe_size(gt_path, self.file_keys[1])
        if (hl, wl) != (hg, wg):
            raise DataError(f"pair size mismatch: LQ {lq_path} is {wl}x{hl} but GT {gt_path} is "
                            f"{wg}x{hg} ({self.key})")


class SideBySideSource(ImageSource):
    """pix2pix layout: one file holds A|B side by side; `condition` names the half that is μ."""

    def __init__(self, *args, condition: str, **kwargs):
        self.condition = condition
        super().__init__(*args, **kwargs)

    def _split(self, path: str, w: int) -> None:
        if w % 2:
            raise DataError(f"side-by-side image has an odd width {w} (cannot split A|B): {path} "
                            f"({self.file_keys[0]})")

    def _read_entry(self, entry):
        name, (path,) = entry
        img = decode_pixels(path, self.file_keys[0])
        self._split(path, img.shape[1])
        half = img.shape[1] // 2
        left, right = img[:, :half], img[:, half:]
        mu, x0 = (left, right) if self.condition == "left" else (right, left)
        return RawItem(np.ascontiguousarray(x0), np.ascontiguousarray(mu), name)

    def _probe(self, entry):
        _, (path,) = entry
        self._split(path, probe_size(path, self.file_keys[0])[1])


def _by_stem(folder: str, key: str, strip: str) -> dict[str, str]:
    """Matching key (relative stem, `strip` removed from the file name) → path; DataError if
    ambiguous."""
    out: dict[str, str] = {}
    for path in list_images(folder, key):
        stem = relative_stem(path, folder)
        if strip:
            head, _, base = stem.rpartition("/")
            stem = (head + "/" if head else "") + base.replace(strip, "", 1)
        if stem in out:
            raise DataError(
                f"two files match the same name {stem!r}: {out[stem]} and {path} ({key})")
        out[stem] = path
    return out


def _pair_entries(spec: ml_collections.ConfigDict, key: str,
                  skip_bad_files: bool) -> list[tuple[str, tuple[str, ...]]]:
    """Match LQ and GT files; unpaired files are an error (or a logged skip)."""
    lq = _by_stem(spec.lq_dir, f"{key}.lq_dir", spec.lq_strip)
    gt = _by_stem(spec.gt_dir, f"{key}.gt_dir", spec.gt_strip)
    problems = []
    for mine, other, what, other_key in ((gt, lq, "GT", "lq_dir"), (lq, gt, "LQ", "gt_dir")):
        lonely = sorted(set(mine) - set(other))
        if lonely:
            examples = ", ".join(mine[s] for s in lonely[:_MAX_LISTED])
            problems.append(f"{len(lonely)} {what} file(s) without a partner in {other_key} "
                            f"{getattr(spec, other_key)} ({key}.{other_key}), e.g. {examples}")
    if problems:
        if not skip_bad_files:
            raise DataError("; ".join(problems))
        logging.warning("%s: skipping unpaired files (skip_bad_files=True): %s", key,
                        "; ".join(problems))
    common = sorted(set(lq) & set(gt))
    if not common:
        raise DataError(f"no LQ/GT pairs: no file name in {spec.lq_dir} ({key}.lq_dir) matches one "
                        f"in {spec.gt_dir} ({key}.gt_dir)")
    return [(s, (lq[s], gt[s])) for s in common]


def build_source(spec: ml_collections.ConfigDict, key: str, *, skip_bad_files: bool,
                 verify: bool = False) -> ImageSource:
    """The source of one config (`key` = its config path); `verify` decodes every file at build."""
    if verify and skip_bad_files:
        check = "decode"
    else:
        check = "header" if spec.check_headers else "none"
    common = dict(max_images=int(spec.max_images), skip_bad_files=skip_bad_files, check=check)
    kind = spec.kind
    if kind == "builtin":
        entries = [(n, (p,)) for n, p in builtin.builtin_files(spec.split, f"{key}.split")]
        return BuiltinSource(entries, key, **common)
    if kind == "paired":
        return PairedSource(_pair_entries(spec, key, skip_bad_files), key, **common)
    if kind in ("clean", "side_by_side"):
        entries = [(n, (p,)) for n, p in sorted(_by_stem(spec.dir, f"{key}.dir", "").items())]
        if kind == "clean":
            return CleanSource(entries, key, **common)
        return SideBySideSource(entries, key, condition=spec.condition, **common)
    raise ConfigError(f"{key}.kind: unknown source kind {kind!r}")
