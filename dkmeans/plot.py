"""Matplotlib pictures of a clustering: the scatter with centroid stars, the elbow.

Matplotlib is an optional dependency (the ``plot`` extra) and is imported only when
a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import dask.array as da
import numpy as np

from .io import check_data, to_dask_array

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Clusters beyond this many are not listed one by one in the legend.
LEGEND_MAX_CLUSTERS = 10


def _pyplot():
    """``matplotlib.pyplot``, or an ImportError that names the extra to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'dkmeans[plot]'") from error
    return plt


def _axes(ax: Axes | None) -> Axes:
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    return ax


class PrincipalAxes(NamedTuple):
    """The leading principal components of a data set.

    Attributes
    ----------
    mean : ndarray of shape (n_features,)
    components : ndarray of shape (n_components, n_features)
        Unit vectors, by decreasing variance; the sign makes each one's largest
        loading positive, so the result is deterministic.
    explained_variance_ratio : ndarray of shape (n_components,)
        Fraction of the total variance along each component (0 when X is constant).
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    def project(self, points: np.ndarray) -> np.ndarray:
        """Coordinates of ``points`` (m, n_features) on the components: (m, n_components)."""
        return (np.asarray(points, dtype=np.float64) - self.mean) @ self.components.T


def principal_axes(
    X: da.Array, n_components: int = 2, shift: np.ndarray | None = None
) -> PrincipalAxes:
    """Principal components of X from one pass over its row blocks.

    The d x d scatter matrix and the column sums are tree-reduced over the blocks in
    float64; only they reach the client, where ``numpy.linalg.eigh`` diagonalises the
    covariance. Memory is a few blocks plus O(d²), whatever the number of rows.

    Parameters
    ----------
    X : dask array of shape (n_samples, n_features)
    n_components : int, default=2
    shift : ndarray of shape (n_features,), optional
        A point near the mean (e.g. the mean of the cluster centres), subtracted
        before the sums to avoid cancellation in ``XᵀX - n·μμᵀ``; default zero.

    Returns
    -------
    PrincipalAxes
    """
    shift = _shift(X, shift)
    sums, scatter = da.compute(*_moments(X, shift))
    return _principal_axes(X.shape[0], shift, sums, scatter, n_components)


def _shift(X: da.Array, shift: np.ndarray | None) -> np.ndarray:
    return np.zeros(X.shape[1]) if shift is None else np.asarray(shift, dtype=np.float64)


def _moments(X: da.Array, shift: np.ndarray) -> tuple[da.Array, da.Array]:
    """Lazy column sums (d,) and scatter matrix (d, d) of ``X - shift``, in float64."""
    shifted = X.astype(np.float64) - shift
    return shifted.sum(axis=0), shifted.T @ shifted


def _principal_axes(
    n_samples: int, shift: np.ndarray, sums: np.ndarray, scatter: np.ndarray, n_components: int
) -> PrincipalAxes:
    mean_offset = sums / n_samples
    covariance = (scatter - n_samples * np.outer(mean_offset, mean_offset)) / max(n_samples - 1, 1)
    variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1][:n_components]
    components = vectors[:, order].T
    largest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(len(components)), largest])[:, None]
    variances = np.clip(variances, 0, None)
    total = float(variances.sum())
    ratio = variances[order] / total if total > 0 else np.zeros(len(order))
    return PrincipalAxes(shift + mean_offset, components, ratio)


def _colors(n_clusters: int) -> list:
    plt = _pyplot()
    if n_clusters <= 10:
        cmap = plt.get_cmap("tab10")
        return [cmap(i) for i in range(n_clusters)]
    if n_clusters <= 20:
        cmap = plt.get_cmap("tab20")
        return [cmap(i) for i in range(n_clusters)]
    cmap = plt.get_cmap("viridis")
    return [cmap(i / (n_clusters - 1)) for i in range(n_clusters)]


def plot_clusters(
    X: Any,
    km: Any,
    ax: Axes | None = None,
    sample_size: int = 10_000,
    random_state: int = 0,
) -> Axes:
    """Scatter of (a sample of) X coloured by cluster, the centres as large black stars.

    Two features are drawn as they are. More than two are projected onto the first
    two principal components of X, computed out of core in one pass (the axis labels
    give the share of the variance each explains); the centres are projected the
    same way. One feature is drawn as a strip plot: the value along x, one jittered
    row per cluster along y.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array, xarray.DataArray or str of shape (n_samples, n_features)
        The data, as for :meth:`KMeans.fit`.
    km : fitted KMeans
        Any fitted estimator with ``cluster_centers_`` and ``predict``.
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default.
    sample_size : int, default=10_000
        At most this many points are drawn (a uniform sample of the rows, labelled
        with ``km.predict``).
    random_state : int, default=0
        Seed of the sample and of the strip plot's jitter.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If X and the centres have different numbers of features.

    Examples
    --------
    >>> import numpy as np
    >>> import dkmeans
    >>> X = np.random.default_rng(0).normal(size=(500, 2))
    >>> km = dkmeans.KMeans(n_clusters=3, random_state=0).fit(X)
    >>> ax = dkmeans.plot_clusters(X, km)  # doctest: +SKIP
    """
    data = check_data(to_dask_array(X))
    n_samples, n_features = data.shape
    centers = np.asarray(km.cluster_centers_, dtype=np.float64)
    if centers.shape[1] != n_features:
        raise ValueError(
            f"X has {n_features} features but the centres have {centers.shape[1]}; "
            "plot the data the model was fitted on"
        )
    ax = _axes(ax)
    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(n_samples, size=min(n_samples, sample_size), replace=False))
    xlabel, ylabel = "feature 0", "feature 1"
    if n_features > 2:
        # the sample and the projection's moments come from the same single read of X
        shift = centers.mean(axis=0)
        sample, sums, scatter = da.compute(data[rows], *_moments(data, shift))
        axes = _principal_axes(n_samples, shift, sums, scatter, 2)
        points, centers_xy = axes.project(sample), axes.project(centers)
        xlabel, ylabel = (
            f"principal component {i + 1} ({ratio:.1%} of variance)"
            for i, ratio in enumerate(axes.explained_variance_ratio)
        )
    else:
        sample = data[rows].compute()
        points, centers_xy = np.asarray(sample, dtype=np.float64), centers
    labels = np.asarray(km.predict(sample))
    if n_features == 1:
        jitter = rng.uniform(-0.3, 0.3, size=len(labels))
        points = np.column_stack([points[:, 0], labels + jitter])
        centers_xy = np.column_stack([centers[:, 0], np.arange(len(centers))])
        ylabel = "cluster"
        ax.set_yticks(np.arange(len(centers)))

    colors = _colors(len(centers))
    for k, color in enumerate(colors):
        mine = labels == k
        label = f"cluster {k}" if len(centers) <= LEGEND_MAX_CLUSTERS else None
        ax.scatter(points[mine, 0], points[mine, 1], s=6, alpha=0.6, color=color, label=label)
    ax.scatter(
        centers_xy[:, 0],
        centers_xy[:, 1],
        marker="*",
        s=400,
        c="black",
        edgecolors="white",
        linewidths=1,
        zorder=3,
        label="centres",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    legend = ax.legend(loc="best", fontsize="small")
    # legible legend markers: the dots are tiny and the stars huge on the plot itself
    *dots, star = legend.legend_handles
    for handle in dots:
        handle.set_sizes([40])
    star.set_sizes([150])
    return ax


def plot_elbow(
    inertias: Mapping[int, float], ax: Axes | None = None, chosen_k: int | None = None
) -> Axes:
    """Inertia against the number of clusters k: the elbow method.

    Parameters
    ----------
    inertias : mapping {k: inertia}
        For example the result of :func:`dkmeans.elbow`.
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default.
    chosen_k : int, optional
        Marked on the curve with a red ring and a legend entry when given.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If ``inertias`` is empty or ``chosen_k`` is not one of its keys.

    Examples
    --------
    >>> import numpy as np
    >>> import dkmeans
    >>> X = np.random.default_rng(0).normal(size=(300, 2))
    >>> ax = dkmeans.plot_elbow(dkmeans.elbow(X, range(1, 6)), chosen_k=3)  # doctest: +SKIP
    """
    if not inertias:
        raise ValueError("inertias is empty: pass {k: inertia}, e.g. from dkmeans.elbow")
    if chosen_k is not None and chosen_k not in inertias:
        raise ValueError(f"chosen_k={chosen_k} is not among the k of inertias: {sorted(inertias)}")
    ax = _axes(ax)
    ks = sorted(inertias)
    ax.plot(ks, [inertias[k] for k in ks], "o-", color="tab:blue", label="inertia")
    if chosen_k is not None:
        ax.plot(
            [chosen_k],
            [inertias[chosen_k]],
            "o",
            ms=16,
            mfc="none",
            mec="tab:red",
            mew=2,
            label=f"chosen k = {chosen_k}",
        )
        ax.legend()
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("inertia (sum of squared distances)")
    ax.set_xticks(ks)
    ax.set_title("Elbow method")
    return ax
