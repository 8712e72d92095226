"""Sums whose rounded total does not depend on the order of their terms.

Every sum is kept as two float64 numbers, ``high + low`` (double-double): each term is
added to ``high`` with Knuth's TwoSum, whose rounding error is exact and goes to ``low``.
The total's error is then about ``n² · 2⁻¹⁰⁶`` of the terms' magnitude instead of
``n · 2⁻⁵³``, so the float64 total ``high + low`` comes out the same whichever order the
terms are added in and however they are grouped into blocks, unless the exact sum lies
within that tiny error of a float64 rounding boundary. The k-means|| seeding adds the
rows nearest to each candidate this way, so that the seeding does not depend on the
chunking (:mod:`dkmeans.oversampling`); :func:`dkmeans.loops.add_compensated` is the
compiled twin of :func:`two_sum`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a + b`` rounded, and its rounding error exactly (Knuth's TwoSum, elementwise)."""
    total = a + b
    b_part = total - a
    return total, (a - (total - b_part)) + (b - b_part)


@dataclass(frozen=True)
class CompensatedSums:
    """Sums kept as ``high + low`` (float64 arrays of one shape)."""

    high: np.ndarray
    low: np.ndarray

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> CompensatedSums:
        return cls(np.zeros(shape), np.zeros(shape))

    def combine(self, other: CompensatedSums) -> CompensatedSums:
        """The sums of both (elementwise)."""
        high, error = two_sum(self.high, other.high)
        return CompensatedSums(high, self.low + other.low + error)

    def total(self) -> np.ndarray:
        """The sums, rounded to float64."""
        return self.high + self.low


def segment_sums(terms: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, CompensatedSums]:
    """Compensated sums of the rows of ``terms`` (float64, ``(n, d)``) by segment.

    Returns the segments that occur (ascending) and, in the same order, the sum of each
    one's rows. The rows of a segment are added pairwise (in ``log2`` of its size
    vectorised steps), not in row order: the total is the same as the compiled loop's,
    which adds them one by one, up to the rare boundary case of the module's docstring.
    """
    order = np.argsort(segments, kind="stable")
    ids = segments[order]
    high, low = terms[order].astype(np.float64), np.zeros(terms.shape)
    first = np.searchsorted(ids, ids, side="left")
    rank = np.arange(len(ids)) - first
    size = np.searchsorted(ids, ids, side="right") - first
    stride = 1
    while stride < (size.max() if len(size) else 0):
        target = np.flatnonzero((rank % (2 * stride) == 0) & (rank + stride < size))
        source = target + stride
        high[target], error = two_sum(high[target], high[source])
        low[target] += low[source] + error
        stride *= 2
    heads = rank == 0
    return ids[heads], CompensatedSums(high[heads], low[heads])
