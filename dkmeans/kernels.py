"""Kernels on one block of rows: NumPy, with the per-row loops compiled by numba when
it is installed (the ``fast`` extra) and a vectorised NumPy twin of each otherwise.

Everything here takes one in-memory block of samples (rows x features) and returns
small statistics whose size does not depend on the number of rows. Nothing here
knows about Dask: the graph layer maps these kernels over blocks and combines their
results in a tree with the ``combine`` methods.

Several independent runs (``n_init`` restarts, or the different k of an elbow) are
handled at once: their centres are stacked into one ``(K, d)`` array and
``bounds`` (length ``R + 1``) marks where each run's centres start and end. One
GEMM per row sub-block serves every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from .graph import RowMemory

#: Elements (rows x (centres + features)) of one row sub-block. Chosen by measurement
#: (250,000 x 32 float32 rows, k=16, one thread, 2-core EPYC with 1 MiB L2 per core):
#: 2**18 (5461 rows) took 6.9 ms per block against 7.3 ms with 2**16 and 8.3 with 2**14;
#: at d=2 and at k=256 the size made no difference.
SUB_BLOCK_ELEMENTS = 1 << 18

#: The NumPy fallback sums clusters with a one-hot GEMM up to this many centres per run
#: and with one ``np.bincount`` per feature above (measured crossover near k = 64).
ONE_HOT_MAX_CLUSTERS = 64

try:
    import numba
except ImportError:  # numba is the optional ``fast`` extra
    numba = None

#: Run the fused per-row loops compiled by numba (when installed) rather than the
#: vectorised NumPy fallback: 3x faster per block at d=32, k=16 (benchmarks/compare.py).
USE_NUMBA = numba is not None


#: Fewest rows per sub-block: with a thousand centres (ten k-means|| runs), GEMMs of 64
#: rows ran 21% slower than of 256 or more (250,000 x 32 rows, 1000 centres: 441 -> 364 ms).
MIN_SUB_BLOCK_ROWS = 256


def sub_block_rows(n_centers: int, n_features: int) -> int:
    """Rows per sub-block so that its distance matrix and data stay in cache."""
    rows = SUB_BLOCK_ELEMENTS // max(n_centers + n_features, 1)
    return int(np.clip(rows, MIN_SUB_BLOCK_ROWS, 16384))


def _sub_blocks(n_rows: int, step: int) -> Iterator[slice]:
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


#: Float32 data is multiplied with float64 copies of the centres once a centre
#: coordinate exceeds this: ``x·c`` and ``||c||²`` could overflow float32 (3.4e38).
FLOAT32_GEMM_MAX_CENTER = 1e15


def _float_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _gemm_dtype(x: np.ndarray, centers: np.ndarray) -> np.dtype:
    """The data's float dtype, or float64 when the centres are too large for float32."""
    dtype = _float_dtype(x)
    if dtype == np.float32 and centers.size and np.abs(centers).max() > FLOAT32_GEMM_MAX_CENTER:
        return np.dtype(np.float64)
    return dtype


def partial_distances(x: np.ndarray, centers: np.ndarray, centers_sq: np.ndarray) -> np.ndarray:
    """``||c||² - 2 x·c`` for a sub-block: squared distances up to the per-row ``||x||²``.

    Parameters
    ----------
    x : ndarray of shape (rows, d)
    centers : ndarray of shape (K, d), same dtype as ``x``
    centers_sq : ndarray of shape (K,), squared norms of ``centers``

    Returns
    -------
    ndarray of shape (rows, K), dtype of ``x``
    """
    out = x @ centers.T
    out *= -2
    out += centers_sq
    return out


def cluster_sums(
    x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, n_clusters: int
) -> np.ndarray:
    """Per-cluster (weighted) sums of rows in float64, shape (n_clusters, d).

    A one-hot GEMM for few clusters, one weighted ``np.bincount`` per feature for many.
    """
    x64 = np.asarray(x, dtype=np.float64)
    if n_clusters <= ONE_HOT_MAX_CLUSTERS:
        one_hot = np.zeros((len(x), n_clusters))
        one_hot[np.arange(len(x)), labels] = 1.0 if weights is None else weights
        return one_hot.T @ x64
    out = np.empty((n_clusters, x.shape[1]))
    for feature in range(x.shape[1]):
        column = x64[:, feature] if weights is None else x64[:, feature] * weights
        out[:, feature] = np.bincount(labels, weights=column, minlength=n_clusters)
    return out


class StackedCentres(NamedTuple):
    """The stacked centres of several runs, as the compiled loops read them (inputs).

    ``gemm`` and ``squared_norms`` come from :func:`gemm_operands`.
    """

    gemm: np.ndarray  # (K, d) -2 * centres in the GEMM dtype, C-contiguous
    squared_norms: np.ndarray  # (K,) ||c||² as rounded to the GEMM dtype
    exact: np.ndarray  # (K, d) float64
    bounds: np.ndarray  # (R + 1,) int64: run r owns [bounds[r], bounds[r + 1])


class BlockRows(NamedTuple):
    """One block's rows (inputs)."""

    x: np.ndarray  # (n, d) in the GEMM dtype, C-contiguous
    weights: np.ndarray | None  # (n,) float64; None: all ones (compiled out)
    shift: np.ndarray | None  # (d,) in x's dtype: rows seen minus it; None: as stored


class RowResults(NamedTuple):
    """Per row and run: the nearest centre within the run and the squared distance to it
    (outputs; with a :class:`Screen`, also the last pass's results as inputs)."""

    labels: np.ndarray  # (n, R) int64
    distances: np.ndarray  # (n, R) float64


class Totals(NamedTuple):
    """Per stacked centre, added to: weighted sums of its rows, their weight, inertia."""

    sums: np.ndarray  # (K, d) float64
    counts: np.ndarray  # (K,) float64
    inertia: np.ndarray  # (K,) float64


class FarSlots(NamedTuple):
    """Per run, the ``capacity`` rows farthest from their centre seen so far, as
    block-local row, label and distance; row -1 marks an empty slot (in and out)."""

    distances: np.ndarray  # (R, capacity) float64
    rows: np.ndarray  # (R, capacity) int64
    labels: np.ndarray  # (R, capacity) int64
    worst: np.ndarray  # (R,) smallest distance among the run's slots


class MomentSums(NamedTuple):
    """Per-feature count, mean and sum of squared deviations so far (in and out)."""

    count: np.ndarray  # (1,) float64
    mean: np.ndarray  # (d,) float64
    m2: np.ndarray  # (d,) float64


class PassOutputs(NamedTuple):
    """What one compiled pass over a block fills in; a member of None is compiled out."""

    per_row: RowResults | None
    totals: Totals | None
    far: FarSlots | None
    moments: MomentSums | None


class Screen(NamedTuple):
    """Hamerly's bounds of a pass (:meth:`DistanceBounds.screen`; see :func:`_screen_loop`)."""

    lower: np.ndarray  # (n, R) lower bound on the distance to every other centre, updated
    drift: np.ndarray  # (K,) distance every centre moved since the last pass
    max_drift: np.ndarray  # (R,) the largest drift of every run
    centers_norm: np.ndarray  # (K,) ||c||
    max_sq: np.ndarray  # (R,) the largest ||c||² of every run
    eps: float  # relative rounding of a GEMM value, with room to spare


class Scan(NamedTuple):
    """Scratch of one sub-block's rows: best value and index, second value, ``||x||²``."""

    best_value: np.ndarray
    best_index: np.ndarray  # int64
    second: np.ndarray
    x_sq: np.ndarray  # float64


@dataclass
class _Accumulator:
    """Per-block outputs of the assignment: per-row results, per-centre sums, far points.

    ``labels`` and ``distances`` have no rows when the compiled kernel tracks the far
    points itself (``far``, see :class:`FarSlots`).
    """

    labels: np.ndarray  # (rows, R) int64
    distances: np.ndarray  # (rows, R) float64
    totals: Totals
    far: FarSlots

    @property
    def sums(self) -> np.ndarray:
        return self.totals.sums

    @property
    def counts(self) -> np.ndarray:
        return self.totals.counts

    @property
    def inertia(self) -> np.ndarray:
        return self.totals.inertia

    @property
    def per_row(self) -> RowResults:
        return RowResults(labels=self.labels, distances=self.distances)

    @classmethod
    def empty(
        cls, n_rows: int, n_runs: int, n_centers: int, n_features: int, far_capacity: int
    ) -> _Accumulator:
        return cls(
            labels=np.empty((n_rows, n_runs), dtype=np.int64),
            distances=np.empty((n_rows, n_runs)),
            totals=Totals(
                sums=np.zeros((n_centers, n_features)),
                counts=np.zeros(n_centers),
                inertia=np.zeros(n_centers),
            ),
            far=FarSlots(
                distances=np.full((n_runs, far_capacity), -np.inf),
                rows=np.full((n_runs, far_capacity), -1, dtype=np.int64),
                labels=np.zeros((n_runs, far_capacity), dtype=np.int64),
                worst=np.full(n_runs, -np.inf),
            ),
        )

    def far_points(
        self,
        x: np.ndarray,
        weights: np.ndarray | None,
        row_offset: int,
        run: int,
        capacity: int,
        shift: np.ndarray | None = None,
    ) -> FarPoints:
        """The run's far points, from the tracked slots or from the per-row results; their
        rows in the frame of ``shift`` (:mod:`dkmeans.frame`)."""
        if capacity == 0 or self.far.rows.shape[1]:  # from the slots (if any)
            filled = self.far.rows[run] >= 0
            rows = self.far.rows[run, filled]
            distances, labels = self.far.distances[run, filled], self.far.labels[run, filled]
            x, weights = x[rows], None if weights is None else weights[rows]
        else:  # select picks its few rows itself: no copy of the block
            rows = np.arange(len(x))
            distances, labels = self.distances[:, run], self.labels[:, run]
        w = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
        far = FarPoints.select(x, distances, labels, w, row_offset + rows, capacity)
        return far if shift is None else replace(far, rows=far.rows - shift)


def _assign_numpy(
    xs: np.ndarray,
    weights: np.ndarray,
    partial: np.ndarray,
    centres: StackedCentres,
    per_row: RowResults,
    totals: Totals | None,
) -> None:
    """Vectorised NumPy twin of :func:`_nearest_loop` and :func:`_accumulate_loop`
    without far-point slots (the caller selects far points from the per-row results);
    ``partial`` is ``-2 x·c`` of the sub-block, rows by centres, added to here."""
    bounds = centres.bounds
    partial += centres.squared_norms
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        best = partial[:, lo:hi].argmin(axis=1)
        diff = xs - centres.exact[lo + best]
        squared = np.einsum("ij,ij->i", diff, diff)
        per_row.labels[:, r] = best
        per_row.distances[:, r] = squared
        if totals is not None:
            totals.counts[lo:hi] += np.bincount(best, weights=weights, minlength=hi - lo)
            totals.inertia[lo:hi] += np.bincount(best, weights=weights * squared, minlength=hi - lo)
            totals.sums[lo:hi] += cluster_sums(xs, best, weights, hi - lo)


def gemm_by_centers(n_centers: int, n_features: int, dtype: np.dtype) -> bool:
    """Whether a sub-block's GEMM is laid out centres by rows, and scanned along the rows
    (:func:`_argmin_rows_loop`), rather than rows by centres and scanned row by row
    (:func:`_argmin_per_row_loop`). Both give the same nearest centres.

    By centres, the scan is vectorised and never mispredicts, but OpenBLAS's sgemm runs
    slower for few centres against rows of 16 to 64 float32 features (2.5x for 10
    centres and d=32, one thread). Measured over whole passes (250,000 rows, one
    thread), rows by centres won only there, by up to 1.8x (d=32), against up
    to 2.3x for centres by rows at d=2, 1.4x at k=32 and d=8, 1.2x for float64 at
    d=64, and 1.3x for ten runs of ten centres at d=32 (``python -m benchmarks.layouts``).
    """
    narrow_gemm = np.dtype(dtype) == np.float32 and 16 <= n_features <= 64
    return not (narrow_gemm and n_centers < min(32, n_features))


def _sub_block_gemm(partial, centers_gemm, xs, by_centers):
    """``-2 c·x`` of a sub-block into the flat buffer ``partial``: centres by rows with
    ``by_centers``, else rows by centres (see :func:`gemm_by_centers`)."""
    n_rows, n_centers = xs.shape[0], centers_gemm.shape[0]
    if by_centers:
        out = partial[: n_centers * n_rows].reshape((n_centers, n_rows))
        np.dot(centers_gemm, xs.T, out)
    else:
        out = partial[: n_rows * n_centers].reshape((n_rows, n_centers))
        np.dot(xs, centers_gemm.T, out)
    return out


def _rows_of(values, start, stop):
    """``values[start:stop]``, or None for None."""
    return None if values is None else values[start:stop]


def _weight_of(weights, i):
    """Weight of row ``i``: 1 for weights of None."""
    return 1.0 if weights is None else weights[i]


def _per_row_of(per_row, start, stop):
    """The :class:`RowResults` of rows ``start:stop``, or None for None."""
    if per_row is None:
        return None
    return RowResults(labels=per_row.labels[start:stop], distances=per_row.distances[start:stop])


def _shifted_rows(x, start, stop, shift, buffer):
    """Rows ``start:stop`` of ``x``, minus ``shift`` (copied into ``buffer``, which stays
    in cache) unless ``shift`` is None."""
    if shift is None:
        return x[start:stop]
    for i in range(stop - start):
        for f in range(x.shape[1]):
            buffer[i, f] = x[start + i, f] - shift[f]
    return buffer[: stop - start]


def _argmin_per_row_loop(partial, centers_sq, lo, hi, best_value, best_index):
    """:func:`_argmin_rows_loop` (without the second value) of ``partial[i, j]``, rows by
    centres: a scan along every row's centres, which costs less for few centres than
    the slower GEMM by centres saves."""
    for i in range(partial.shape[0]):
        # unsigned indices: numba drops its negative-index check (1.7 vs 2.6 ms)
        best, stop = np.uint64(lo), np.uint64(hi)
        value_of_best = partial[i, best] + centers_sq[best]
        for j in range(best + np.uint64(1), stop):
            value = partial[i, j] + centers_sq[j]
            if value < value_of_best:
                best, value_of_best = j, value
        best_value[i] = value_of_best
        best_index[i] = np.int64(best) - lo


def _fold_candidate(value, index, runner_up, candidate, position):
    """One centre's ``candidate`` value at ``position`` folded into a row's best
    ``value`` and ``index`` and its second best ``runner_up``."""
    runner_up = min(runner_up, max(candidate, value))
    nearer = candidate < value
    return (candidate if nearer else value), (position if nearer else index), runner_up


def _argmin_rows_loop(partial_t, centers_sq, lo, hi, best_value, best_index, second):
    """Per row ``i`` (a column of ``partial_t``, which holds ``-2 c_j·x_i`` by centres
    and rows): the first ``j`` in ``[lo, hi)`` with the smallest
    ``partial_t[j, i] + centers_sq[j]``, as ``best_index[i] = j - lo`` and that value in
    ``best_value[i]``; with ``second`` (None: compiled out), the second smallest value
    (``inf`` for one centre).

    The loops run along the rows, vectorised and without branches: a scan along every
    row's centres, branching on each better one, mispredicts on fresh rows (ten runs of
    20 candidates over a 250,000 x 32 block: 40 against 13 ms). Each sweep over the rows
    folds in four centres, in order, so that a row's best is loaded and stored once per
    four (the scan alone ran 1.5-1.7x faster than one centre per sweep, a k-means||
    round of ten runs 5% faster). Ties keep the lowest index: a centre
    replaces the best only when strictly nearer.
    """
    n_rows = partial_t.shape[1]
    for i in range(n_rows):
        best_value[i] = partial_t[lo, i] + centers_sq[lo]
        best_index[i] = 0
        if second is not None:
            second[i] = np.inf
    j = lo + 1
    while j < hi:
        four = j + 4 <= hi  # else the last few centres, one per sweep
        last = j + 3 if four else j
        c0, c1 = centers_sq[j], centers_sq[min(j + 1, last)]
        c2, c3 = centers_sq[min(j + 2, last)], centers_sq[last]
        position = j - lo
        for i in range(n_rows):
            value, index = best_value[i], best_index[i]
            runner_up = np.inf if second is None else second[i]
            value, index, runner_up = _fold_candidate_compiled(
                value, index, runner_up, partial_t[j, i] + c0, position
            )
            if four:
                value, index, runner_up = _fold_candidate_compiled(
                    value, index, runner_up, partial_t[j + 1, i] + c1, position + 1
                )
                value, index, runner_up = _fold_candidate_compiled(
                    value, index, runner_up, partial_t[j + 2, i] + c2, position + 2
                )
                value, index, runner_up = _fold_candidate_compiled(
                    value, index, runner_up, partial_t[j + 3, i] + c3, position + 3
                )
            best_value[i], best_index[i] = value, index
            if second is not None:
                second[i] = runner_up
        j = last + 1


def _nearest_loop(partial, by_centers, centres, nearest, scan):
    """Nearest centre of every row of a sub-block, per run, from the GEMM of
    :func:`_sub_block_gemm` (no norms of the rows).

    ``nearest[i, r]`` receives the index into the stacked centres (ties: the lowest).
    A loop of its own, apart from the accumulation: fused with it, the pass ran 20%
    slower (250,000 x 32 float32 rows, k=16, one thread: 8.4 against 6.9-7.2 ms per block).
    """
    bounds = centres.bounds
    n_rows = partial.shape[1] if by_centers else partial.shape[0]
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        if by_centers:
            _argmin_rows_compiled(
                partial_t=partial,
                centers_sq=centres.squared_norms,
                lo=lo,
                hi=hi,
                best_value=scan.best_value,
                best_index=scan.best_index,
                second=None,
            )
        else:
            _argmin_per_row_compiled(
                partial=partial,
                centers_sq=centres.squared_norms,
                lo=lo,
                hi=hi,
                best_value=scan.best_value,
                best_index=scan.best_index,
            )
        for i in range(n_rows):
            nearest[i, r] = lo + scan.best_index[i]


def _screen_loop(start, stop, bounds, last, screen, nearest, gathered):
    """The rows of a sub-block whose nearest centre may have changed since the last pass.

    Hamerly's bounds (SIAM SDM 2010), per row and run: since the last pass the distance
    to the row's own centre grew by at most that centre's drift, and to every other
    centre shrank by at most the run's largest drift. A run keeps the row's centre
    (written to ``nearest``) when the two bounds are further apart than the rounding of
    the GEMM could hide, so the full scan would choose the same centre; the positions of
    the other rows go into ``gathered``. Returns how many. ``last`` (:class:`RowResults`)
    holds the last pass's centres and exact squared distances of the rows; ``screen``
    (:class:`Screen`) the lower bounds, updated here.
    """
    lower = screen.lower
    n_gathered = 0
    for i in range(start, stop):
        gather = False
        for r in range(len(bounds) - 1):
            lower[i, r] -= screen.max_drift[r]
            if last.labels[i, r] < 0:  # never measured
                gather = True
                continue
            own = bounds[r] + last.labels[i, r]
            upper = np.sqrt(last.distances[i, r]) + screen.drift[own]
            norm = screen.centers_norm[own] + upper  # bounds ||x||
            slack = screen.eps * (norm * norm + screen.max_sq[r])
            if lower[i, r] > 0 and upper * upper + 2 * slack < lower[i, r] * lower[i, r]:
                nearest[i - start, r] = own
            else:
                gather = True
        if gather:
            gathered[n_gathered] = i
            n_gathered += 1
    return n_gathered


def _nearest_two_loop(xs, partial_t, centres, gathered, start, nearest, screen, scan):
    """Nearest centre of the gathered rows (ties: the lowest index, as
    :func:`_nearest_loop`), and a lower bound on the distance to every other centre.
    Column ``g`` of ``partial_t`` belongs to row ``gathered[g]`` of the block, which is
    row ``gathered[g] - start`` of the sub-block ``xs``."""
    bounds, x_sq = centres.bounds, scan.x_sq
    n_features = xs.shape[1]
    for g in range(len(gathered)):
        row_sq = 0.0
        for f in range(n_features):
            value = np.float64(xs[gathered[g] - start, f])
            row_sq += value * value
        x_sq[g] = row_sq
    for r in range(len(bounds) - 1):
        _argmin_rows_compiled(
            partial_t=partial_t,
            centers_sq=centres.squared_norms,
            lo=bounds[r],
            hi=bounds[r + 1],
            best_value=scan.best_value,
            best_index=scan.best_index,
            second=scan.second,
        )
        for g in range(len(gathered)):
            i = gathered[g]
            nearest[i - start, r] = bounds[r] + scan.best_index[g]
            slack = screen.eps * (x_sq[g] + screen.max_sq[r])
            screen.lower[i, r] = np.sqrt(max(np.float64(scan.second[g]) + x_sq[g] - slack, 0.0))


def _accumulate_loop(xs, weights, nearest, centres, first_row, per_row, totals, far):
    """Distances to the nearest centres and per-centre sums of a sub-block, compiled by
    numba: one read of every row.

    Arguments that are None are compiled out: ``weights`` (all ones), ``per_row``
    (:class:`RowResults`), ``totals`` (:class:`Totals`), ``far`` (:class:`FarSlots`: the
    farthest rows of weight > 0 are kept in its slots, as block rows ``first_row + i``).
    """
    n_rows, n_features = xs.shape
    bounds, centers64 = centres.bounds, centres.exact
    for i in range(n_rows):
        w = 1.0 if weights is None else weights[i]
        for r in range(len(bounds) - 1):
            best = nearest[i, r]  # unsigned: no negative-index checks
            squared = 0.0
            if totals is None:
                for f in range(n_features):
                    diff = np.float64(xs[i, f]) - centers64[best, f]
                    squared += diff * diff
            else:  # one read of the row for the distance and the sums
                for f in range(n_features):
                    value = np.float64(xs[i, f])
                    diff = value - centers64[best, f]
                    squared += diff * diff
                    totals.sums[best, f] += w * value
                totals.counts[best] += w
                totals.inertia[best] += w * squared
            label = np.int64(best) - bounds[r]
            if per_row is not None:
                per_row.labels[i, r] = label
                per_row.distances[i, r] = squared
            if far is not None:
                if w > 0 and squared > far.worst[r]:
                    _keep_far_compiled(
                        far=far, run=r, squared=squared, row=first_row + i, label=label
                    )


def _keep_far_loop(far, run, squared, row, label):
    """Put a row into the run's worst far-point slot (the nearest, then the latest
    row): called for rows strictly farther than that slot, so ties keep the earlier
    row, as :meth:`FarPoints.select` does."""
    worst = 0
    for slot in range(1, far.distances.shape[1]):
        d, d_worst = far.distances[run, slot], far.distances[run, worst]
        if d < d_worst or (d == d_worst and far.rows[run, slot] > far.rows[run, worst]):
            worst = slot
    far.distances[run, worst] = squared
    far.rows[run, worst] = row
    far.labels[run, worst] = label
    far.worst[run] = far.distances[run].min()


def _merge_moments_loop(xs, moments):
    """Merge the per-feature moments of ``xs`` into ``moments`` (:class:`MomentSums`) in
    place; None is compiled out.

    Two passes over the (cached) sub-block, then Chan et al.'s pairwise update.
    """
    if moments is None:
        return
    n_rows, n_features = xs.shape
    if n_rows == 0:
        return
    count, mean, m2 = moments.count, moments.mean, moments.m2
    local_mean = np.zeros(n_features)
    for i in range(n_rows):
        for f in range(n_features):
            local_mean[f] += xs[i, f]
    local_mean /= n_rows
    local_m2 = np.zeros(n_features)
    for i in range(n_rows):
        for f in range(n_features):
            centred = xs[i, f] - local_mean[f]
            local_m2[f] += centred * centred
    total = count[0] + n_rows
    for f in range(n_features):
        delta = local_mean[f] - mean[f]
        mean[f] += delta * (n_rows / total)
        m2[f] += local_m2[f] + delta * delta * (count[0] * n_rows / total)
    count[0] = total


def _merge_moments_numpy(xs: np.ndarray, moments: MomentSums) -> None:
    """NumPy twin of :func:`_merge_moments_loop`."""
    count, mean, m2 = moments
    merged = Moments(count[0], mean.copy(), m2.copy()).combine(Moments.of(xs))
    count[0], mean[:], m2[:] = merged.count, merged.mean, merged.m2


def _assign_block_loop(block, centres, out, screen, step, by_centers):
    """The whole block in one compiled call: GEMM per sub-block, then the fused scan.

    Runs without the GIL from start to end (numba's ``np.dot`` calls BLAS), so the
    threads of a Dask worker never wait on each other between sub-blocks. ``block``
    (:class:`BlockRows`) and ``centres`` (:class:`StackedCentres`) are read, ``out``
    (:class:`PassOutputs`) filled in. With ``screen`` (:class:`Screen`, see
    :func:`_screen_loop`), only the rows whose centre may have changed go through the
    GEMM and the scan (all rows of a sub-block where a quarter may have);
    ``out.per_row`` then holds the rows' results of the last pass, and receives this
    pass's. Without, ``by_centers`` chooses the GEMM's layout (:func:`gemm_by_centers`).
    With ``block.shift``, every sub-block is first copied minus the shift
    (:mod:`dkmeans.frame`) into a buffer that stays in cache, and everything is
    computed from that copy.
    """
    x, bounds = block.x, centres.bounds
    n_rows, n_features = x.shape
    n_centers, rows = centres.gemm.shape[0], min(step, n_rows)
    partial = np.empty(rows * n_centers, dtype=x.dtype)
    nearest = np.empty((rows, len(bounds) - 1), dtype=np.uint64)
    screened = 0 if screen is None else rows
    # best value and index of every row; with bounds, also its second best and ||x||²
    scan = Scan(
        best_value=np.empty(rows, dtype=x.dtype),
        best_index=np.empty(rows, dtype=np.int64),
        second=np.empty(screened, dtype=x.dtype),
        x_sq=np.empty(screened),
    )
    xg = np.empty((screened, n_features), dtype=x.dtype)
    gathered = np.empty(screened, dtype=np.int64)
    moved = np.empty((0 if block.shift is None else rows, n_features), dtype=x.dtype)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        block_nearest = nearest[: stop - start]
        xs = _shifted_rows_compiled(x=x, start=start, stop=stop, shift=block.shift, buffer=moved)
        if screen is None:
            block_partial = _sub_block_gemm_compiled(
                partial=partial, centers_gemm=centres.gemm, xs=xs, by_centers=by_centers
            )
            _nearest_compiled(
                partial=block_partial,
                by_centers=by_centers,
                centres=centres,
                nearest=block_nearest,
                scan=scan,
            )
        else:
            n = _screen_compiled(
                start=start,
                stop=stop,
                bounds=bounds,
                last=out.per_row,
                screen=screen,
                nearest=block_nearest,
                gathered=gathered,
            )
            # few rows: the GEMM of a copy of them; most: all rows, as without bounds
            if 4 * n < stop - start:
                for g in range(n):
                    xg[g] = xs[gathered[g] - start]
                partial_t = _sub_block_gemm_compiled(
                    partial=partial, centers_gemm=centres.gemm, xs=xg[:n], by_centers=True
                )
            else:
                n = stop - start
                gathered[:n] = np.arange(start, stop)
                partial_t = _sub_block_gemm_compiled(
                    partial=partial, centers_gemm=centres.gemm, xs=xs, by_centers=True
                )
            _nearest_two_compiled(
                xs=xs,
                partial_t=partial_t,
                centres=centres,
                gathered=gathered[:n],
                start=start,
                nearest=block_nearest,
                screen=screen,
                scan=scan,
            )
        _accumulate_compiled(
            xs=xs,
            weights=_rows_of_compiled(block.weights, start, stop),
            nearest=block_nearest,
            centres=centres,
            first_row=start,
            per_row=_per_row_of_compiled(out.per_row, start, stop),
            totals=out.totals,
            far=out.far,
        )
        _merge_moments_compiled(xs=xs, moments=out.moments)


if numba is not None:
    # reassoc lets LLVM vectorise the squared-distance sums (rounding differs by ~1 ulp)
    _jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
    _fold_candidate_compiled = numba.njit(inline="always")(_fold_candidate)
    _argmin_rows_compiled = _jit(_argmin_rows_loop)
    _sub_block_gemm_compiled = _jit(_sub_block_gemm)
    _argmin_per_row_compiled = _jit(_argmin_per_row_loop)
    _rows_of_compiled = _jit(_rows_of)
    _weight_of_compiled = _jit(_weight_of)
    _per_row_of_compiled = _jit(_per_row_of)
    _shifted_rows_compiled = _jit(_shifted_rows)
    _nearest_compiled = _jit(_nearest_loop)
    _screen_compiled = _jit(_screen_loop)
    _nearest_two_compiled = _jit(_nearest_two_loop)
    _accumulate_compiled = _jit(_accumulate_loop)
    _keep_far_compiled = _jit(_keep_far_loop)
    _merge_moments_compiled = _jit(_merge_moments_loop)
    _assign_block_compiled = _jit(_assign_block_loop)


def _assign(
    x: np.ndarray,
    centers: np.ndarray,
    bounds: np.ndarray,
    weights: np.ndarray | None,
    *,
    accumulate: bool,
    moments: bool = False,
    far_capacity: int = 0,
    bounds_of_rows: tuple[DistanceBounds, int] | None = None,
    shift: np.ndarray | None = None,
) -> tuple[_Accumulator, Moments | None]:
    """Nearest centre of every row per run, with per-centre sums, in one read of ``x``.

    The distance GEMM runs in the data's float dtype on row sub-blocks that stay in
    cache; the distance to the chosen centre is recomputed directly in float64. With
    ``far_capacity``, the compiled kernel keeps only the far points of every run
    instead of per-row labels and distances (no allocation of the block's size).
    ``bounds_of_rows`` (the bounds and the block's index) lets the compiled kernel
    skip the rows whose centre cannot have changed. With ``shift``, the rows are seen
    minus ``shift`` (:mod:`dkmeans.frame`), one cached sub-block at a time.
    """
    n_centers, n_features = centers.shape
    n_runs = len(bounds) - 1
    dtype, centers_gemm, centers_sq = gemm_operands(x, centers)
    shift = None if shift is None else np.asarray(shift, dtype=dtype)
    centres = StackedCentres(
        gemm=centers_gemm,
        squared_norms=centers_sq.astype(dtype),  # the scan adds it to the GEMM in its dtype
        exact=np.ascontiguousarray(centers, dtype=np.float64),
        bounds=np.asarray(bounds, dtype=np.int64),
    )
    # the compiled kernel keeps far points in slots; per-row results only when asked
    track_far = USE_NUMBA and far_capacity > 0
    per_row = not USE_NUMBA or not accumulate
    out = _Accumulator.empty(
        len(x) if per_row else 0, n_runs, n_centers, n_features, far_capacity * track_far
    )
    moment_sums = MomentSums(count=np.zeros(1), mean=np.zeros(n_features), m2=np.zeros(n_features))
    step = sub_block_rows(n_centers, n_features)
    screen = None
    if USE_NUMBA and bounds_of_rows is not None:
        distance_bounds, block_index = bounds_of_rows
        out.labels, out.distances, lower = distance_bounds.memory.of_block(block_index, len(x))
        screen = distance_bounds.screen(lower, centers, centres.bounds, dtype)
        per_row = True
    if USE_NUMBA:
        _assign_block_compiled(
            block=BlockRows(
                x=np.ascontiguousarray(x, dtype=dtype),
                weights=None
                if weights is None
                else np.ascontiguousarray(weights, dtype=np.float64),
                shift=shift,
            ),
            centres=centres,
            out=PassOutputs(
                per_row=out.per_row if per_row else None,
                totals=out.totals if accumulate else None,
                far=out.far if track_far else None,
                moments=moment_sums if moments else None,
            ),
            screen=screen,
            step=step,
            by_centers=gemm_by_centers(n_centers, n_features, dtype),
        )
    else:
        w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
        buffer = np.empty(min(step, len(x)) * n_centers, dtype=dtype)
        for rows in _sub_blocks(len(x), step):
            xs = np.ascontiguousarray(x[rows], dtype=dtype)
            xs = xs if shift is None else xs - shift
            partial_t = buffer[: n_centers * len(xs)].reshape(n_centers, len(xs))
            np.matmul(centers_gemm, xs.T, out=partial_t)
            _assign_numpy(
                xs=xs,
                weights=w[rows],
                partial=partial_t.T,
                centres=centres,
                per_row=RowResults(labels=out.labels[rows], distances=out.distances[rows]),
                totals=out.totals if accumulate else None,
            )
            if moments:
                _merge_moments_numpy(xs, moment_sums)
    if not moments:
        return out, None
    return out, Moments(float(moment_sums.count[0]), moment_sums.mean, moment_sums.m2)


def nearest_centers(
    x: np.ndarray, centers: np.ndarray, bounds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest centre of every row, per run.

    Parameters
    ----------
    x : ndarray of shape (rows, d)
    centers : ndarray of shape (K, d)
        Stacked centres of all runs.
    bounds : ndarray of shape (R + 1,), optional
        Run ``r`` owns ``centers[bounds[r]:bounds[r + 1]]``. Default: one run.

    Returns
    -------
    labels : ndarray of shape (rows, R), int64
        Index within the run's own centres.
    distances : ndarray of shape (rows, R), float64
        Squared Euclidean distance to that centre, computed directly (not from the
        GEMM expansion) so that it is accurate even far from the origin.
    """
    bounds = np.array([0, len(centers)]) if bounds is None else bounds
    out, _ = _assign(x, centers, bounds, None, accumulate=False)
    return out.labels, out.distances


def gemm_operands(x: np.ndarray, centers: np.ndarray) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """The GEMM dtype, ``-2 * centers`` in that dtype (C-contiguous), and the float64
    squared norms of the centres as rounded to it: ``(-2c)·x + ||c||²`` is
    ``||x - c||² - ||x||²``. The GEMM is laid out by :func:`_sub_block_gemm`.
    """
    dtype = _gemm_dtype(x, centers)
    # -2 is a power of two: (-2c)·x rounds exactly like -2(c·x)
    scaled = -2 * np.asarray(centers, dtype=np.float64)
    centers_gemm = np.ascontiguousarray(scaled, dtype=dtype)
    rounded = centers_gemm.astype(np.float64)
    return dtype, centers_gemm, np.einsum("ij,ij->i", rounded, rounded) / 4


def min_squared_distances(
    x: np.ndarray, centers: np.ndarray, bounds: np.ndarray | None = None
) -> np.ndarray:
    """Squared distance of every row to its nearest centre, per run.

    Computed from the GEMM expansion (clipped at zero): this is what sampling
    probabilities need, at the speed of one GEMM.

    Parameters
    ----------
    x : ndarray of shape (rows, d)
    centers : ndarray of shape (K, d)
    bounds : ndarray of shape (R + 1,), optional
        Run ``r`` owns ``centers[bounds[r]:bounds[r + 1]]``. Default: one run.

    Returns
    -------
    ndarray of shape (rows, R), float64; ``inf`` for a run without centres.
    """
    bounds = np.array([0, len(centers)]) if bounds is None else np.asarray(bounds)
    n_runs = len(bounds) - 1
    out = np.full((len(x), n_runs), np.inf)
    if len(centers) == 0:
        return out
    dtype, centers_gemm, centers_sq = gemm_operands(x, centers)
    for rows in _sub_blocks(len(x), sub_block_rows(len(centers), x.shape[1])):
        xs = np.ascontiguousarray(x[rows], dtype=dtype)
        partial = (centers_gemm @ xs.T).T.astype(np.float64)
        partial += centers_sq
        x_sq = np.einsum("ij,ij->i", xs, xs, dtype=np.float64)
        for r in range(n_runs):
            lo, hi = bounds[r], bounds[r + 1]
            if hi > lo:
                out[rows, r] = np.maximum(partial[:, lo:hi].min(axis=1) + x_sq, 0)
    return out


@dataclass(frozen=True)
class FarPoints:
    """The points farthest from their centre within one run, for empty-cluster relocation.

    Kept sorted by decreasing distance, ties by increasing global row index, so that
    combining partial results in any tree shape gives the same answer.
    """

    rows: np.ndarray  # (m, d) float64
    distances: np.ndarray  # (m,) squared distance to the own centre
    labels: np.ndarray  # (m,) index of the own centre within the run
    weights: np.ndarray  # (m,)
    index: np.ndarray  # (m,) global row index
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
        """Keep the ``capacity`` farthest of the given points."""
        keep = weights > 0
        if capacity == 0:
            keep[:] = False
        elif np.count_nonzero(keep) > capacity:
            # only rows at or above the capacity-th largest distance of the rows with
            # weight can be chosen
            eligible = distances if keep.all() else np.where(keep, distances, -np.inf)
            threshold = np.partition(eligible, len(eligible) - capacity)[-capacity]
            keep &= distances >= threshold
        order = np.lexsort((index[keep], -distances[keep]))[:capacity]
        pick = np.flatnonzero(keep)[order]
        return cls(
            np.asarray(rows[pick], dtype=np.float64),
            distances[pick],
            labels[pick],
            weights[pick],
            index[pick],
            capacity,
        )

    def combine(self, other: FarPoints) -> FarPoints:
        return FarPoints.select(
            np.concatenate([self.rows, other.rows]),
            np.concatenate([self.distances, other.distances]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.weights, other.weights]),
            np.concatenate([self.index, other.index]),
            self.capacity,
        )


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
class DistanceBounds:
    """What a Lloyd pass may skip: the rows' distances of the last pass and how far
    every centre has moved since (see :func:`_screen_loop`).

    Attributes
    ----------
    memory : RowMemory
        Per block (:func:`distance_bounds_memory`): the rows' centres, squared
        distances to them, and lower bounds on the distance to every other centre.
    drift : ndarray of shape (K,)
        Distance every stacked centre moved since the last pass.
    """

    memory: RowMemory
    drift: np.ndarray

    def screen(
        self, lower: np.ndarray, centers: np.ndarray, bounds: np.ndarray, dtype: np.dtype
    ) -> Screen:
        """The bounds of a pass as the compiled screening reads them."""
        norms_sq = np.einsum("ij,ij->i", centers, centers)
        runs = list(zip(bounds[:-1], bounds[1:], strict=True))
        max_drift = np.array([self.drift[lo:hi].max(initial=0.0) for lo, hi in runs])
        max_sq = np.array([norms_sq[lo:hi].max(initial=0.0) for lo, hi in runs])
        # rounding of a GEMM value against ||x - c||² - ||x||², with room to spare
        eps = 2 * (centers.shape[1] + 4) * np.finfo(dtype).eps
        return Screen(
            lower=lower,
            drift=self.drift,
            max_drift=max_drift,
            centers_norm=np.sqrt(norms_sq),
            max_sq=max_sq,
            eps=float(eps),
        )


def distance_bounds_memory(n_runs: int) -> RowMemory:
    """Per block: the rows' centres (-1 before the first pass), squared distances to
    them, and lower bounds on the distance to every other centre, for ``n_runs`` runs."""
    return RowMemory(
        lambda n_rows: (
            np.full((n_rows, n_runs), -1, dtype=np.int64),
            np.zeros((n_rows, n_runs)),
            np.full((n_rows, n_runs), -np.inf),
        )
    )


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


def pass_statistics(
    x: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    block_index: int,
    centers: np.ndarray,
    bounds: np.ndarray,
    *,
    with_moments: bool = False,
    far_capacity: int | None = None,
    distance_bounds: DistanceBounds | None = None,
    shift: np.ndarray | None = None,
) -> PassStats:
    """Assign every row of a block to its nearest centre (per run) and summarise.

    Parameters
    ----------
    x : ndarray of shape (rows, d)
        One block of samples.
    weights : ndarray of shape (rows,) or None
        Sample weights of the block; ``None`` means all ones.
    row_offset : int
        Global index of the block's first row (identifies far points uniquely).
    block_index : int
        Position of the block: its rows' entries in ``distance_bounds``.
    centers : ndarray of shape (K, d)
        Stacked centres of all runs.
    bounds : ndarray of shape (R + 1,)
        Run ``r`` owns ``centers[bounds[r]:bounds[r + 1]]``.
    with_moments : bool
        Also compute per-feature unweighted moments of ``x``.
    far_capacity : int, optional
        Far points kept per run; default: the run's number of centres (the most
        that can ever be empty).
    distance_bounds : DistanceBounds, optional
        Bounds on the rows' distances kept from the last pass (blocks in this process
        only): rows whose nearest centre cannot have changed skip the GEMM and the
        scan. The statistics are those of a full pass, but for a row within the GEMM's
        rounding of a tie: the GEMM of a few gathered rows may round differently.
    shift : ndarray of shape (d,), optional
        See the rows minus ``shift`` (:mod:`dkmeans.frame`): sums, moments and far
        points are in that frame. Applied per cached sub-block, where a source's own
        shifting copies the whole block first (a pass over 1M x 32 float32 rows, k=16:
        37% slower that way).

    Returns
    -------
    PassStats
    """
    capacities = [
        bounds[r + 1] - bounds[r] if far_capacity is None else far_capacity
        for r in range(len(bounds) - 1)
    ]
    out, moments = _assign(
        x,
        centers,
        bounds,
        weights,
        accumulate=True,
        moments=with_moments,
        far_capacity=int(max(capacities, default=0)),
        bounds_of_rows=None if distance_bounds is None else (distance_bounds, block_index),
        shift=shift,
    )
    far = tuple(
        out.far_points(x, weights, row_offset, run, int(capacity), shift)
        for run, capacity in enumerate(capacities)
    )
    return PassStats(out.sums, out.counts, out.inertia, far, moments)


#: Sources pass their shift to this kernel instead of shifting its blocks.
pass_statistics.takes_shift = True


def center_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Euclidean distance of every row to every centre, shape (rows, K), dtype of ``x``.

    Computed in float64 from the GEMM expansion, one sub-block of rows at a time.
    """
    centers64 = np.asarray(centers, dtype=np.float64)
    centers_sq = np.einsum("ij,ij->i", centers64, centers64)
    out = np.empty((len(x), len(centers)), dtype=_float_dtype(x))
    for rows in _sub_blocks(len(x), sub_block_rows(len(centers), x.shape[1])):
        xs = np.asarray(x[rows], dtype=np.float64)
        squared = partial_distances(xs, centers64, centers_sq)
        squared += np.einsum("ij,ij->i", xs, xs)[:, None]
        out[rows] = np.sqrt(np.maximum(squared, 0))
    return out
