"""The guarded relocation of one centre of mini-batch k-means, on a batch (the move of
ELBG, Patanè and Russo 2001).

Mini-batch k-means, as Lloyd's algorithm, keeps the number of centres that every region
of the data got from its start: from k random rows of a mixture of k clusters, some
clusters hold two centres and some pairs of clusters share one, and no update moves a
centre from one to the other (scikit-learn's reassignment moves only centres of almost
no count). A relocation tests one move on a batch: the centre whose removal costs the
batch least (its rows go to their second-nearest centre) is moved into the cluster of
largest inertia, which is split in two by 2-means on its rows. The batch is halved (the
rows at even and at odd positions): the centre, the cluster and the split are chosen on
the first half, and the move is made only if it lowers the inertia of both halves, so
that a move is not made on an estimate fitted to the rows that judge it. Weights are
kept: the two halves of the split cluster share its count in proportion to the weight
of their rows, and the centre that takes most of the removed centre's rows takes its
count.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .kernels import ranked_centers

#: Lloyd iterations of the 2-means that splits a cluster, at most.
SPLIT_ITERATIONS = 5
#: Power iterations that find the direction of largest spread of the cluster to split.
POWER_ITERATIONS = 5


class Nearest(NamedTuple):
    """The nearest and second-nearest centre of every row, and their squared distances."""

    first: np.ndarray  # (m,) int32
    second: np.ndarray  # (m,) int32
    first_distance: np.ndarray  # (m,) float64
    second_distance: np.ndarray  # (m,) float64


def nearest_two(x: np.ndarray, centers: np.ndarray) -> Nearest:
    """The nearest and second-nearest of ``centers`` (at least two) to every row of
    ``x`` (:func:`~dkmeans.kernels.ranked_centers`)."""
    indices, squared = ranked_centers(x, centers, 2)
    return Nearest(indices[:, 0], indices[:, 1], squared[:, 0], squared[:, 1])


def inertia(x: np.ndarray, weights: np.ndarray, centers: np.ndarray) -> float:
    """The weighted inertia of the rows ``x`` at their nearest of ``centers``."""
    return float(weights @ ranked_centers(x, centers, 1)[1][:, 0])


def _mean(x: np.ndarray, weights: np.ndarray, unit: bool) -> np.ndarray | None:
    """The weighted mean of rows of positive total weight (scaled to unit norm with
    ``unit``); None if there is none."""
    total = weights.sum()
    if not total > 0:
        return None
    mean = weights @ x / total
    if unit:
        norm = np.linalg.norm(mean)
        return mean / norm if norm > 0 else None
    return mean


def _sides(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Whether every row of ``x`` is nearer to ``centers[1]`` than to ``centers[0]``."""
    gap = centers[1] - centers[0]
    return x @ gap > (centers[1] @ centers[1] - centers[0] @ centers[0]) / 2


def split_in_two(
    x: np.ndarray, weights: np.ndarray, center: np.ndarray, unit: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Two centres for the rows ``x`` of a cluster: 2-means from ``center`` plus and
    minus its spread along the direction of largest spread (deterministic), and the
    weight of the rows nearest to each.

    Returns
    -------
    centers : ndarray of shape (2, d)
    weights : ndarray of shape (2,)
    """
    spread = x - center
    direction = spread[np.argmax(weights * np.einsum("ij,ij->i", spread, spread))]
    for _ in range(POWER_ITERATIONS):
        direction = spread.T @ (weights * (spread @ direction))
        norm = np.linalg.norm(direction)
        if not norm > 0:
            break
        direction = direction / norm
    along = np.sqrt(weights @ (spread @ direction) ** 2 / weights.sum())
    centers = np.stack([center + along * direction, center - along * direction])
    if unit:  # a side that no row is nearest to keeps its centre: a unit vector too
        centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), np.finfo(float).tiny)
    side = _sides(x, centers)
    for _ in range(SPLIT_ITERATIONS):
        for half, rows in enumerate((~side, side)):
            mean = _mean(x[rows], weights[rows], unit)
            if mean is not None:
                centers[half] = mean
        side, before = _sides(x, centers), side
        if np.array_equal(side, before):
            break
    return centers, np.array([weights[~side].sum(), weights[side].sum()])


class Half(NamedTuple):
    """Half of a batch: its rows (float64, C-contiguous) and their weights."""

    x: np.ndarray
    weights: np.ndarray


def relocate(
    centers: np.ndarray,
    counts: np.ndarray,
    x: np.ndarray,
    weights: np.ndarray | None,
    *,
    unit: bool = False,
) -> int:
    """Make the moves of the module's docstring on the batch ``x``, one after another,
    until one is not made (at most ``k - 1``); returns how many were made.

    Parameters
    ----------
    centers : ndarray of shape (k, d), float64
        Updated in place.
    counts : ndarray of shape (k,), float64
        The weight every centre has been given; updated in place (its sum is kept).
    x : ndarray of shape (m, d)
        The batch, in the frame of ``centers``.
    weights : ndarray of shape (m,), float64, or None for all ones
    unit : bool
        Spherical k-means: the rows and centres are unit vectors, and so are the
        centres of the split.
    """
    if len(centers) < 2 or len(x) < 4:
        return 0
    weights = np.ones(len(x)) if weights is None else weights
    fit, held = (
        Half(np.ascontiguousarray(x[first::2], dtype=np.float64), weights[first::2])
        for first in (0, 1)
    )
    held_inertia = None  # found when a move is first tested on it
    moves = 0
    while moves < len(centers) - 1:
        held_inertia = _move(centers, counts, fit, held, held_inertia, unit)
        if held_inertia is None:
            break
        moves += 1
    return moves


def _move(
    centers: np.ndarray,
    counts: np.ndarray,
    fit: Half,
    held: Half,
    held_inertia: float | None,
    unit: bool,
) -> float | None:
    """One move, chosen on ``fit`` and made (in place) if it lowers the inertia of
    ``fit`` and of ``held`` (``held_inertia`` before it, None: not known yet); returns
    the inertia of ``held`` after it, or None if it was not made."""
    n_centers = len(centers)
    nearest = nearest_two(fit.x, centers)
    given = np.bincount(nearest.first, fit.weights, minlength=n_centers)
    cluster_inertia = np.bincount(nearest.first, fit.weights * nearest.first_distance, n_centers)
    gap = nearest.second_distance - nearest.first_distance
    removal_cost = np.bincount(nearest.first, fit.weights * gap, n_centers)
    # centres given no rows here: whether they are needed is the reassignment's question
    removal_cost[given == 0] = np.inf
    removed = int(np.argmin(removal_cost))
    cluster_inertia[removed] = -np.inf
    split = int(np.argmax(cluster_inertia))
    members = nearest.first == split
    # a split gains less than the inertia of the cluster it splits
    if not removal_cost[removed] < cluster_inertia[split]:
        return None
    if np.count_nonzero(fit.weights[members]) < 2:
        return None
    halves, shares = split_in_two(fit.x[members], fit.weights[members], centers[split], unit)
    moved = centers.copy()
    moved[split], moved[removed] = halves
    after_labels, after_distances = ranked_centers(fit.x, moved, 1)
    if not fit.weights @ after_distances[:, 0] < fit.weights @ nearest.first_distance:
        return None
    held_after = inertia(*held, moved)
    if held_inertia is None:
        held_inertia = inertia(*held, centers)
    if not held_after < held_inertia:
        return None
    orphans = nearest.first == removed
    heir = int(np.argmax(np.bincount(after_labels[orphans, 0], fit.weights[orphans], n_centers)))
    removed_count = counts[removed]
    counts[split], counts[removed] = counts[split] * shares / shares.sum()
    counts[heir] += removed_count
    centers[:] = moved
    return held_after
