"""The Lloyd kernels on one block of rows: nearest centres, per-centre sums, far points.

Everything here takes one in-memory block of samples (rows x features) and returns
small statistics whose size does not depend on the number of rows. Nothing here
knows about Dask graphs: the sources (:mod:`dkmeans.sources`) map these kernels over
blocks and combine their results in a tree with the ``combine`` methods. The per-row
loops run compiled (:mod:`dkmeans.loops`) or as the vectorised NumPy twins here, as
:mod:`dkmeans.engine` says.

Several independent runs (``n_init`` restarts, or the different k of an elbow) are
handled at once: their centres are stacked into one ``(K, d)`` array and
``bounds`` (length ``R + 1``) marks where each run's centres start and end. One
GEMM per row sub-block serves every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from . import engine, loops
from .cosine import unit_centers
from .frame import computing_dtype
from .loops import (
    BlockRows,
    EarlyStopping,
    FarSlots,
    MiniBatchModel,
    MiniBatchRule,
    MomentSums,
    PassOutputs,
    RowResults,
    StackedCentres,
    Totals,
)
from .row_memory import DistanceBounds, RowMemory
from .statistics import FarPoints, Moments, PassStats, StackedMoments
from .tree import combine_all, depth, fold, tree_level

#: Elements (rows x (centres + features)) of one row sub-block. Chosen by measurement
#: (250,000 x 32 float32 rows, k=16, one thread, 2-core EPYC with 1 MiB L2 per core):
#: 2**18 (5461 rows) took 6.9 ms per block against 7.3 ms with 2**16 and 8.3 with 2**14;
#: at d=2 and at k=256 the size made no difference.
SUB_BLOCK_ELEMENTS = 1 << 18

#: The NumPy fallback sums clusters with a one-hot GEMM up to this many centres per run
#: and with one ``np.bincount`` per feature above (measured crossover near k = 64).
ONE_HOT_MAX_CLUSTERS = 64

#: Fewest rows per sub-block: with a thousand centres (ten k-means|| runs), GEMMs of 64
#: rows ran 21% slower than of 256 or more (250,000 x 32 rows, 1000 centres: 441 -> 364 ms).
MIN_SUB_BLOCK_ROWS = 256
#: ... but with few features per row and thousands of centres, 256 rows' distances
#: (4 MiB at k = 4,096) leave the cache between the GEMM and the scan, and that costs
#: more than the shorter GEMMs: whole passes on 2 threads, quiet, 64 rows against 256:
#: k = 4,096: 1.08-1.12 against 1.30-1.45 s (100k x 128), 0.53 against 0.60-0.82 s
#: (100k x 64); k = 8,192: 1.16 against 2.75 s (200k x 32), 1.15 against 2.11 s (100k x
#: 64); k = 16,384, 100k x 32: 1.63 against 3.28 s. With more features the GEMM's work
#: per distance hides the misses and 256 rows win (50k x 256, k = 4,096: 0.98 against
#: 1.26 s; 30k x 768: 1.56 against 2.31 s). At k <= 1,024 both give about 256 rows.
MIN_NARROW_SUB_BLOCK_ROWS = 64
NARROW_MAX_FEATURES = 128


def sub_block_rows(n_centers: int, n_features: int) -> int:
    """Rows per sub-block so that its distance matrix and data stay in cache."""
    rows = SUB_BLOCK_ELEMENTS // max(n_centers + n_features, 1)
    narrow = n_features <= NARROW_MAX_FEATURES
    fewest = MIN_NARROW_SUB_BLOCK_ROWS if narrow else MIN_SUB_BLOCK_ROWS
    return min(max(rows, fewest), 16384)  # np.clip costs 50 us on scalars


def _sub_blocks(n_rows: int, step: int) -> Iterator[slice]:
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


#: Float32 data is multiplied with float64 copies of the centres once a centre
#: coordinate exceeds this: ``x·c`` and ``||c||²`` could overflow float32 (3.4e38).
FLOAT32_GEMM_MAX_CENTER = 1e15


def _float_dtype(x: np.ndarray) -> np.dtype:
    """The dtype the kernels compute a block in: float32 or float64 as stored, float32 for
    float16 rows (widened one cached sub-block at a time), float64 for anything else."""
    dtype = computing_dtype(x.dtype)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def block_rows(
    x: np.ndarray, weights: np.ndarray | None, shift: np.ndarray | None, dtype: np.dtype
) -> BlockRows:
    """A block as the compiled loops read it, for a GEMM in ``dtype``: float16 rows stay
    float16 (their bits, marked by ``widen``), other rows in ``dtype``."""
    half = x.dtype == np.float16
    return BlockRows(
        x=np.ascontiguousarray(x).view(np.uint16) if half else np.ascontiguousarray(x, dtype),
        weights=None if weights is None else np.ascontiguousarray(weights, dtype=np.float64),
        shift=None if shift is None else np.asarray(shift, dtype=dtype),
        widen=np.empty(0, dtype) if half else None,
    )


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
        return far if shift is None else far.shifted(shift)


def _assign_numpy(
    xs: np.ndarray,
    weights: np.ndarray,
    partial: np.ndarray,
    centres: StackedCentres,
    per_row: RowResults,
    totals: Totals | None,
) -> None:
    """Vectorised NumPy twin of :func:`~dkmeans.loops.scan_nearest` and
    :func:`~dkmeans.loops.accumulate_rows` without far-point slots (the caller selects
    far points from the per-row results); ``partial`` is ``-2 x·c`` of the sub-block,
    rows by centres, added to here."""
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


def gemm_by_centers(n_centers: int, n_features: int, dtype: np.dtype, n_runs: int = 1) -> bool:
    """Whether a sub-block's GEMM is laid out centres by rows, and scanned along the rows
    (:func:`~dkmeans.loops.argmin_rows`), rather than rows by centres and scanned row by row
    (:func:`~dkmeans.loops.argmin_per_row`), for ``n_centers`` centres stacked from
    ``n_runs`` runs. Both give the same nearest centres.

    OpenBLAS's sgemm runs slower by centres for few centres against rows of 16 or more
    float32 features (2.5x for 10 centres and d=32, one thread), and the row-by-row scan
    compares a run's centres in lanes (:mod:`dkmeans.lanes`). Whole passes over 250,000
    rows of noise, one thread, median of 5-15 alternating pairs, rows by centres against
    centres by rows: float32, one run, d = 16 to 256 and k = 8 to 256: 0.70-0.95; at
    k = 512 and 1,024, at d <= 8 and at d = 768, k = 256: 0.92-1.2; float64: 1.02-1.42
    (d = 2 to 128, k = 8 to 64). Runs of sizes that fill no whole lanes are scanned one
    centre at a time: ten runs of 10 or 25 centres took 1.13-1.37x as long rows by
    centres, of 16 centres 0.97-1.08x; there the layout is rows by centres only for fewer
    centres than features and than 32 (d = 16 to 64), as before the lanes
    (``python -m benchmarks.layouts``).
    """
    float32 = np.dtype(dtype) == np.float32
    if float32 and n_runs == 1 and 16 <= n_features <= 256 and n_centers <= 256:
        return False
    narrow_gemm = float32 and 16 <= n_features <= 64
    return not (narrow_gemm and n_centers < min(32, n_features))


def _merge_moments_numpy(xs: np.ndarray, moments: MomentSums) -> None:
    """NumPy twin of :func:`~dkmeans.loops.merge_moments`."""
    count, mean, m2 = moments
    merged = Moments(count[0], mean.copy(), m2.copy()).combine(Moments.of(xs))
    count[0], mean[:], m2[:] = merged.count, merged.mean, merged.m2


def stacked_centres(
    x: np.ndarray, centers: np.ndarray, bounds: np.ndarray
) -> tuple[np.dtype, StackedCentres]:
    """The GEMM dtype of ``x`` against ``centers`` and the centres as the compiled loops
    read them (:func:`gemm_operands`)."""
    dtype, centers_gemm, centers_sq = gemm_operands(x, centers)
    return dtype, StackedCentres(
        gemm=centers_gemm,
        squared_norms=centers_sq.astype(dtype),  # the scan adds it to the GEMM in its dtype
        exact=np.ascontiguousarray(centers, dtype=np.float64),
        bounds=np.asarray(bounds, dtype=np.int64),
    )


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
    results_of_rows: tuple[RowMemory, int] | None = None,
    shift: np.ndarray | None = None,
) -> tuple[_Accumulator, Moments | None]:
    """Nearest centre of every row per run, with per-centre sums, in one read of ``x``.

    The distance GEMM runs in the data's float dtype on row sub-blocks that stay in
    cache; the distance to the chosen centre is recomputed directly in float64. With
    ``far_capacity``, the compiled kernel keeps only the far points of every run
    instead of per-row labels and distances (no allocation of the block's size).
    ``bounds_of_rows`` (the bounds and the block's index) lets the compiled kernel
    skip the rows whose centre cannot have changed. ``results_of_rows`` (a memory of
    :func:`~dkmeans.row_memory.row_results_memory` and the block's index) keeps the
    per-row results there. With ``shift``, the rows are seen
    minus ``shift`` (:mod:`dkmeans.frame`), one cached sub-block at a time.
    """
    n_centers, n_features = centers.shape
    n_runs = len(bounds) - 1
    dtype, centres = stacked_centres(x, centers, bounds)
    centers_gemm = centres.gemm
    shift = None if shift is None else np.asarray(shift, dtype=dtype)
    compiled = engine.current() == "numba"
    # the compiled kernel keeps far points in slots; per-row results only when asked
    track_far = compiled and far_capacity > 0
    per_row = not compiled or not accumulate
    out = _Accumulator.empty(
        len(x) if per_row else 0, n_runs, n_centers, n_features, far_capacity * track_far
    )
    width = n_features if moments else 0  # moments of no features: not asked for
    moment_sums = MomentSums(count=np.zeros(1), mean=np.zeros(width), m2=np.zeros(width))
    step = sub_block_rows(n_centers, n_features)
    screen = groups = None
    if results_of_rows is not None:
        memory, block_index = results_of_rows
        out.labels, out.distances = memory.of_block(block_index, len(x))
        per_row = True
    if compiled and bounds_of_rows is not None:
        distance_bounds, block_index = bounds_of_rows
        out.labels, out.distances, lower = distance_bounds.memory.of_block(block_index, len(x))
        if distance_bounds.groups is None:
            screen = distance_bounds.screen(lower, centers, centres.bounds, dtype)
        else:
            groups = distance_bounds.group_screen(
                lower, centers, centres.bounds, centers_gemm, centres.squared_norms
            )
        per_row = True
    if compiled:
        loops.assign_block(
            block=block_rows(x, weights, shift, dtype),
            centres=centres,
            out=PassOutputs(
                per_row=out.per_row if per_row else None,
                totals=out.totals if accumulate else None,
                far=out.far if track_far else None,
                moments=moment_sums,
            ),
            screen=screen,
            groups=groups,
            step=step,
            by_centers=gemm_by_centers(n_centers, n_features, dtype, len(bounds) - 1),
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
    row_results: RowMemory | None = None,
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
        rounding of a tie: the GEMM of a few gathered rows may round differently. The
        NumPy engine (:mod:`dkmeans.engine`) ignores them and makes a full pass.
    row_results : RowMemory, optional
        Keep every row's nearest centre and squared distance to it, per run, in this
        memory (:func:`~dkmeans.row_memory.row_results_memory`; blocks in this process
        only, not with ``distance_bounds``): the labels of :func:`nearest_centers`, as
        the same centres give them there.
    shift : ndarray of shape (d,), optional
        See the rows minus ``shift`` (:mod:`dkmeans.frame`): sums, moments and far
        points are in that frame. Applied per cached sub-block, where a source's own
        shifting copies the whole block first (a pass over 1M x 32 float32 rows, k=16:
        37% slower that way).

    Returns
    -------
    PassStats
    """
    capacities = far_capacities(bounds, far_capacity)
    out, moments = _assign(
        x,
        centers,
        bounds,
        weights,
        accumulate=True,
        moments=with_moments,
        far_capacity=int(max(capacities, default=0)),
        bounds_of_rows=None if distance_bounds is None else (distance_bounds, block_index),
        results_of_rows=None if row_results is None else (row_results, block_index),
        shift=shift,
    )
    far = tuple(
        out.far_points(x, weights, row_offset, run, int(capacity), shift)
        for run, capacity in enumerate(capacities)
    )
    return PassStats(out.sums, out.counts, out.inertia, far, moments)


#: Sources pass their shift to this kernel instead of shifting its blocks.
pass_statistics.takes_shift = True


def far_capacities(bounds: np.ndarray, far_capacity: int | None) -> list[int]:
    """Far points kept per run (:func:`pass_statistics`'s ``far_capacity``)."""
    return [
        int(bounds[r + 1] - bounds[r]) if far_capacity is None else far_capacity
        for r in range(len(bounds) - 1)
    ]


def pass_statistics_of_blocks(
    x: np.ndarray,
    edges: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    first_block: int,
    split_every: int,
    centers: np.ndarray,
    bounds: np.ndarray,
    *,
    with_moments: bool = False,
    far_capacity: int | None = None,
    distance_bounds: None = None,
    row_results: None = None,
    shift: np.ndarray | None = None,
) -> PassStats:
    """:func:`pass_statistics` of consecutive blocks in one call, combined as the fixed
    tree combines them.

    Every block is processed exactly as alone (its own sub-blocks and GEMMs), and the
    blocks' statistics are combined level by level in groups of ``split_every``, left to
    right (:mod:`dkmeans.tree`), so the result is bitwise that of :func:`pass_statistics`
    on every block combined in that tree: the value of a tree node whose blocks these
    are. With the numba engine the blocks run in one compiled loop that adds every
    block's totals into the nodes above it as it goes (:func:`~dkmeans.loops.fold_totals`),
    without a Python call or a partial result per block (a block of a few rows cost
    ~100 us of calls and allocations, 20x its arithmetic).

    Parameters
    ----------
    x : ndarray of shape (rows, d)
        The rows of the blocks, one block after the other.
    edges : ndarray of shape (n_blocks + 1,)
        Block ``b`` is rows ``edges[b]:edges[b + 1]`` of ``x``.
    weights : ndarray of shape (rows,) or None
    row_offset : int
        Global index of the first row of ``x``.
    first_block : int
        Position of the first block.
    split_every : int
        Fan-in of the combining tree.
    centers, bounds, with_moments, far_capacity, shift
        As :func:`pass_statistics`.
    distance_bounds, row_results : None
        Kept only by a process that passes over its own blocks, one at a time.

    Returns
    -------
    PassStats
    """
    if distance_bounds is not None or row_results is not None:
        raise ValueError("rows' state is kept per block: pass the blocks one at a time")
    capacities = far_capacities(bounds, far_capacity)
    n_blocks, (n_centers, n_features) = len(edges) - 1, centers.shape
    if engine.current() != "numba":
        parts = [
            pass_statistics(
                x[lo:hi],
                None if weights is None else weights[lo:hi],
                row_offset + lo,
                first_block + b,
                centers,
                bounds,
                with_moments=with_moments,
                far_capacity=far_capacity,
                shift=shift,
            )
            for b, (lo, hi) in enumerate(pairwise(edges))
        ]
        while len(parts) > 1:
            parts = [combine_all(group) for group in tree_level(parts, split_every)]
        return parts[0]
    dtype, centres = stacked_centres(x, centers, bounds)
    capacity = max(capacities, default=0)
    out = _Accumulator.empty(0, len(bounds) - 1, n_centers, n_features, capacity)
    levels = depth(n_blocks, split_every)
    totals = Totals(  # one entry per level of the tree: the last is the result
        sums=np.zeros((levels + 1, n_centers, n_features)),
        counts=np.zeros((levels + 1, n_centers)),
        inertia=np.zeros((levels + 1, n_centers)),
    )
    stacked_blocks = n_blocks if with_moments else 0  # none: not asked for
    moments = MomentSums(
        count=np.zeros((stacked_blocks, 1)),
        mean=np.zeros((stacked_blocks, n_features)),
        m2=np.zeros((stacked_blocks, n_features)),
    )
    shift = None if shift is None else np.asarray(shift, dtype=dtype)
    loops.assign_blocks(
        block=block_rows(x, weights, shift, dtype),
        edges=np.asarray(edges, dtype=np.int64),
        centres=centres,
        out=PassOutputs(
            per_row=None,
            totals=totals,
            far=out.far if capacity else None,
            moments=moments,
        ),
        step=sub_block_rows(n_centers, n_features),
        by_centers=gemm_by_centers(n_centers, n_features, dtype, len(bounds) - 1),
        split_every=split_every,
    )
    far = tuple(
        out.far_points(x, weights, row_offset, run, capacity, shift)
        for run, capacity in enumerate(capacities)
    )
    node_moments = None
    if with_moments:  # folded by NumPy, whose arithmetic Moments.combine is
        stacked = StackedMoments(moments.count[:, 0], moments.mean, moments.m2)
        node_moments = fold(stacked, levels, split_every).value()
    return PassStats(totals.sums[-1], totals.counts[-1], totals.inertia[-1], far, node_moments)


def kept_bytes(centers: np.ndarray, *_: object, with_moments: bool = False, **__: object) -> int:
    """Bytes that :func:`pass_statistics_of_blocks` keeps per block: its moments."""
    return 8 * (2 * centers.shape[1] + 1) if with_moments else 0


#: The kernel over many blocks at once (:mod:`dkmeans.spans`), and its memory per block.
pass_statistics.of_blocks = pass_statistics_of_blocks
pass_statistics.kept_bytes = kept_bytes


def cluster_totals(x: np.ndarray, weights: np.ndarray | None, centers: np.ndarray) -> Totals:
    """Per-centre weighted sums, weights and inertia of the rows of ``x`` at their nearest
    centre: :func:`pass_statistics` of one run without far points, for the small batches
    of mini-batch k-means (a fixed cost of a few tens of microseconds less per call).

    Parameters
    ----------
    x : ndarray of shape (rows, d)
    weights : ndarray of shape (rows,) or None
    centers : ndarray of shape (k, d)

    Returns
    -------
    Totals
        ``sums`` (k, d), ``counts`` (k,) and ``inertia`` (k,), float64.
    """
    out, _ = _assign(x, centers, np.array([0, len(centers)]), weights, accumulate=True)
    return out.totals


def minibatch_rule(
    dtype: np.dtype,
    n_centers: int,
    n_features: int,
    *,
    batch_size: int,
    reassignment_ratio: float,
    unit: bool,
) -> MiniBatchRule:
    """How :func:`minibatch_rows` updates the centres of rows of ``dtype`` (float32 or
    float64): the GEMM dtype, layout and sub-blocks of :func:`pass_statistics`."""
    float32 = np.dtype(dtype) == np.float32
    return MiniBatchRule(
        batch_size=int(batch_size),
        reassignment_ratio=float(reassignment_ratio),
        unit=bool(unit),
        wide_above=FLOAT32_GEMM_MAX_CENTER if float32 else np.inf,
        by_centers=gemm_by_centers(n_centers, n_features, dtype),
        wide_by_centers=gemm_by_centers(n_centers, n_features, np.float64),
        step=sub_block_rows(n_centers, n_features),
    )


def minibatch_rows(
    x: np.ndarray,
    weights: np.ndarray | None,
    start: int,
    stop: int,
    rows_per_batch: int,
    model: MiniBatchModel,
    rule: MiniBatchRule,
    early: EarlyStopping | None,
) -> tuple[int, int, float]:
    """Mini-batch k-means over the rows ``start:stop`` of ``x``, in batches of
    ``rows_per_batch`` consecutive rows, until they are done or a batch needs the caller.

    Parameters
    ----------
    x : ndarray of shape (n, d), float32 or float64, C-contiguous
    weights : ndarray of shape (n,), float64, or None
    start, stop : int
    rows_per_batch : int
    model : MiniBatchModel
        Updated in place.
    rule : MiniBatchRule
        From :func:`minibatch_rule` for the dtype of ``x``.
    early : EarlyStopping or None
        The stopping rule (updated in place); None: never stop.

    Returns
    -------
    status : int
        :data:`~dkmeans.loops.BATCHES_DONE`, :data:`~dkmeans.loops.REASSIGN` or
        :data:`~dkmeans.loops.STOPPED` (see :func:`dkmeans.loops.minibatch_rows`).
    position : int
        The end of the last batch processed.
    inertia : float
        That batch's weighted inertia (for a status other than ``BATCHES_DONE``).
    """
    if engine.current() == "numba":
        return loops.minibatch_rows(
            x=x,
            weights=weights,
            start=start,
            stop=stop,
            rows_per_batch=rows_per_batch,
            model=model,
            rule=rule,
            early=early,
        )
    position = start
    while position < stop:
        end = min(position + rows_per_batch, stop)
        rows = slice(position, end)
        totals = cluster_totals(x[rows], None if weights is None else weights[rows], model.centers)
        checked = loops.reassignment_checked(model=model, rule=rule)
        _moved_centres_numpy(model, totals, rule.unit)
        position = end
        inertia = float(totals.inertia.sum())
        if loops.reassignment_due(model=model, rule=rule, checked=checked):
            return loops.REASSIGN, position, inertia
        if loops.finish_step(model=model, inertia=inertia, early=early):
            return loops.STOPPED, position, inertia
    return loops.BATCHES_DONE, position, 0.0


def rows_in_order(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``x[order]`` (rows), a new C-contiguous array: the rows of a block of a shuffled
    mini-batch epoch in the order its batches take them.

    Parameters
    ----------
    x : ndarray of shape (n, d), C-contiguous
    order : ndarray of shape (m,), intp, values in ``[0, n)``

    Returns
    -------
    ndarray of shape (m, d), the dtype of ``x``
    """
    if engine.current() != "numba":
        return np.take(x, order, axis=0)
    out = np.empty((len(order), x.shape[1]), dtype=x.dtype)
    loops.take_rows(x=x, order=order, out=out)
    return out


def _moved_centres_numpy(model: MiniBatchModel, totals: Totals, unit: bool) -> None:
    """NumPy twin of :func:`~dkmeans.loops.moved_centres`."""
    centers, counts = model.centers, model.counts
    model.previous[:] = centers
    total = counts + totals.counts
    given = totals.counts > 0
    centers[given] = (centers[given] * counts[given, None] + totals.sums[given]) / total[
        given, None
    ]
    counts[:] = total
    if unit:
        centers[:] = unit_centers(centers, fallback=model.previous)


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


def smallest_first(values: np.ndarray, n_smallest: int) -> np.ndarray:
    """Columns of the ``n_smallest`` smallest values of every row, smallest first; equal
    values in column order (so the first is ``values.argmin(axis=1)``).

    Parameters
    ----------
    values : ndarray of shape (rows, K), no NaN
    n_smallest : int, 1 to K

    Returns
    -------
    ndarray of shape (rows, n_smallest), int64
    """
    if engine.current() == "numba":
        out = np.empty((len(values), n_smallest), dtype=np.int64)
        loops.smallest_per_row(values=values, out=out)
        return out
    return _smallest_first_numpy(values, n_smallest)


def _smallest_first_numpy(values: np.ndarray, n_smallest: int) -> np.ndarray:
    """Vectorised NumPy twin of :func:`~dkmeans.loops.smallest_per_row`."""
    n_rows, n_columns = values.shape
    if n_smallest < n_columns:
        # a partition, then the ties at its edge: the first columns among them
        edge = np.partition(values, n_smallest - 1, axis=1)[:, n_smallest - 1 : n_smallest]
        below, tied = values < edge, values == edge
        room = n_smallest - below.sum(axis=1, keepdims=True)
        chosen = below | (tied & (np.cumsum(tied, axis=1) <= room))
        columns = np.nonzero(chosen)[1].reshape(n_rows, n_smallest)
    else:
        columns = np.broadcast_to(np.arange(n_columns), values.shape)
    order = np.argsort(np.take_along_axis(values, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


def ranked_centers(
    x: np.ndarray, centers: np.ndarray, n_nearest: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_nearest`` nearest centres of every row, nearest first.

    Ranked by the GEMM expansion in the GEMM dtype, as :func:`nearest_centers` ranks
    them (ties: the lowest index), so the first is the row's label; two centres within
    the GEMM's rounding of a tie may come in either order. The distances to the chosen
    centres are computed directly in float64, one cached sub-block of rows at a time.

    Parameters
    ----------
    x : ndarray of shape (rows, d)
    centers : ndarray of shape (K, d)
    n_nearest : int, 1 to K

    Returns
    -------
    indices : ndarray of shape (rows, n_nearest), int32
    squared : ndarray of shape (rows, n_nearest), float64
        Squared Euclidean distances to those centres.
    """
    dtype, centers_gemm, centers_sq = gemm_operands(x, centers)
    squared_norms = centers_sq.astype(dtype)  # added in the GEMM dtype, as the scan adds it
    centers64 = np.asarray(centers, dtype=np.float64)
    indices = np.empty((len(x), n_nearest), dtype=np.int32)
    squared = np.empty((len(x), n_nearest))
    for rows in _sub_blocks(len(x), sub_block_rows(len(centers), x.shape[1])):
        xs = np.ascontiguousarray(x[rows], dtype=dtype)
        # laid out by centres as the NumPy engine's assignment; summed into rows by centres
        partial = np.add((centers_gemm @ xs.T).T, squared_norms, order="C")
        nearest = smallest_first(partial, n_nearest)
        indices[rows] = nearest
        if engine.current() == "numba":
            loops.chosen_distances(xs=xs, centers=centers64, chosen=nearest, out=squared[rows])
        else:
            _chosen_distances_numpy(xs, centers64, nearest, squared[rows])
    return indices, squared


def _chosen_distances_numpy(
    xs: np.ndarray, centers: np.ndarray, chosen: np.ndarray, out: np.ndarray
) -> None:
    """NumPy twin of :func:`~dkmeans.loops.chosen_distances`."""
    xs64 = xs.astype(np.float64)
    for j in range(chosen.shape[1]):
        diff = xs64 - centers[chosen[:, j]]
        out[:, j] = np.einsum("ij,ij->i", diff, diff)
