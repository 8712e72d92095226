"""Matplotlib pictures of a clustering: the scatter with centroid stars, the elbow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .io import check_data, to_dask_array


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plotting needs matplotlib: pip install 'dkmeans[plot]'"
        ) from error
    return plt


def _axes(ax):
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6, 5))
    return ax


def plot_clusters(X: Any, km: Any, ax=None, sample_size: int = 10_000, random_state: int = 0):
    """Scatter of (a sample of) X coloured by cluster, the centres as large black stars.

    Parameters
    ----------
    X : array-like, dask array, zarr array or path of shape (n_samples, n_features)
    km : fitted KMeans
    ax : matplotlib Axes, optional
    sample_size : int
        At most this many points are drawn (a uniform sample of the rows).
    random_state : int
        Seed of the sample.

    Returns
    -------
    matplotlib Axes
    """
    ax = _axes(ax)
    data = check_data(to_dask_array(X))
    n = data.shape[0]
    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
    points = np.asarray(data[rows].compute(), dtype=np.float64)
    labels = np.asarray(km.predict(points))
    centers = np.asarray(km.cluster_centers_, dtype=np.float64)
    if points.shape[1] > 2:
        raise ValueError("plot_clusters draws two features; project X to two dimensions first")
    xs, ys = (points[:, 0], points[:, 1]) if points.shape[1] == 2 else (points[:, 0], np.zeros(len(points)))
    cx, cy = (centers[:, 0], centers[:, 1]) if centers.shape[1] == 2 else (centers[:, 0], np.zeros(len(centers)))
    cmap = _pyplot().get_cmap("tab10" if len(centers) <= 10 else "tab20")
    for k in range(len(centers)):
        mine = labels == k
        ax.scatter(xs[mine], ys[mine], s=6, alpha=0.6, color=cmap(k % cmap.N), label=f"cluster {k}")
    ax.scatter(cx, cy, marker="*", s=400, c="black", edgecolors="white", label="centres")
    ax.set_xlabel("feature 0")
    ax.set_ylabel("feature 1")
    ax.legend(loc="best", fontsize="small", markerscale=1)
    return ax


def plot_elbow(inertias: Mapping[int, float], ax=None, chosen_k: int | None = None):
    """Inertia against k (the elbow method).

    Parameters
    ----------
    inertias : mapping {k: inertia}
    ax : matplotlib Axes, optional
    chosen_k : int, optional
        Marked on the curve when given.

    Returns
    -------
    matplotlib Axes
    """
    ax = _axes(ax)
    ks = sorted(inertias)
    ax.plot(ks, [inertias[k] for k in ks], "o-", color="tab:blue")
    if chosen_k is not None:
        ax.plot([chosen_k], [inertias[chosen_k]], "o", ms=14, mfc="none", mec="tab:red", label=f"k = {chosen_k}")
        ax.legend()
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("inertia")
    ax.set_xticks(ks)
    ax.set_title("Elbow method")
    return ax
