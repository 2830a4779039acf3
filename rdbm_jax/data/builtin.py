"""The built-in dataset: real colour photographs shipped inside scikit-image and scikit-learn.

Works on a fresh machine with no download: the files are located through the installed packages.
The split is fixed by image (no image in both splits):

    train (8): astronaut, coffee, hubble_deep_field, immunohistochemistry (ihc), motorcycle_left,
               motorcycle_right (a stereo pair: both kept in train), retina, china (scikit-learn)
    val   (3): chelsea (451×300), rocket (640×427), flower (640×427, scikit-learn)

Recipes are chosen without the val photos, by k-fold over the 8 training photos (`FOLDS`: 4 folds
of 2 held-out photos): `fold<i>` holds fold i's photos out, `fold<i>_train` is the other six
(train on the second, measure on the first; mean and spread over the folds, experiments/recipes.py).
The stereo pair is one fold, so no held-out scene is ever trained on from another viewpoint. (The
one-photo `tune` split, astronaut alone, is retired: a recipe chosen on it did not carry over.)

Only colour photographs are used. The grayscale photos of scikit-image (camera, moon, coins,
brick, grass, gravel, page, text, ...) are skipped: they carry no colour, so they would teach the
model R = G = B outputs on colour tasks such as low-light or haze. Synthetic drawings (chessboard,
color, logo, horse, phantom) are skipped too.
"""
from __future__ import annotations

import importlib.util
import os

from rdbm_jax.errors import ConfigError, DataError

# name -> (package, path relative to the package directory)
_FILES = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "data/ihc.png"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}
TRAIN = ("astronaut", "china", "coffee", "hubble_deep_field", "immunohistochemistry",
         "motorcycle_left", "motorcycle_right", "retina")
# The k-fold partition of TRAIN: each fold pairs unlike photos (a portrait with deep space, a
# landscape with microscopy, ...), and the stereo pair stays together (see the module docstring).
FOLDS = (("astronaut", "hubble_deep_field"), ("china", "immunohistochemistry"),
         ("coffee", "retina"), ("motorcycle_left", "motorcycle_right"))
SPLITS = {
    "train": TRAIN,
    "val": ("chelsea", "flower", "rocket"),
    # For choosing recipes without touching val: train on fold<i>_train, measure on fold<i>.
    **{f"fold{i}": fold for i, fold in enumerate(FOLDS)},
    **{f"fold{i}_train": tuple(n for n in TRAIN if n not in fold) for i, fold in enumerate(FOLDS)},
}


def _package_dir(package: str) -> str:
    """Install directory of a package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = {"skimage": "scikit-image", "sklearn": "scikit-learn"}[package]
        raise DataError(f"built-in dataset needs the package {pip_name} (pip install {pip_name})")
    return list(spec.submodule_search_locations)[0]


def builtin_files(split: str, key: str | None = None) -> list[tuple[str, str]]:
    """(name, path) of the built-in photos of `split` (train | val), sorted by name."""
    if split not in SPLITS:
        raise ConfigError(f"{key or 'split'}: unknown built-in split {split!r}; "
                          f"choose one of {sorted(SPLITS)}")
    out = []
    for name in sorted(SPLITS[split]):
        package, rel = _FILES[name]
        path = os.path.join(_package_dir(package), rel)
        if not os.path.isfile(path):
            raise DataError(f"built-in image {name!r} missing from the installed {package}: {path}")
        out.append((name, path))
    return out
