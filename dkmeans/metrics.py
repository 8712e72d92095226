"""Cluster quality scores for data of any size."""

from __future__ import annotations

import numbers
from typing import Any

import dask.array as da
import numpy as np
from sklearn.metrics import silhouette_score as exact_silhouette_score

from .cosine import METRICS, Metric
from .exceptions import InvalidParameterError
from .io import check_data, to_dask_array


def silhouette_score(
    X: Any,
    labels: Any,
    sample_size: int | None = 10_000,
    random_state: Any = None,
    metric: Metric = "euclidean",
) -> float:
    """Mean silhouette coefficient, on a uniform sample of rows for large X.

    The silhouette needs all pairwise distances (quadratic in the number of points),
    so at most ``sample_size`` rows are drawn (without replacement) and scored with
    scikit-learn. When the sample covers X the result equals scikit-learn's
    ``silhouette_score(X, labels, metric=metric)``.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array, xarray.DataArray or str of shape (n_samples, n_features)
    labels : array-like or dask array of shape (n_samples,)
        Cluster labels, e.g. ``km.labels_``.
    sample_size : int or None, default=10_000
        Rows scored; None scores all rows (only sensible for small X).
    random_state : int, numpy Generator or None
        Seed of the sample.
    metric : {"euclidean", "cosine"}, default="euclidean"
        The distance between rows: as the :class:`~dkmeans.KMeans` that made the labels.

    Returns
    -------
    float in [-1, 1]

    Raises
    ------
    InvalidParameterError
        For a ``sample_size`` that is not None or an int of at least 2, or an unknown
        ``metric`` (both a ``ValueError`` and a ``TypeError``).
    """
    if not (isinstance(metric, str) and metric in METRICS):
        raise InvalidParameterError(f"metric must be one of {METRICS}, got {metric!r}")
    if sample_size is not None and not (
        isinstance(sample_size, numbers.Integral)
        and not isinstance(sample_size, bool)
        and sample_size >= 2
    ):
        raise InvalidParameterError(
            f"sample_size must be None or an int of at least 2, got {sample_size!r}"
        )
    data = check_data(to_dask_array(X))
    n_samples = data.shape[0]
    if len(labels) != n_samples:
        raise ValueError(f"labels has {len(labels)} entries but X has {n_samples} rows")
    if sample_size is None or sample_size >= n_samples:
        rows = slice(None)
    else:
        rng = np.random.default_rng(random_state)
        rows = np.sort(rng.choice(n_samples, size=sample_size, replace=False))
    points = data[rows]
    sample_labels = labels[rows]
    if isinstance(sample_labels, da.Array) or isinstance(points, da.Array):
        points, sample_labels = da.compute(points, sample_labels)
    points = np.asarray(points, dtype=np.float64)
    if metric == "euclidean":
        # scikit-learn's distances expand ||x||² - 2x·y + ||y||², which cancels far from the
        # origin: the silhouette does not move with the data, so score it around its mean
        # (cosine distances would change: they measure angles seen from the origin)
        points -= points.mean(axis=0)
    return float(exact_silhouette_score(points, np.asarray(sample_labels), metric=metric))
