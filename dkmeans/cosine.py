"""The cosine metric: rows compared by direction (spherical k-means).

For unit rows ``x̂`` and unit centres ``ĉ``, ``||x̂ - ĉ||² = 2 (1 - cos(x, c))``. So the
Euclidean engine (the GEMM assignment, the distance bounds, the far points, the
samplers' ``d²``) run on L2-normalised rows against unit centres *is* cosine k-means:
the nearest centre is the most similar one, and sampling by ``d²`` samples by
``1 - cos``. What differs is only around it: every block is normalised as it is read
(:func:`unit_rows`; X is never copied whole), a centre is the normalised weighted mean
of its rows (:func:`unit_centers`), and the inertia is ``Σ w (1 - cos)``, half the
squared distances the kernels sum (:data:`INERTIA_PER_SQUARED_DISTANCE`).

Pure NumPy; no Dask.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Metric = Literal["euclidean", "cosine"]
METRICS: tuple[Metric, ...] = ("euclidean", "cosine")

#: Cosine distance per squared Euclidean distance between unit vectors.
COSINE_PER_SQUARED_DISTANCE = 0.5
#: Below this float64 squared norm a row's squares may have underflowed: its norm is
#: measured again on the row scaled by its largest magnitude.
UNDERFLOW_SQUARED_NORM = 1e-290


def inertia_per_squared_distance(metric: Metric) -> float:
    """What one unit of the kernels' ``Σ w ||x - c||²`` is worth in the metric's inertia."""
    return COSINE_PER_SQUARED_DISTANCE if metric == "cosine" else 1.0


def row_norms(block: np.ndarray) -> np.ndarray:
    """Euclidean norm of every row in float64, exact for rows of tiny values too."""
    norms_sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    norms = np.sqrt(norms_sq)
    tiny = np.flatnonzero(norms_sq < UNDERFLOW_SQUARED_NORM)
    if len(tiny):
        rows = np.abs(block[tiny].astype(np.float64))
        largest = rows.max(axis=1, initial=0.0)
        scaled = np.divide(
            rows, largest[:, None], out=np.zeros_like(rows), where=largest[:, None] > 0
        )
        norms[tiny] = largest * np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
    return norms


def unit_rows(block: np.ndarray, row_offset: int = 0, block_index: int | None = None) -> np.ndarray:
    """The rows of ``block`` divided by their Euclidean norms (a new array).

    Float32 and float64 rows stay in their dtype; narrower floats become float32.

    Parameters
    ----------
    block : ndarray of shape (rows, d)
    row_offset, block_index : int
        Where the block lies, named in the message as by
        :func:`~dkmeans.frame.check_values`.

    Raises
    ------
    ValueError
        For a row of norm zero (it has no direction) or a non-finite norm, naming the
        first such row.
    """
    dtype = np.promote_types(block.dtype, np.float32)
    norms = row_norms(block)
    bad = ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        where = "" if block_index is None else f" in block {block_index}"
        what = "is all zeros" if norms[first] == 0 else "has a non-finite norm"
        raise ValueError(
            f"row {row_offset + first} of X{where} {what}: metric='cosine' compares rows by "
            "direction, and this row has none. Remove such rows (or use metric='euclidean')"
        )
    return np.divide(block, norms[:, None].astype(dtype), dtype=dtype)


def unit_centers(centers: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """Centres scaled to unit norm (float64).

    Parameters
    ----------
    centers : ndarray of shape (k, d)
    fallback : ndarray of shape (k, d), optional
        Unit centres taken where a centre is zero (the weighted rows of a cluster
        cancelled out); without it a zero centre raises.

    Raises
    ------
    ValueError
        For a zero (or non-finite) centre without ``fallback``.
    """
    centers = np.asarray(centers, dtype=np.float64)
    norms = row_norms(centers)
    usable = np.isfinite(norms) & (norms > 0)
    if not usable.all() and fallback is None:
        first = int(np.flatnonzero(~usable)[0])
        raise ValueError(
            f"centre {first} is zero (or not finite): metric='cosine' needs centres with "
            "a direction"
        )
    out = np.array(fallback, dtype=np.float64) if fallback is not None else centers.copy()
    out[usable] = centers[usable] / norms[usable, None]
    return out


def cosine_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``1 - cos`` of every unit row to every unit centre, shape (rows, K), in [0, 2].

    Computed in float64 and returned in the rows' dtype (float32 or float64).
    """
    out = 1.0 - np.asarray(x, dtype=np.float64) @ np.asarray(centers, dtype=np.float64).T
    np.clip(out, 0.0, 2.0, out=out)
    return out.astype(np.promote_types(x.dtype, np.float32), copy=False)
