"""Greedy weighted k-means++ of points in memory, the steps as single float32 products.

It reclusters the k-means|| candidates and seeds small data on all its rows. Each step
draws ``2 + ln k`` trial centres with probability proportional to ``w * d²`` and keeps
the one that lowers the potential most (scikit-learn's variant). A step measures every
trial against every point, so it reads every point for a product of a few rows, and
what costs is the bytes: at k = 4,096 over 41,000 candidates of 128 features, a
product in float64 and the five passes that turned it into gains took 7.4 ms a step
(30 s a restart; this way, 16-18 s).

Here one product gives the gains themselves. A trial ``t`` lowers the potential by
``sum_p w_p max(c_p - d²(t, p), 0)``, with ``c_p`` the point's squared distance to its
nearest chosen centre, and ``c_p - d²(t, p) = (2t, -||t||², 1) · (p, 1, c_p - ||p||²)``:
the points are kept as columns ``(p, 1, c_p - ||p||²)`` in float32 and a step is one
product, one clip at zero in place and one product with the weights. The last row of
the columns changes only for the points the chosen trial moves.

The choices are those of the plain algorithm in exact arithmetic; a distance within
float32 rounding of a tie may come out the other way (the candidates lie in the data's
frame near the origin, where the expansion is accurate). Points whose products could
overflow float32 (``4 max ||p||² · Σ w`` above about 5·10³³) are measured in float64
(:func:`step_dtype`): in float32 their gains were infinite or NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The steps run in float32 while their largest value, about ``4 max ||p||² · Σ w`` (a
#: squared distance between two points is at most 4 times the largest squared norm),
#: stays below this fraction of float32's largest; else in float64.
FLOAT32_HEADROOM = 2.0**-16


def step_dtype(norms_sq: np.ndarray, weights: np.ndarray) -> type[np.floating]:
    """The dtype of the k-means++ steps over points of squared norms ``norms_sq`` and
    weights ``weights``: float32 unless its products could overflow."""
    largest = 4 * float(norms_sq.max(initial=0.0)) * max(float(weights.sum()), 1.0)
    if largest < FLOAT32_HEADROOM * float(np.finfo(np.float32).max):
        return np.float32
    return np.float64


def padded(centers: np.ndarray, n_clusters: int) -> np.ndarray:
    """Repeat centres cyclically up to ``n_clusters`` rows (data with fewer distinct
    points than clusters: scikit-learn returns duplicate centres too)."""
    if len(centers) >= n_clusters:
        return centers[:n_clusters]
    return centers[np.arange(n_clusters) % len(centers)]


@dataclass(frozen=True)
class PlusPlusPoints:
    """Weighted points laid out for greedy k-means++.

    Attributes
    ----------
    points : ndarray of shape (m, d), float64
    weights : ndarray of shape (m,), float64, positive
    norms_sq : ndarray of shape (m,), float64
    """

    points: np.ndarray
    weights: np.ndarray
    norms_sq: np.ndarray

    @classmethod
    def of(cls, points: np.ndarray, weights: np.ndarray) -> PlusPlusPoints:
        points = np.asarray(points, dtype=np.float64)
        return cls(
            points=points,
            weights=np.asarray(weights, dtype=np.float64),
            norms_sq=np.einsum("ij,ij->i", points, points),
        )

    def chosen(self, n_clusters: int, rng: np.random.Generator) -> list[int]:
        """The indices of the points greedy k-means++ chooses with ``rng``'s draws
        (fewer than ``n_clusters`` when every point coincides with a chosen one)."""
        n_points, n_features = self.points.shape
        n_trials = 2 + int(np.log(n_clusters))
        chosen = [int(rng.choice(n_points, p=self.weights / self.weights.sum()))]
        first = self.points[chosen[0]]
        closest = self.norms_sq + self.norms_sq[chosen[0]] - 2 * (self.points @ first)
        np.maximum(closest, 0, out=closest)
        # the points as contiguous columns (p, 1, c - ||p||²): BLAS packs a transposed
        # view afresh at every step, which cost 3 times the product itself
        dtype = step_dtype(self.norms_sq, self.weights)
        columns = np.empty((n_features + 2, n_points), dtype=dtype)
        columns[:n_features] = self.points.T
        columns[n_features] = 1
        columns[n_features + 1] = closest - self.norms_sq
        step_weights = self.weights.astype(dtype)
        trial_rows = np.empty((n_trials, n_features + 2), dtype=dtype)
        for _ in range(1, n_clusters):
            cumulative = np.cumsum(self.weights * closest)
            if not cumulative[-1] > 0:
                break  # every point coincides with a centre: no distinct point is left
            draws = rng.uniform(size=n_trials) * cumulative[-1]
            trials = np.minimum(np.searchsorted(cumulative, draws, side="right"), n_points - 1)
            trial_rows[:, :n_features] = 2 * self.points[trials]
            trial_rows[:, n_features] = -self.norms_sq[trials]
            trial_rows[:, n_features + 1] = 1
            gains = trial_rows @ columns  # (trials, points): c_p - d²(t, p)
            np.maximum(gains, 0, out=gains)
            best = int(np.argmax(gains @ step_weights))
            moved = np.flatnonzero(gains[best])
            closest[moved] = np.maximum(closest[moved] - gains[best, moved], 0)
            columns[n_features + 1, moved] = closest[moved] - self.norms_sq[moved]
            chosen.append(int(trials[best]))
        return chosen


def weighted_plusplus_restarts(
    points: np.ndarray, weights: np.ndarray, n_clusters: int, seeds: Sequence[int]
) -> list[np.ndarray]:
    """Greedy weighted k-means++ (scikit-learn's variant) of points in memory, once per
    seed.

    Parameters
    ----------
    points : ndarray of shape (m, d)
    weights : ndarray of shape (m,), positive
    n_clusters : int
    seeds : sequence of int
        Each restart draws from ``numpy.random.default_rng(seed)``.

    Returns
    -------
    list of ndarray of shape (n_clusters, d), float64: rows of ``points`` (repeated
    cyclically when fewer than ``n_clusters`` points are distinct), one per seed.
    """
    laid_out = PlusPlusPoints.of(points, weights)
    chosen = [laid_out.chosen(n_clusters, np.random.default_rng(seed)) for seed in seeds]
    return [padded(laid_out.points[run], n_clusters) for run in chosen]


def weighted_plusplus(
    points: np.ndarray, weights: np.ndarray, n_clusters: int, seed: int
) -> np.ndarray:
    """:func:`weighted_plusplus_restarts` with one seed."""
    return weighted_plusplus_restarts(points, weights, n_clusters, [seed])[0]
