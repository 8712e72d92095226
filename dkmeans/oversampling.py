"""The block kernels of k-means||: oversampling rounds and the weights of the candidates.

Both measure every row against candidates: its squared distance to the nearest one of
every run (up to the row's ``||x||²``) and that candidate's index. Where the kernels run
in this process (threads), a :func:`nearest_candidates` memory keeps these per row between
passes, so that every pass measures only the candidates drawn since the last one: a
round of ten runs measures its ~200 new candidates instead of the ~1,000 drawn so far.
Elsewhere (a distributed cluster, or rows too many to remember) every pass measures all
candidates. Both give the same result: the nearest of a set is the nearest of the nearest
of its parts, and a new candidate replaces the remembered one only when strictly nearer
(ties keep the lower index, as one scan over all candidates does). Only a distance within
the GEMM's rounding of a tie or of a sampling threshold may come out the other way: BLAS
rounds a product differently for matrices of other shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import engine, kernels, loops
from .compensated import CompensatedSums, segment_sums
from .kernels import block_rows, gemm_operands, sub_block_rows
from .loops import (
    NO_COUNTS,
    CandidateCounts,
    CandidateRuns,
    Draws,
    NearestCandidates,
    StackedCentres,
    no_draws,
)
from .row_memory import RowMemory
from .statistics import PerRun
from .streams import Purpose, row_uniforms, stream_key

#: Bytes remembered per row and run: the float64 distance and the int32 index.
BYTES_PER_ROW_AND_RUN = 12


def nearest_candidates(n_runs: int) -> RowMemory:
    """Memory of every row's nearest candidate measured so far, per run.

    Per block: ``partial[i, run]``, the ``||c||² - 2 x·c`` of row ``i`` and its nearest
    candidate ``c`` (``inf`` before any), and ``index[i, run]``, that candidate's index
    within its run (-1 before any).
    """
    return RowMemory(
        lambda n_rows: (
            np.full((n_rows, n_runs), np.inf),
            np.full((n_rows, n_runs), -1, dtype=np.int32),
        )
    )


@dataclass(frozen=True)
class Candidates:
    """The candidates a pass measures, for some of the runs.

    Attributes
    ----------
    stacked : ndarray of shape (M, d)
        The candidates not measured yet of every run, stacked.
    bounds : ndarray of shape (R + 1,)
        Run ``runs[r]`` owns ``stacked[bounds[r]:bounds[r + 1]]``.
    first_index : ndarray of shape (R,)
        Index, within its run, of each run's first candidate here.
    runs : ndarray of shape (R,)
        The runs measured (columns of ``memory``).
    memory : RowMemory of :func:`nearest_candidates`, or None
        What the rows remember of the earlier candidates; None: these are all of them.
    """

    stacked: np.ndarray
    bounds: np.ndarray
    first_index: np.ndarray
    runs: np.ndarray
    memory: RowMemory | None = None

    @classmethod
    def all_of(cls, candidates: np.ndarray, bounds: np.ndarray) -> Candidates:
        """Every candidate of every run (no memory)."""
        n_runs = len(bounds) - 1
        return cls(
            np.asarray(candidates, dtype=np.float64),
            np.asarray(bounds, dtype=np.int64),
            np.zeros(n_runs, dtype=np.int64),
            np.arange(n_runs),
        )

    def nearest(
        self, block_index: int, n_rows: int, scratch_rows: int
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """The arrays a block's rows measure into: the memory of its ``n_rows``, or
        scratch of ``scratch_rows`` to fill afresh (the third item says which)."""
        if self.memory is not None:
            return (*self.memory.of_block(block_index, n_rows), False)
        shape = (scratch_rows, len(self.runs))
        return np.empty(shape), np.empty(shape, dtype=np.int32), True

    @property
    def columns(self) -> np.ndarray:
        """The column of every run in the arrays of :meth:`nearest`."""
        return np.asarray(self.runs if self.memory is not None else np.arange(len(self.runs)))


def _measure_numpy(x, candidates: Candidates, nearest, index) -> None:
    """NumPy twin of :func:`~dkmeans.loops.measure_candidates`, over a whole block."""
    _, centers_gemm, centers_sq = gemm_operands(x, candidates.stacked)
    bounds, columns = candidates.bounds, candidates.columns
    for rows in kernels._sub_blocks(len(x), sub_block_rows(len(centers_sq), x.shape[1])):
        xs = np.ascontiguousarray(x[rows], dtype=centers_gemm.dtype)
        partial = (centers_gemm @ xs.T).T.astype(np.float64) + centers_sq
        for r, column in enumerate(columns):
            lo, hi = bounds[r], bounds[r + 1]
            if hi == lo:
                continue
            best = partial[:, lo:hi].argmin(axis=1)
            value = partial[np.arange(len(xs)), lo + best]
            nearer = value < nearest[rows, column]
            nearest[rows, column] = np.where(nearer, value, nearest[rows, column])
            index[rows, column] = np.where(
                nearer, candidates.first_index[r] + best, index[rows, column]
            )


def _masses_numpy(x, weights, block_index: int, candidates: Candidates):
    """The rows' weights, and per row and run the mass ``w * d²`` to the nearest
    candidate and that candidate's index within its run."""
    nearest, index, fresh = candidates.nearest(block_index, len(x), len(x))
    if fresh:
        nearest[:], index[:] = np.inf, -1
    _measure_numpy(x, candidates, nearest, index)
    columns = candidates.columns
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    x_sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        squared = np.maximum(nearest[:, columns] + x_sq[:, None], 0)
        mass = np.where(w[:, None] > 0, w[:, None] * squared, 0.0)
    return w, mass, index[:, columns]


def _row_order_sums(mass: np.ndarray) -> np.ndarray:
    """Column sums added in row order, like the compiled loop."""
    return np.cumsum(mass, axis=0)[-1] if len(mass) else np.zeros(mass.shape[1])


def _measure_block(
    x: np.ndarray,
    weights: np.ndarray | None,
    block_index: int,
    candidates: Candidates,
    cost: np.ndarray,
    *,
    counts: CandidateCounts | None = None,
    draws: Draws | None = None,
) -> bool:
    """:func:`~dkmeans.loops.measure_block` on a block: arguments prepared, scratch made."""
    dtype, centers_gemm, centers_sq = gemm_operands(x, candidates.stacked)
    step = sub_block_rows(len(candidates.stacked), x.shape[1])
    nearest, index, fresh = candidates.nearest(block_index, len(x), min(step, len(x)))
    return loops.measure_block(
        block=block_rows(x, weights, None, dtype),
        centres=StackedCentres(
            gemm=centers_gemm,
            squared_norms=centers_sq,
            exact=candidates.stacked,
            bounds=candidates.bounds,
        ),
        runs=CandidateRuns(first_index=candidates.first_index, columns=candidates.columns),
        nearest=NearestCandidates(partial=nearest, index=index),
        fresh=fresh,
        cost=cost,
        counts=NO_COUNTS if counts is None else counts,
        draws=no_draws() if draws is None else draws,
        step=step,
        by_centers=kernels.gemm_by_centers(
            len(centers_sq), x.shape[1], dtype, len(candidates.bounds) - 1
        ),
    )


@dataclass(frozen=True)
class Oversample:
    """One k-means|| round of one run: its cost and the rows it may keep.

    A row is kept when ``key = l * w * d² / u >= cost`` with ``u`` uniform on (0, 1],
    i.e. with probability ``min(1, l * w * d² / cost)``. ``cost`` only grows as
    partial results are combined, so rows below the partial cost can be dropped at
    every level of the tree: the root holds about ``l`` rows whatever the fan-in.
    """

    cost: float
    keys: np.ndarray  # (m,)
    index: np.ndarray  # (m,)
    rows: np.ndarray  # (m, d) float64

    def kept(self) -> Oversample:
        keep = self.keys >= self.cost if self.cost > 0 else np.zeros(len(self.keys), bool)
        order = np.argsort(self.index[keep], kind="stable")
        return Oversample(
            self.cost, self.keys[keep][order], self.index[keep][order], self.rows[keep][order]
        )

    def combine(self, other: Oversample) -> Oversample:
        return Oversample(
            self.cost + other.cost,
            np.concatenate([self.keys, other.keys]),
            np.concatenate([self.index, other.index]),
            np.concatenate([self.rows, other.rows]),
        ).kept()


def oversample(
    x: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    block_index: int,
    candidates: Candidates,
    oversampling: np.ndarray,
    seeds: np.ndarray,
    round_index: int,
) -> PerRun:
    """One k-means|| round for some runs: their cost under the candidates, new draws.

    Parameters
    ----------
    x : ndarray of shape (rows, d)
    weights : ndarray of shape (rows,) or None
    row_offset, block_index : int
        Global index of the first row; position of the block (its memory).
    candidates : Candidates
        The candidates of the runs not measured yet.
    oversampling : ndarray of shape (R,)
        Expected number of draws per round ``l`` of every run.
    seeds : ndarray of shape (R,)
        Seed of every run.
    round_index : int

    Returns
    -------
    PerRun of Oversample
    """
    streams = np.array(
        [stream_key(int(seed), Purpose.OVERSAMPLE, round_index) for seed in seeds],
        dtype=np.uint64,
    )
    oversampling = np.asarray(oversampling, dtype=np.float64)
    block_round = _oversample_compiled if engine.current() == "numba" else _oversample_numpy
    cost, kept = block_round(x, weights, row_offset, block_index, candidates, oversampling, streams)
    return PerRun(
        Oversample(
            float(cost[r]), keys, row_offset + rows, np.asarray(x[rows], dtype=np.float64)
        ).kept()
        for r, (rows, keys) in enumerate(kept)
    )


def _oversample_numpy(x, weights, row_offset, block_index, candidates, oversampling, streams):
    """NumPy twin of a round of :func:`~dkmeans.loops.measure_block`: per run, the block's cost
    and the block-local rows (with their keys) that may be kept."""
    _, mass, _ = _masses_numpy(x, weights, block_index, candidates)
    cost, kept = _row_order_sums(mass), []
    for r, stream in enumerate(streams):
        keys = oversampling[r] * mass[:, r] / row_uniforms(stream, row_offset, len(x))
        rows = np.flatnonzero((mass[:, r] > 0) & (keys >= cost[r]))
        kept.append((rows, keys[rows]))
    return cost, kept


def _oversample_compiled(x, weights, row_offset, block_index, candidates, oversampling, streams):
    """A round of :func:`~dkmeans.loops.measure_block`, with more slots if the first ones overflow
    (measuring again is harmless: the nearest of the same candidates does not change)."""
    n_runs = len(streams)
    # a run keeps about l rows per round in all; the slots overflow only by bad luck
    for capacity in (min(len(x), int(4 * oversampling.max(initial=0)) + 64), len(x)):
        cost = np.zeros(n_runs)
        draws = Draws(
            oversampling=oversampling,
            streams=streams,
            first_row=row_offset,
            kept_rows=np.empty((n_runs, capacity), dtype=np.int64),
            kept_keys=np.empty((n_runs, capacity)),
            n_kept=np.zeros(n_runs, dtype=np.int64),
        )
        if _measure_block(x, weights, block_index, candidates, cost, draws=draws):
            break
    kept = [
        (draws.kept_rows[r, : draws.n_kept[r]], draws.kept_keys[r, : draws.n_kept[r]])
        for r in range(n_runs)
    ]
    return cost, kept


@dataclass(frozen=True)
class CandidateWeights:
    """Per candidate, the weight of the rows nearest to it and their weighted sum, and
    every run's cost.

    Only the candidates nearest to some row are kept (``nearest``, ascending indices
    into the runs' stacked candidates), so that a block's result is no larger than its
    rows, however many candidates there are. ``sums`` holds, per kept candidate, the
    weighted sum of those rows and, in its last column, their weight. It is compensated
    (:mod:`dkmeans.compensated`), so that it does not depend on the blocks' order or
    sizes: the seeding is the same for any chunking.
    """

    nearest: np.ndarray  # (m,) int64
    sums: CompensatedSums  # (m, d + 1)
    n_candidates: int
    costs: np.ndarray  # (R,)

    def combine(self, other: CandidateWeights) -> CandidateWeights:
        nearest = np.union1d(self.nearest, other.nearest)
        sums = self.spread_to(nearest).combine(other.spread_to(nearest))
        return CandidateWeights(nearest, sums, self.n_candidates, self.costs + other.costs)

    def spread_to(self, nearest: np.ndarray) -> CompensatedSums:
        """The sums at the rows of ``nearest`` (a superset of ``self.nearest``), zero
        elsewhere."""
        if len(nearest) == len(self.nearest):  # the same candidates: no copy
            return self.sums
        at = np.searchsorted(nearest, self.nearest)
        spread = CompensatedSums.zeros((len(nearest), self.sums.high.shape[1]))
        spread.high[at], spread.low[at] = self.sums.high, self.sums.low
        return spread

    def totals(self) -> np.ndarray:
        """Per candidate, the weighted sum of the rows nearest to it and, in the last
        column, their weight (zero for a candidate nearest to none)."""
        totals = np.zeros((self.n_candidates, self.sums.high.shape[1]))
        totals[self.nearest] = self.sums.total()
        return totals


def weigh_candidates(
    x: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    block_index: int,
    candidates: Candidates,
    sizes: np.ndarray,
) -> CandidateWeights:
    """Total weight of the rows nearest to every candidate, per run, their weighted sum
    (the rows as the source shows them), and the runs' costs.

    ``sizes[r]`` is the number of all candidates of run ``r`` (measured earlier or now);
    the candidates of run ``r`` are rows ``offsets[r]:offsets[r + 1]`` of the result's
    sums, with ``offsets`` the cumulative sizes.
    """
    del row_offset
    count_bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_candidates, n_columns = int(count_bounds[-1]), x.shape[1] + 1
    if engine.current() == "numba":
        cost = np.zeros(len(sizes))
        # zero pages cost no memory until written: only the rows of touched candidates do
        high, low = np.zeros((n_candidates, n_columns)), np.zeros((n_candidates, n_columns))
        _measure_block(
            x,
            weights,
            block_index,
            candidates,
            cost,
            counts=CandidateCounts(high=high, low=low, edges=count_bounds),
        )
        nearest = np.flatnonzero(high[:, -1] > 0)
        sums = CompensatedSums(high[nearest], low[nearest])
        return CandidateWeights(nearest, sums, n_candidates, cost)
    w, mass, index = _masses_numpy(x, weights, block_index, candidates)
    terms, segments = [np.zeros((0, n_columns))], [np.zeros(0, dtype=np.int64)]
    for r in range(len(sizes)):
        rows = (w > 0) & (index[:, r] >= 0)
        weighted = np.empty((np.count_nonzero(rows), n_columns))
        weighted[:, :-1] = w[rows, None] * np.asarray(x[rows], dtype=np.float64)
        weighted[:, -1] = w[rows]
        terms.append(weighted)
        segments.append(count_bounds[r] + index[rows, r])
    nearest, sums = segment_sums(np.concatenate(terms), np.concatenate(segments))
    return CandidateWeights(nearest, sums, n_candidates, _row_order_sums(mass))
