"""What several benchmarks share: where results go, the data, the starting centres, and the
inertia (or cosine objective) recomputed by brute force (never a library's own figure)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
#: Rows generated at a time.
GENERATION_ROWS = 250_000
#: Bytes of float64 distances the brute-force inertia holds at a time.
BRUTE_FORCE_BYTES = 2**27
#: Length of an embedding cluster's mean direction before the noise, per sqrt(d): a point's
#: cosine to its mean is then about 0.6.
CONCENTRATION = 0.75


def make_data(n: int, d: int, k: int, dtype: str, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture of ``k`` unit-variance clusters, generated block by block."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(k, d))
    x = np.empty((n, d), dtype=dtype)
    for start in range(0, n, GENERATION_ROWS):
        rows = slice(start, min(start + GENERATION_ROWS, n))
        labels = rng.integers(k, size=rows.stop - rows.start)
        x[rows] = means[labels] + rng.standard_normal((len(labels), d))
    return x


def make_noise(n: int, d: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Structureless data: standard Gaussian rows, generated block by block."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=dtype)
    for start in range(0, n, GENERATION_ROWS):
        stop = min(start + GENERATION_ROWS, n)
        x[start:stop] = rng.standard_normal((stop - start, d), dtype=x.dtype)
    return x


def make_embeddings(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """Unit float32 rows like embeddings (a von Mises-Fisher-like mixture of ``k`` random unit
    directions ``m``): ``m * CONCENTRATION * sqrt(d)`` plus standard Gaussian noise,
    normalised, generated block by block."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d))
    means *= CONCENTRATION * np.sqrt(d) / np.linalg.norm(means, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, GENERATION_ROWS):
        stop = min(start + GENERATION_ROWS, n)
        rows = means[rng.integers(k, size=stop - start)] + rng.standard_normal((stop - start, d))
        x[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return x


def initial_centers(x: Any, k: int, seed: int = 1) -> np.ndarray:
    """``k`` distinct random rows (of an array or a Zarr array), float64."""
    rows = np.random.default_rng(seed).choice(x.shape[0], size=k, replace=False)
    return np.stack([x[int(row)] for row in np.sort(rows)]).astype(np.float64)


def brute_force_inertia(x: Any, centers: np.ndarray) -> float:
    """Sum of squared distances to the nearest centre, in float64, independent of dkmeans.

    The nearest centre comes from a float64 GEMM expansion, its distance from ``x - c``;
    ``x`` (an array, a memory map or a Zarr array) is read a few rows at a time.
    """
    centers = np.asarray(centers, dtype=np.float64)
    centers_sq = (centers**2).sum(axis=1)
    chunk = max(1, BRUTE_FORCE_BYTES // (8 * len(centers)))
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xs = np.asarray(x[start : start + chunk], dtype=np.float64)
        nearest = (centers_sq - 2 * xs @ centers.T).argmin(axis=1)
        total += float(((xs - centers[nearest]) ** 2).sum())
    return total


def brute_force_cosine_objective(x: Any, centers: np.ndarray) -> float:
    """Sum over the rows of ``1 - max_c cos(x, c)``, in float64, independent of dkmeans: the
    rows and the centres are normalised here; ``x`` is read a few rows at a time."""
    centers = np.asarray(centers, dtype=np.float64)
    centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    chunk = max(1, BRUTE_FORCE_BYTES // (8 * len(centers)))
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xs = np.asarray(x[start : start + chunk], dtype=np.float64)
        xs /= np.linalg.norm(xs, axis=1, keepdims=True)
        total += float((1.0 - (xs @ centers.T).max(axis=1)).sum())
    return total


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each package, or ``"not installed"``."""
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
