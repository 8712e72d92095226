"""Partial results of a pass that combine: what every block kernel returns.

A kernel returns, for its block, a small object whose size does not depend on the
number of rows; the sources (:mod:`dkmeans.sources`) combine these in a fixed tree over
the blocks with :meth:`Combinable.combine`. Combining is associative, and ties are
broken by global row index, so the result depends neither on the tree's shape nor on
which block finished first. The Lloyd pass's statistics live here; the samplers'
(:mod:`dkmeans.sampling`, :mod:`dkmeans.oversampling`) live with their kernels and
follow the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol, Self

import numpy as np


class Combinable(Protocol):
    """The partial result of a pass over some blocks."""

    def combine(self, other: Self) -> Self:
        """The result of both parts' blocks (``self``'s rows before ``other``'s)."""


class PerRun(tuple):
    """Partial results of several runs sharing one pass, combined run by run."""

    def combine(self, other: PerRun) -> PerRun:
        return PerRun(a.combine(b) for a, b in zip(self, other, strict=True))


#: Candidates a :class:`FarPoints` gathers from the parts it combines, in multiples of its
#: capacity, before it selects among them. The selection costs more than the rest of a
#: pass's combine (~50 us against ~5 us) and is needed only in the rare pass that leaves
#: a cluster empty; the bound keeps the candidates of a tree of many blocks small.
PENDING_CAPACITIES = 8


class FarCandidates(NamedTuple):
    """Points that may be among the farthest of a run (any order)."""

    rows: np.ndarray  # (m, d)
    distances: np.ndarray  # (m,) squared distance to the own centre
    labels: np.ndarray  # (m,) index of the own centre within the run
    weights: np.ndarray  # (m,)
    index: np.ndarray  # (m,) global row index

    def farthest(self, capacity: int) -> FarCandidates:
        """The ``capacity`` farthest of the points with weight, sorted by decreasing
        distance, ties by increasing global row index."""
        keep = self.weights > 0
        if capacity == 0:
            keep[:] = False
        elif np.count_nonzero(keep) > capacity:
            # only rows at or above the capacity-th largest distance of the rows with
            # weight can be chosen
            eligible = self.distances if keep.all() else np.where(keep, self.distances, -np.inf)
            threshold = np.partition(eligible, len(eligible) - capacity)[-capacity]
            keep &= self.distances >= threshold
        order = np.lexsort((self.index[keep], -self.distances[keep]))[:capacity]
        pick = np.flatnonzero(keep)[order]
        return FarCandidates(*(values[pick] for values in self))


@dataclass(frozen=True)
class FarPoints:
    """The points farthest from their centre within one run, for empty-cluster relocation.

    Read sorted by decreasing distance, ties by increasing global row index, so that
    combining partial results in any tree shape gives the same answer. Combining only
    gathers the parts' candidates (up to :data:`PENDING_CAPACITIES` times the capacity);
    the farthest are selected when first read.
    """

    parts: tuple[FarCandidates, ...]
    capacity: int

    @classmethod
    def select(
        cls,
        rows: np.ndarray,
        distances: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray,
        index: np.ndarray,
        capacity: int,
    ) -> FarPoints:
        """The ``capacity`` farthest of the given points (``rows`` is read only where
        they are chosen)."""
        given = FarCandidates(rows, distances, labels, weights, index)
        part = given.farthest(capacity) if len(distances) > capacity else given
        return cls((part._replace(rows=np.asarray(part.rows, dtype=np.float64)),), capacity)

    def combine(self, other: FarPoints) -> FarPoints:
        far = FarPoints(self.parts + other.parts, self.capacity)
        pending = sum(len(part.index) for part in far.parts)
        return far if pending <= PENDING_CAPACITIES * self.capacity else far.collected()

    def collected(self) -> FarPoints:
        """The same far points with their candidates selected into one part."""
        return FarPoints((self.chosen,), self.capacity)

    def shifted(self, shift: np.ndarray) -> FarPoints:
        """The same far points with their rows minus ``shift`` (:mod:`dkmeans.frame`)."""
        parts = tuple(part._replace(rows=part.rows - shift) for part in self.parts)
        return FarPoints(parts, self.capacity)

    @cached_property
    def chosen(self) -> FarCandidates:
        """The farthest candidates (at most ``capacity``, rows in float64), sorted by
        decreasing distance, ties by increasing global row index."""
        if len(self.parts) == 1:
            return self.parts[0].farthest(self.capacity)
        fields = zip(*self.parts, strict=True)
        return FarCandidates(*map(np.concatenate, fields)).farthest(self.capacity)


@dataclass(frozen=True)
class Moments:
    """Per-feature count, mean and sum of squared deviations (Chan et al.'s parallel form)."""

    count: float
    mean: np.ndarray  # (d,) float64
    m2: np.ndarray  # (d,) float64

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        mean = x.mean(axis=0, dtype=np.float64)
        centred = x - mean
        return cls(float(len(x)), mean, np.einsum("ij,ij->j", centred, centred))

    def combine(self, other: Moments) -> Moments:
        count = self.count + other.count
        if count == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)
        return Moments(count, mean, m2)

    @property
    def variance(self) -> np.ndarray:
        """Population variance of every feature (as ``np.var``)."""
        return self.m2 / self.count


@dataclass(frozen=True)
class PassStats:
    """Statistics of one pass over the data under fixed stacked centres.

    Attributes
    ----------
    sums : ndarray of shape (K, d), float64
        Weighted sum of the rows nearest to every centre.
    counts : ndarray of shape (K,), float64
        Total weight of the rows nearest to every centre.
    cluster_inertia : ndarray of shape (K,), float64
        Weighted squared distances of those rows to their centre; a run's inertia is
        the sum over its centres.
    far : tuple of FarPoints, one per run
    moments : Moments or None
        Per-feature moments of the data, when asked for.
    """

    sums: np.ndarray
    counts: np.ndarray
    cluster_inertia: np.ndarray
    far: tuple[FarPoints, ...]
    moments: Moments | None

    def combine(self, other: PassStats) -> PassStats:
        return PassStats(
            self.sums + other.sums,
            self.counts + other.counts,
            self.cluster_inertia + other.cluster_inertia,
            tuple(a.combine(b) for a, b in zip(self.far, other.far, strict=True)),
            None if self.moments is None else self.moments.combine(other.moments),
        )


@dataclass(frozen=True)
class StackedMoments:
    """:class:`Moments` of consecutive parts, one per entry of a leading axis;
    :meth:`combine` is :meth:`Moments.combine` entry by entry, to the last bit (a
    :class:`~dkmeans.tree.Stacked`: the moments of many blocks fold into their tree node
    at once)."""

    count: np.ndarray  # (n,) float64
    mean: np.ndarray  # (n, d) float64
    m2: np.ndarray  # (n, d) float64

    def __len__(self) -> int:
        return len(self.count)

    def take(self, index: slice) -> StackedMoments:
        return StackedMoments(self.count[index], self.mean[index], self.m2[index])

    def combine(self, other: StackedMoments) -> StackedMoments:
        count = self.count + other.count
        with np.errstate(divide="ignore", invalid="ignore"):  # where count is 0: self's
            delta = other.mean - self.mean
            mean = self.mean + delta * (other.count / count)[:, None]
            m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)[:, None]
        empty = (count == 0)[:, None]
        return StackedMoments(count, np.where(empty, self.mean, mean), np.where(empty, self.m2, m2))

    def concat(self, other: StackedMoments) -> StackedMoments:
        return StackedMoments(
            np.concatenate([self.count, other.count]),
            np.concatenate([self.mean, other.mean]),
            np.concatenate([self.m2, other.m2]),
        )

    def value(self) -> Moments:
        """The one :class:`Moments` of a stack of one entry."""
        return Moments(float(self.count[0]), self.mean[0].copy(), self.m2[0].copy())
