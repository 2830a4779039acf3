"""Fréchet Inception Distance (Heusel et al. 2017) as pytorch-fid computes it, and reference
statistics.

    python -m rdbm_jax.evaluation.perceptual.fid --weights inception_fid.npz --folder DIR \
        --out stats.npz

Statistics files hold `mu` [D] and `sigma` [D, D] (the same .npz layout as pytorch-fid's
`--save-stats`, so either tool's files can be used).
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
import warnings

import numpy as np
from scipy import linalg

from rdbm_jax.runtime import paths
from rdbm_jax.data.image_io import decode_image, list_images
from rdbm_jax.errors import DataError, RDBMError
from rdbm_jax.evaluation.perceptual.inception import INPUT_SIZE, make_inception, resize_matrix

log = logging.getLogger(__name__)


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D] with N-1 normalisation) of features [N, D], N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID statistics need features [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


class RunningStats:
    """FID statistics accumulated batch by batch: memory O(D²), whatever the number of images.

    Keeps n, the running mean and the centred scatter matrix M = Σ (x - mean)(x - mean)ᵀ in
    float64, merged per batch by Chan et al.'s pairwise update. WHY not raw Σx, Σxxᵀ: Inception
    features share a large positive mean, and Σxxᵀ - n mean meanᵀ would cancel most of its digits;
    the centred update matches `compute_statistics` on the stored features to rounding.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        """Fold in features [B, D] (or one [D] vector)."""
        f = np.atleast_2d(np.asarray(features, np.float64))
        if f.ndim != 2:
            raise ValueError(f"FID features must be [B, D], got shape {f.shape}")
        if f.shape[0] == 0:
            return
        if self.mean is not None and f.shape[1] != self.mean.shape[0]:
            raise ValueError(f"FID features of dimension {f.shape[1]} added to statistics of "
                             f"dimension {self.mean.shape[0]}")
        b = f.shape[0]
        mean_b = f.mean(axis=0)
        centred = f - mean_b
        scatter_b = centred.T @ centred
        if self.mean is None:
            self.n = b
            self.mean = mean_b
            self.scatter = scatter_b
            return
        delta = mean_b - self.mean
        total = self.n + b
        self.mean = self.mean + delta * (b / total)
        self.scatter = self.scatter + scatter_b + np.outer(delta, delta) * (self.n * b / total)
        self.n = total

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [D], covariance [D, D] with N-1 normalisation), as `compute_statistics`."""
        if self.n < 2:
            raise ValueError(f"FID statistics need features [N >= 2, D], got {self.n} image(s)")
        return self.mean.copy(), self.scatter / (self.n - 1)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's matrix square root without its ill-conditioning warning (pytorch-fid passes
    disp=False)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(a)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 sqrt(S1 S2)), pytorch-fid's `calculate_frechet_distance`."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"FID statistics differ in dimension: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("FID: singular product of covariances; adding %s to their diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrt(S1 S2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `mu` and `sigma` to an .npz (pytorch-fid's layout), whole (local or gs://)."""
    buffer = io.BytesIO()
    np.savez(buffer, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    paths.write_bytes(path, buffer.getvalue())


def load_stats(path: str, config_key: str = "eval.fid_ref_stats") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an .npz (local or gs://); DataError naming the file and config key if
    missing or malformed."""
    where = f"{path} ({config_key})" if config_key else path
    if not paths.as_path(path).is_file():
        raise DataError(f"FID reference statistics not found: {where}")
    try:
        with paths.as_path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
            if "mu" not in z.files or "sigma" not in z.files:
                raise DataError(
                    f"FID statistics file lacks 'mu'/'sigma' arrays (has {z.files}): {where}")
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"not a readable FID statistics .npz ({msg}): {where}") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(
            f"FID statistics have mu {mu.shape} and sigma {sigma.shape}, expected [D] and "
            f"[D, D]: {where}")
    return mu, sigma


def folder_statistics(weights_path: str, folder: str, batch_size: int = 50) -> RunningStats:
    """Running statistics of the pool3 features of every image under `folder` (each resized to 299
    as pytorch-fid); memory does not grow with the number of images."""
    features = make_inception(weights_path, config_key="--weights")
    if features is None:
        raise DataError("no Inception weights given (--weights)")
    paths = list_images(folder, "--folder")
    batch_size = min(batch_size, len(paths))
    stats = RunningStats()
    for start in range(0, len(paths), batch_size):
        batch = []
        for p in paths[start:start + batch_size]:
            img = decode_image(p)
            rh = resize_matrix(img.shape[0], INPUT_SIZE)
            rw = resize_matrix(img.shape[1], INPUT_SIZE)
            batch.append(np.einsum("oh,hwc->owc", rh, np.einsum("pw,hwc->hpc", rw, img)))
        n = len(batch)
        batch += [batch[-1]] * (batch_size - n)  # one compiled shape for every batch
        stats.add(np.asarray(features(np.stack(batch)))[:n])
        log.info("FID features: %d / %d images", start + n, len(paths))
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: precompute FID reference statistics of an image folder."""
    p = argparse.ArgumentParser(prog="python -m rdbm_jax.evaluation.perceptual.fid",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True,
                   help="inception_fid.npz from rdbm_jax.evaluation.perceptual.convert")
    p.add_argument("--folder", required=True, help="reference images (searched recursively)")
    p.add_argument("--out", required=True, help="output statistics .npz (mu, sigma)")
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.batch_size < 1:
            raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
        stats = folder_statistics(args.weights, args.folder, args.batch_size)
        if stats.n < 2:
            raise DataError(f"FID statistics need at least 2 images, found {stats.n} in "
                            f"{args.folder} (--folder)")
        mu, sigma = stats.statistics()
        save_stats(args.out, mu, sigma)
    except RDBMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (statistics of {stats.n} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
