"""The elbow method: inertia over a range of k, all fitted with shared passes over X."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

from .estimator import KMeans, fit_runs
from .exceptions import InvalidParameterError


def elbow(
    X: Any, k_values: Iterable[int] = range(1, 11), sample_weight: Any = None, **kmeans_params: Any
) -> dict[int, float]:
    """Fit k-means for every k in ``k_values`` and return the inertia of each.

    All k (and all ``n_init`` runs of each) advance together: every pass over X
    serves all of them, so the whole curve costs about as many reads of X as the
    slowest single fit.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array, xarray.DataArray or str
        The data, as for :meth:`KMeans.fit`.
    k_values : iterable of int, default=range(1, 11)
        Numbers of clusters to try.
    sample_weight : array-like of shape (n_samples,), optional
    **kmeans_params
        Any other :class:`KMeans` parameter (``init``, ``n_init``, ``max_iter``,
        ``tol``, ``random_state``, ...). With the same ``random_state``, the inertia
        of every k equals that of ``KMeans(n_clusters=k, **kmeans_params).fit(X)``.
        ``init`` is a method name or a callable (called with every k); explicit
        centres fix a single k.

    Returns
    -------
    dict {k: inertia}, in increasing k.

    Raises
    ------
    InvalidParameterError
        For bad ``k_values`` or KMeans parameters (both a ``ValueError`` and a
        ``TypeError``), before any work.

    Examples
    --------
    >>> import numpy as np
    >>> from dkmeans import elbow
    >>> X = np.random.default_rng(0).normal(size=(300, 2))
    >>> curve = elbow(X, k_values=[1, 2, 3], random_state=0)
    >>> curve[1] > curve[2] > curve[3]
    True
    """
    given = list(k_values)
    if not given or not all(isinstance(k, numbers.Integral) and k >= 1 for k in given):
        raise InvalidParameterError(f"k_values must be positive integers, got {given!r}")
    ks = sorted({int(k) for k in given})
    if "n_clusters" in kmeans_params:
        raise InvalidParameterError(
            "elbow() takes the numbers of clusters as k_values, not n_clusters"
        )
    unknown = sorted(set(kmeans_params) - set(KMeans().get_params()))
    if unknown:
        raise InvalidParameterError(f"elbow() got parameters KMeans does not have: {unknown}")
    init = kmeans_params.get("init", "k-means||")
    if not (isinstance(init, str) or callable(init)):
        raise InvalidParameterError(
            "elbow() needs an init method name or a callable; explicit centres fix a single k"
        )
    fits = fit_runs(KMeans(n_clusters=ks[0], **kmeans_params), X, ks, sample_weight)
    return {k: fits.best[k].inertia for k in ks}
