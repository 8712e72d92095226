"""Groups of centres for Yinyang's distance bounds (Ding et al., ICML 2015).

Hamerly's bounds keep one lower bound per row and run: on the distance to every centre
but the row's own. At large k that bound is the second-nearest distance, which every
pass lowers by the largest drift of any centre, and few rows stay apart. Yinyang's
bounds split every run's centres into groups of centres close to each other and keep
one lower bound per row and group: a group whose centres all stay far from the row is
passed over whole, and each bound only drops by its own group's largest drift.

The groups come from a few Lloyd iterations on the run's initial centres and stay
fixed for the bounds' lifetime; they change which distances a pass computes, never
its result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Lloyd iterations that group a run's centres (a rough grouping serves as well).
GROUPING_ITERATIONS = 5


@dataclass(frozen=True)
class CentreGroups:
    """Every run's centres in groups, laid out so that a group's centres are contiguous.

    Attributes
    ----------
    order : ndarray of shape (K,), int64
        The stacked centre at every position: groups one after the other, runs in
        order, a group's centres by increasing index.
    edges : ndarray of shape (G + 1,), int64
        Group ``g`` holds the positions ``edges[g]:edges[g + 1]``.
    run_groups : ndarray of shape (R + 1,), int64
        Run ``r`` owns the groups ``run_groups[r]:run_groups[r + 1]``.
    """

    order: np.ndarray
    edges: np.ndarray
    run_groups: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.edges) - 1

    def maxima(self, values: np.ndarray) -> np.ndarray:
        """The largest of ``values`` (one per stacked centre) in every group, shape (G,)."""
        return np.maximum.reduceat(values[self.order], self.edges[:-1])

    @classmethod
    def of_runs(cls, bounds: np.ndarray) -> CentreGroups:
        """One group per run (Hamerly's bounds); every run has centres."""
        bounds = np.asarray(bounds, dtype=np.int64)
        return cls(order=np.arange(bounds[-1]), edges=bounds, run_groups=np.arange(len(bounds)))

    @classmethod
    def of_centers(
        cls, centers: np.ndarray, bounds: np.ndarray, groups_per_run: int
    ) -> CentreGroups:
        """Group every run's centres into at most ``groups_per_run`` groups.

        Parameters
        ----------
        centers : ndarray of shape (K, d)
            Stacked centres of all runs.
        bounds : ndarray of shape (R + 1,)
            Run ``r`` owns ``centers[bounds[r]:bounds[r + 1]]``.
        groups_per_run : int, at least 1
        """
        order, sizes, run_groups = [], [], [0]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            labels = _group_labels(np.asarray(centers[lo:hi], dtype=np.float64), groups_per_run)
            counts = np.bincount(labels)
            order.append(lo + np.argsort(labels, kind="stable"))
            sizes.extend(counts[counts > 0])
            run_groups.append(run_groups[-1] + np.count_nonzero(counts))
        return cls(
            order=np.concatenate(order).astype(np.int64),
            edges=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            run_groups=np.array(run_groups, dtype=np.int64),
        )


def _group_labels(centers: np.ndarray, n_groups: int) -> np.ndarray:
    """The group of every centre: Lloyd from evenly spaced centres, a few iterations."""
    n_groups = max(min(n_groups, len(centers)), 1)
    seeds = centers[np.linspace(0, len(centers) - 1, n_groups).astype(np.int64)]
    squared = np.einsum("ij,ij->i", centers, centers)
    labels = np.zeros(len(centers), dtype=np.int64)
    for _ in range(GROUPING_ITERATIONS):
        distances = squared[:, None] - 2 * centers @ seeds.T + np.einsum("ij,ij->i", seeds, seeds)
        labels = distances.argmin(axis=1)
        counts = np.bincount(labels, minlength=n_groups)
        sums = np.zeros_like(seeds)
        np.add.at(sums, labels, centers)
        filled = counts > 0
        seeds[filled] = sums[filled] / counts[filled, None]
    return labels
