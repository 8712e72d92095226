"""Every loop compiled by numba, with one compile setting (:func:`_compile`).

The block kernels (:mod:`dkmeans.kernels`, :mod:`dkmeans.oversampling`,
:mod:`dkmeans.sampling`) call these when the engine is ``"numba"``
(:mod:`dkmeans.engine`); each has a vectorised NumPy twin there. The loops take small
named tuples (inputs, outputs, scratch), and are called with keywords: two arguments
of the same type swapped would compile and give wrong numbers silently. A member or
argument of None is compiled out (numba prunes the branches on it), so optional
outputs cost nothing when not asked for; numba prunes only on arguments, so a loop
passes an optional member on to a callee as an argument (:func:`rows_of`,
:func:`weight_of`) rather than testing it itself.

Without numba this module imports, and its functions are the plain Python loops.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import streams
from .engine import numba
from .lanes import lanes_of, nearest_in_lanes


def _compile(function):
    """The one compile setting: no GIL (the threads of a pass never wait on each other),
    cached on disk, and ``reassoc`` so that LLVM vectorises sums over features (a
    squared distance may differ from the NumPy engine's by ~1 ulp)."""
    if numba is None:
        return function
    return numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})(function)


def _compile_exact(function):
    """:func:`_compile` without fastmath: an error-free transformation (TwoSum) needs
    every rounding exactly as written. Numba applies fastmath per compiled function, so
    a caller's flags do not reach into it."""
    if numba is None:
        return function
    return numba.njit(nogil=True, cache=True)(function)


def _compile_inline(function):
    """:func:`_compile`, inlined into its callers by numba (a few lines called per row
    and centre)."""
    if numba is None:
        return function
    return numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"}, inline="always")(
        function
    )


#: :func:`dkmeans.streams.uniform` of one row, compiled.
uniform = _compile(streams.uniform)


class StackedCentres(NamedTuple):
    """The stacked centres of several runs, as the compiled loops read them (inputs).

    ``gemm`` and ``squared_norms`` come from :func:`~dkmeans.kernels.gemm_operands`.
    """

    gemm: np.ndarray  # (K, d) -2 * centres in the GEMM dtype, C-contiguous
    squared_norms: np.ndarray  # (K,) ||c||² as rounded to the GEMM dtype
    exact: np.ndarray  # (K, d) float64
    bounds: np.ndarray  # (R + 1,) int64: run r owns [bounds[r], bounds[r + 1])


class BlockRows(NamedTuple):
    """One block's rows (inputs)."""

    x: np.ndarray  # (n, d) in the GEMM dtype, or the bits of float16 values; C-contiguous
    weights: np.ndarray | None  # (n,) float64; None: all ones (compiled out)
    shift: np.ndarray | None  # (d,) in the GEMM dtype: rows seen minus it; None: as stored
    #: When ``x`` holds float16 rows as their uint16 bits (numba has no float16), a
    #: zero-length array of the GEMM dtype they are widened to, one cached sub-block at
    #: a time (:func:`widened_rows`); None: ``x`` is in the GEMM dtype (compiled out)
    widen: np.ndarray | None


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
    """What one compiled pass over a block fills in; a member of None is compiled out.

    ``moments`` of no features (:func:`no_moments`) are not asked for: a test at run
    time, once per sub-block, so that the kernel has one compiled form whether a pass
    asks for them or not (the first pass of a fit does; numba compiles every combination
    of None and not None anew: 2-3 s a dtype in a fresh process)."""

    per_row: RowResults | None
    totals: Totals | None
    far: FarSlots | None
    moments: MomentSums


class Screen(NamedTuple):
    """Hamerly's bounds of a pass (see :func:`screen_rows`)."""

    lower: np.ndarray  # (n, R) lower bound on the distance to every other centre, updated
    drift: np.ndarray  # (K,) distance every centre moved since the last pass
    max_drift: np.ndarray  # (R,) the largest drift of every run
    centers_norm: np.ndarray  # (K,) ||c||
    max_sq: np.ndarray  # (R,) the largest ||c||² of every run
    eps: float  # relative rounding of a GEMM value, with room to spare


class GroupScreen(NamedTuple):
    """Yinyang's group bounds of a pass (see :func:`screen_groups`); positions are those
    of :class:`~dkmeans.groups.CentreGroups`, where a group's centres are contiguous."""

    lower: np.ndarray  # (n, G) float32: per group, a lower bound on the distance to its
    #                    centres but the row's own, updated
    drift: np.ndarray  # (K,) distance every centre moved since the last pass
    group_drift: np.ndarray  # (G,) the largest drift of every group
    centers_norm: np.ndarray  # (K,) ||c||
    max_sq: np.ndarray  # (R,) the largest ||c||² of every run
    eps: float  # relative rounding of a GEMM value, with room to spare
    order: np.ndarray  # (K,) int64 stacked centre at every position
    edges: np.ndarray  # (G + 1,) int64: group g holds positions edges[g]:edges[g + 1]
    run_groups: np.ndarray  # (R + 1,) int64: run r owns groups run_groups[r]:run_groups[r + 1]
    gemm: np.ndarray  # (K, d) -2 * centres in the GEMM dtype, by position
    squared_norms: np.ndarray  # (K,) ||c||² as rounded to the GEMM dtype, by position


class Scan(NamedTuple):
    """Scratch of one sub-block's rows: best value and index, second value, ``||x||²``."""

    best_value: np.ndarray
    best_index: np.ndarray  # int64
    second: np.ndarray
    x_sq: np.ndarray  # float64


class GroupScratch(NamedTuple):
    """Scratch of one sub-block's rows for :func:`scan_nearest_groups`."""

    gathered: np.ndarray  # (rows,) int64 block rows that go through the GEMM
    kept: np.ndarray  # (rows, R) bool: whether run r kept the row's centre
    x_sq: np.ndarray  # (rows,) float64 ||x||²
    rows: np.ndarray  # (rows, d) copies of the gathered rows, in the GEMM dtype
    scan: Scan  # (G, rows) per group: best value, index (by position) and second value


class NearestCandidates(NamedTuple):
    """Every row's nearest candidate so far, per run (in and out): ``partial[i, column]``
    is ``||c||² - 2 x·c`` of row ``i`` and that candidate ``c``, ``index[i, column]``
    its index within its run (see :func:`nearest_candidates`)."""

    partial: np.ndarray  # (rows, runs) float64
    index: np.ndarray  # (rows, runs) int32


class CandidateRuns(NamedTuple):
    """Where each run's new candidates go (inputs): the index of its first one within the
    run, and the run's column in :class:`NearestCandidates`."""

    first_index: np.ndarray  # (R,) int64
    columns: np.ndarray  # (R,) int64


class CandidateCounts(NamedTuple):
    """The weighing pass's output, added to: per candidate (of run ``r`` in rows
    ``edges[r]:edges[r + 1]``), the weighted sum of the rows nearest to it and, in the
    last column, their weight, as compensated sums ``high + low``
    (:mod:`dkmeans.compensated`)."""

    high: np.ndarray  # (M, d + 1) float64
    low: np.ndarray  # (M, d + 1) float64
    edges: np.ndarray  # (R + 1,) int64


class Draws(NamedTuple):
    """An oversampling round's inputs and its kept rows per run (see
    :func:`measure_block`)."""

    oversampling: np.ndarray  # (R,) expected draws per round
    streams: np.ndarray  # (R,) uint64 random stream of every run
    first_row: int  # global index of the block's first row
    kept_rows: np.ndarray  # (R, slots) int64 block-local rows
    kept_keys: np.ndarray  # (R, slots) float64
    n_kept: np.ndarray  # (R,) int64 slots filled


#: The counts of a round of :func:`measure_block`: none (no runs).
NO_COUNTS = CandidateCounts(
    high=np.zeros((0, 0)), low=np.zeros((0, 0)), edges=np.zeros(1, dtype=np.int64)
)


def no_draws() -> Draws:
    """The draws of a weighing pass of :func:`measure_block`: none (no runs)."""
    return Draws(
        oversampling=np.zeros(0),
        streams=np.zeros(0, dtype=np.uint64),
        first_row=0,
        kept_rows=np.zeros((0, 0), dtype=np.int64),
        kept_keys=np.zeros((0, 0)),
        n_kept=np.zeros(0, dtype=np.int64),
    )


@_compile
def sub_block_gemm(partial, centers_gemm, xs, by_centers):
    """``-2 c·x`` of a sub-block into the flat buffer ``partial``: centres by rows with
    ``by_centers``, else rows by centres (see :func:`~dkmeans.kernels.gemm_by_centers`)."""
    n_rows, n_centers = xs.shape[0], centers_gemm.shape[0]
    if by_centers:
        out = partial[: n_centers * n_rows].reshape((n_centers, n_rows))
        np.dot(centers_gemm, xs.T, out)
    else:
        out = partial[: n_rows * n_centers].reshape((n_rows, n_centers))
        np.dot(xs, centers_gemm.T, out)
    return out


@_compile
def all_within(values, limit):
    """Whether every value of the 1-D ``values`` is a number of magnitude at most
    ``limit`` (of their dtype): one read, no temporary (NaN fails the comparison)."""
    outside = False
    for i in range(len(values)):
        outside |= not abs(values[i]) <= limit
    return not outside


@_compile
def rows_of(values, start, stop):
    """``values[start:stop]``, or None for None."""
    return None if values is None else values[start:stop]


@_compile
def weight_of(weights, i):
    """Weight of row ``i``: 1 for weights of None."""
    return 1.0 if weights is None else weights[i]


@_compile
def per_row_of(per_row, start, stop):
    """The :class:`RowResults` of rows ``start:stop``, or None for None."""
    if per_row is None:
        return None
    return RowResults(labels=per_row.labels[start:stop], distances=per_row.distances[start:stop])


@_compile
def shifted_rows(x, start, stop, shift, buffer):
    """Rows ``start:stop`` of ``x``, minus ``shift`` (copied into ``buffer``, which stays
    in cache) unless ``shift`` is None."""
    if shift is None:
        return x[start:stop]
    for i in range(stop - start):
        for f in range(x.shape[1]):
            buffer[i, f] = x[start + i, f] - shift[f]
    return buffer[: stop - start]


def _half_bits_to_float(bits):
    """The float16 value whose bits are ``bits`` (uint16), as a float."""
    return float(np.array(bits, dtype=np.uint16).view(np.float16))


if numba is not None:

    @numba.extending.intrinsic
    def _half_bits_to_float32(typingctx, bits):
        # LLVM's fpext from half: one vcvtph2ps per 8 values where the CPU has F16C
        # (x86-64 since 2012), a software conversion elsewhere; exact either way
        from llvmlite import ir

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return numba.types.float32(numba.types.uint16), codegen

    @numba.extending.overload(_half_bits_to_float, inline="always", jit_options={"nogil": True})
    def _half_bits_to_float_compiled(bits):
        return lambda bits: _half_bits_to_float32(bits)


@_compile
def widened_rows(x, start, stop, shift, widen, buffer):
    """Rows ``start:stop`` of the float16 bits ``x`` widened to the dtype of ``buffer``
    (:class:`BlockRows`; exactly, by the CPU's half-precision conversion where it has
    one: 2.5x faster than a 65,536-entry table), minus ``shift`` unless None."""
    for i in range(stop - start):
        for f in range(x.shape[1]):
            value = _half_bits_to_float(x[start + i, f])
            buffer[i, f] = value if shift is None else value - shift[f]
    return buffer[: stop - start]


def rows_seen(x, start, stop, shift, widen, buffer):
    """Rows ``start:stop`` of a block as the kernels see them: :func:`widened_rows` for
    float16 bits (``widen``), else :func:`shifted_rows`."""
    if widen is None:
        return shifted_rows(x, start, stop, shift, buffer)
    return widened_rows(x, start, stop, shift, widen, buffer)


if numba is not None:
    # numba prunes a branch on an argument only when it is None: the two kinds of rows
    # return arrays of different dtypes, so the compiled loops choose by type
    @numba.extending.overload(rows_seen, jit_options={"nogil": True})
    def _rows_seen_by_type(x, start, stop, shift, widen, buffer):
        if isinstance(widen, numba.types.NoneType):
            return lambda x, start, stop, shift, widen, buffer: shifted_rows(
                x, start, stop, shift, buffer
            )
        return lambda x, start, stop, shift, widen, buffer: widened_rows(
            x, start, stop, shift, widen, buffer
        )


@_compile
def argmin_per_row(partial, centers_sq, lo, hi, scan, second):
    """:func:`argmin_rows` of ``partial[i, j]``, rows by centres (with ``second``, None:
    compiled out, the second smallest value of every row; ``inf`` for one centre): a
    scan along every row's centres, which costs less for few centres than the slower
    GEMM by centres saves. Whole vectors of centres are compared in lanes
    (:func:`~dkmeans.lanes.nearest_in_lanes`: 16 float32 centres in 8-9 ns a row against
    13-18 ns one at a time, 5,461 rows of noise); the last few one at a time."""
    lanes = lanes_of(partial, centers_sq)
    wide = (hi - lo) // lanes
    if wide:
        nearest_in_lanes(partial, centers_sq, lo, wide, scan.best_value, scan.best_index, second)
    start = lo + wide * lanes
    if wide and start == hi:
        return
    for i in range(partial.shape[0]):
        # unsigned indices: numba drops its negative-index check (1.7 vs 2.6 ms)
        stop = np.uint64(hi)
        if wide:
            best, value_of_best = np.uint64(lo + scan.best_index[i]), scan.best_value[i]
            runner_up = np.inf if second is None else second[i]
            first = np.uint64(start)
        else:
            best = np.uint64(lo)
            value_of_best = partial[i, best] + centers_sq[best]
            runner_up = np.inf
            first = best + np.uint64(1)
        for j in range(first, stop):
            value = partial[i, j] + centers_sq[j]
            if second is not None:
                runner_up = min(runner_up, max(value, value_of_best))
            if value < value_of_best:
                best, value_of_best = j, value
        scan.best_value[i] = value_of_best
        scan.best_index[i] = np.int64(best) - lo
        if second is not None:
            second[i] = runner_up


@_compile_inline
def fold_candidate(value, index, runner_up, candidate, position):
    """One centre's ``candidate`` value at ``position`` folded into a row's best
    ``value`` and ``index`` and its second best ``runner_up``."""
    runner_up = min(runner_up, max(candidate, value))
    nearer = candidate < value
    return (candidate if nearer else value), (position if nearer else index), runner_up


@_compile
def argmin_rows(partial_t, centers_sq, lo, hi, scan, second):
    """Per row ``i`` (a column of ``partial_t``, which holds ``-2 c_j·x_i`` by centres
    and rows): the first ``j`` in ``[lo, hi)`` with the smallest
    ``partial_t[j, i] + centers_sq[j]``, as ``scan.best_index[i] = j - lo`` and that value
    in ``scan.best_value[i]``; with ``second`` (None: compiled out), the second smallest value
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
    best_value, best_index = scan.best_value, scan.best_index
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
            value, index, runner_up = fold_candidate(
                value, index, runner_up, partial_t[j, i] + c0, position
            )
            if four:
                value, index, runner_up = fold_candidate(
                    value, index, runner_up, partial_t[j + 1, i] + c1, position + 1
                )
                value, index, runner_up = fold_candidate(
                    value, index, runner_up, partial_t[j + 2, i] + c2, position + 2
                )
                value, index, runner_up = fold_candidate(
                    value, index, runner_up, partial_t[j + 3, i] + c3, position + 3
                )
            best_value[i], best_index[i] = value, index
            if second is not None:
                second[i] = runner_up
        j = last + 1


@_compile
def argmin_run(partial, by_centers, centres, lo, hi, scan, second=None):
    """The nearest of the centres ``lo:hi`` of every row of a sub-block, into
    ``scan.best_value`` and ``scan.best_index`` (within the run), and with ``second``
    (None: compiled out) the second smallest value, from the GEMM of
    :func:`sub_block_gemm` in either layout."""
    centers_sq = centres.squared_norms
    if by_centers:
        argmin_rows(
            partial_t=partial, centers_sq=centers_sq, lo=lo, hi=hi, scan=scan, second=second
        )
    else:
        argmin_per_row(
            partial=partial, centers_sq=centers_sq, lo=lo, hi=hi, scan=scan, second=second
        )


@_compile
def scan_nearest(buffer, xs, by_centers, centres, nearest, scan):
    """Nearest centre of every row of the sub-block ``xs``, per run, from its GEMM
    (:func:`sub_block_gemm` into ``buffer``; no norms of the rows).

    ``nearest[i, r]`` receives the index into the stacked centres (ties: the lowest).
    A loop of its own, apart from the accumulation: fused with it, the pass ran 20%
    slower (250,000 x 32 float32 rows, k=16, one thread: 8.4 against 6.9-7.2 ms per block).
    """
    bounds = centres.bounds
    partial = sub_block_gemm(
        partial=buffer, centers_gemm=centres.gemm, xs=xs, by_centers=by_centers
    )
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        argmin_run(partial=partial, by_centers=by_centers, centres=centres, lo=lo, hi=hi, scan=scan)
        for i in range(xs.shape[0]):
            nearest[i, r] = lo + scan.best_index[i]


@_compile
def screen_rows(start, stop, bounds, last, screen, nearest, gathered):
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


@_compile
def scan_nearest_two(xs, partial, by_centers, centres, gathered, start, nearest, screen, scan):
    """Nearest centre of the gathered rows (ties: the lowest index, as
    :func:`scan_nearest`), and a lower bound on the distance to every other centre.
    Row ``g`` of the GEMM ``partial`` (a column of it laid out ``by_centers``, see
    :func:`sub_block_gemm`) belongs to row ``gathered[g]`` of the block, which is row
    ``gathered[g] - start`` of the sub-block ``xs``."""
    bounds, x_sq = centres.bounds, scan.x_sq
    n_features = xs.shape[1]
    for g in range(len(gathered)):
        row_sq = 0.0
        for f in range(n_features):
            value = np.float64(xs[gathered[g] - start, f])
            row_sq += value * value
        x_sq[g] = row_sq
    for r in range(len(bounds) - 1):
        argmin_run(
            partial=partial,
            by_centers=by_centers,
            centres=centres,
            lo=bounds[r],
            hi=bounds[r + 1],
            scan=scan,
            second=scan.second,
        )
        for g in range(len(gathered)):
            i = gathered[g]
            nearest[i - start, r] = bounds[r] + scan.best_index[g]
            slack = screen.eps * (x_sq[g] + screen.max_sq[r])
            screen.lower[i, r] = np.sqrt(max(np.float64(scan.second[g]) + x_sq[g] - slack, 0.0))


@_compile_inline
def float32_below(value):
    """A float32 not above ``value`` and at least 0, within 2**-21 of it: a lower bound
    kept in four bytes (a negative one bounds nothing)."""
    # float32 rounds to nearest, within 2**-24 of the value: shrunk first by more
    return np.float32(max(value, 0.0) * (1 - 2.0**-22))


@_compile
def row_squared(xs, i):
    """``||xs[i]||²`` in float64."""
    total = 0.0
    for f in range(xs.shape[1]):
        value = np.float64(xs[i, f])
        total += value * value
    return total


@_compile
def screen_groups(start, stop, xs, centres, last, screen, nearest, gathered, kept, x_sq):
    """The rows of a sub-block whose nearest centre may have changed, by Yinyang's bounds.

    Per row and run: every group's bound drops by the group's largest drift
    (``screen``, :class:`GroupScreen`, updated), the distance to the row's own centre
    grows by at most that centre's drift. The run keeps the row's centre (written to
    ``nearest``) when this upper bound stays below every group's bound by more than the
    rounding of the GEMM could hide, so the full scan would choose the same centre;
    else the upper bound is made exact (one distance in float64) and tested again.
    ``kept[i - start, r]`` says whether run ``r`` kept the centre of row ``i``; the
    positions of the other rows go into ``gathered`` and their ``||x||²`` into ``x_sq``
    (by sub-block row). Returns how many rows.
    """
    lower, bounds = screen.lower, centres.bounds
    n_gathered = 0
    for i in range(start, stop):
        row_sq = row_squared(xs, i - start)
        gather = False
        for r in range(len(bounds) - 1):
            nearest_bound = np.inf
            for g in range(screen.run_groups[r], screen.run_groups[r + 1]):
                lower[i, g] = float32_below(lower[i, g] - screen.group_drift[g])
                nearest_bound = min(nearest_bound, np.float64(lower[i, g]))
            keep = False
            if last.labels[i, r] >= 0:  # measured
                own = bounds[r] + last.labels[i, r]
                upper = np.sqrt(last.distances[i, r]) + screen.drift[own]
                slack = screen.eps * (row_sq + screen.max_sq[r])
                keep = nearest_bound > 0 and upper * upper + 2 * slack < nearest_bound**2
                if not keep and nearest_bound > 0:  # the exact distance
                    squared = 0.0
                    for f in range(xs.shape[1]):
                        diff = np.float64(xs[i - start, f]) - centres.exact[own, f]
                        squared += diff * diff
                    keep = squared + 2 * slack < nearest_bound**2
                if keep:
                    nearest[i - start, r] = own
            kept[i - start, r] = keep
            gather = gather or not keep
        if gather:
            x_sq[i - start] = row_sq
            gathered[n_gathered] = i
            n_gathered += 1
    return n_gathered


@_compile_inline
def bound_of_value(value, row_sq, slack):
    """A lower bound on a distance whose GEMM value is ``value``, in four bytes."""
    return float32_below(np.sqrt(max(np.float64(value) + row_sq - slack, 0.0)))


@_compile
def nearest_by_groups(partial_t, gathered, start, kept, x_sq, run, screen, nearest, scan):
    """The run's nearest centre of every gathered row whose centre the run did not keep
    (``kept``), from the GEMM ``partial_t`` of the gathered rows (positions by rows;
    ties: the lowest index), and new bounds for all the run's groups. Every group is
    scanned along the rows (:func:`argmin_rows`), the groups' best then compared row by
    row. ``scan``: per group, a row of best values, indices and second values."""
    g0, g1 = screen.run_groups[run], screen.run_groups[run + 1]
    for g in range(g0, g1):
        argmin_rows(
            partial_t=partial_t,
            centers_sq=screen.squared_norms,
            lo=screen.edges[g],
            hi=screen.edges[g + 1],
            scan=Scan(
                best_value=scan.best_value[g],
                best_index=scan.best_index[g],
                second=scan.second[g],
                x_sq=x_sq,
            ),
            second=scan.second[g],
        )
    for c in range(len(gathered)):
        i = gathered[c]
        if kept[i - start, run]:
            continue
        best, best_value, best_group = -1, np.inf, -1
        for g in range(g0, g1):
            index = screen.order[screen.edges[g] + scan.best_index[g, c]]
            value = scan.best_value[g, c]
            if value < best_value or (value == best_value and index < best):
                best, best_value, best_group = index, value, g
        nearest[i - start, run] = best
        row_sq = x_sq[i - start]
        slack = screen.eps * (row_sq + screen.max_sq[run])
        for g in range(g0, g1):
            other = scan.second[g, c] if g == best_group else scan.best_value[g, c]
            screen.lower[i, g] = bound_of_value(other, row_sq, slack)


@_compile
def group_count(groups):
    """The number of groups of a :class:`GroupScreen`, 0 for None."""
    return 0 if groups is None else groups.lower.shape[1]


@_compile
def scan_nearest_groups(xs, start, stop, partial, centres, last, groups, nearest, scratch):
    """Nearest centre of every row of the sub-block ``xs`` (rows ``start:stop`` of its
    block) by Yinyang's bounds: :func:`screen_groups`, then the GEMM of a copy of the
    rows left into ``partial``, scanned group by group (:func:`nearest_by_groups`).
    ``scratch``: :class:`GroupScratch`."""
    n = screen_groups(
        start=start,
        stop=stop,
        xs=xs,
        centres=centres,
        last=last,
        screen=groups,
        nearest=nearest,
        gathered=scratch.gathered,
        kept=scratch.kept,
        x_sq=scratch.x_sq,
    )
    if n == 0:
        return
    for c in range(n):
        scratch.rows[c] = xs[scratch.gathered[c] - start]
    partial_t = sub_block_gemm(
        partial=partial, centers_gemm=groups.gemm, xs=scratch.rows[:n], by_centers=True
    )
    for r in range(len(centres.bounds) - 1):
        nearest_by_groups(
            partial_t=partial_t,
            gathered=scratch.gathered[:n],
            start=start,
            kept=scratch.kept,
            x_sq=scratch.x_sq,
            run=r,
            screen=groups,
            nearest=nearest,
            scan=scratch.scan,
        )


@_compile
def accumulate_rows(xs, weights, nearest, centres, first_row, per_row, totals, far):
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
                    keep_far(far=far, run=r, squared=squared, row=first_row + i, label=label)


@_compile
def keep_far(far, run, squared, row, label):
    """Put a row into the run's worst far-point slot (the nearest, then the latest
    row): called for rows strictly farther than that slot, so ties keep the earlier
    row, as :meth:`~dkmeans.statistics.FarPoints.select` does (one rule in two places:
    ``test_far_point_slots_keep_what_far_points_select`` pins them together)."""
    worst = 0
    for slot in range(1, far.distances.shape[1]):
        d, d_worst = far.distances[run, slot], far.distances[run, worst]
        if d < d_worst or (d == d_worst and far.rows[run, slot] > far.rows[run, worst]):
            worst = slot
    far.distances[run, worst] = squared
    far.rows[run, worst] = row
    far.labels[run, worst] = label
    far.worst[run] = far.distances[run].min()


@_compile
def merge_moments(xs, moments):
    """Merge the per-feature moments of ``xs`` into ``moments`` (:class:`MomentSums`) in
    place; nothing for moments of no features (:func:`no_moments`).

    Two passes over the (cached) sub-block, then Chan et al.'s pairwise update.
    """
    if len(moments.mean) == 0:
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


class BlockScratch(NamedTuple):
    """Scratch of :func:`assign_rows`, for sub-blocks of up to as many rows as
    ``nearest`` has (see :func:`block_scratch`)."""

    partial: np.ndarray  # (rows * K,) the GEMM of a sub-block, in the GEMM dtype
    nearest: np.ndarray  # (rows, R) uint64 stacked index of every row's nearest centre
    scan: Scan  # best value and index of every row; with bounds, its second best and ||x||²
    gathered_rows: np.ndarray  # (rows or 0, d) copies of the rows the bounds let through
    gathered: np.ndarray  # (rows or 0,) int64 their block rows
    groups: GroupScratch  # with group bounds (else of no rows)
    moved: np.ndarray  # (rows or 0, d) a sub-block widened or shifted (else of no rows)


@_compile
def block_scratch(block, centres, screen, groups, rows):
    """:class:`BlockScratch` of :func:`assign_rows` for ``block`` (:class:`BlockRows`:
    only its dtype, features, shift and widening) in sub-blocks of up to ``rows`` rows;
    ``screen`` and ``groups`` as :func:`assign_block` gets them (None: no scratch)."""
    n_features, bounds = block.x.shape[1], centres.bounds
    n_centers, dtype = centres.gemm.shape[0], centres.gemm.dtype
    screened = 0 if screen is None else rows
    n_groups = group_count(groups)
    grouped = rows if n_groups else 0
    copied = block.shift is not None or block.widen is not None
    return BlockScratch(
        partial=np.empty(rows * n_centers, dtype=dtype),
        nearest=np.empty((rows, len(bounds) - 1), dtype=np.uint64),
        scan=Scan(
            best_value=np.empty(rows, dtype=dtype),
            best_index=np.empty(rows, dtype=np.int64),
            second=np.empty(screened, dtype=dtype),
            x_sq=np.empty(screened),
        ),
        gathered_rows=np.empty((screened, n_features), dtype=dtype),
        gathered=np.empty(screened, dtype=np.int64),
        groups=GroupScratch(
            gathered=np.empty(grouped, dtype=np.int64),
            kept=np.empty((grouped, len(bounds) - 1), dtype=np.bool_),
            x_sq=np.empty(grouped),
            rows=np.empty((grouped, n_features), dtype=dtype),
            scan=Scan(
                best_value=np.empty((n_groups, grouped), dtype=dtype),
                best_index=np.empty((n_groups, grouped), dtype=np.int64),
                second=np.empty((n_groups, grouped), dtype=dtype),
                x_sq=np.empty(0),
            ),
        ),
        moved=np.empty((rows if copied else 0, n_features), dtype=dtype),
    )


@_compile
def assign_block(block, centres, out, screen, groups, step, by_centers):
    """The whole block in one compiled call: GEMM per sub-block, then the fused scan
    (:func:`assign_rows` with its :func:`block_scratch`).

    Runs without the GIL from start to end (numba's ``np.dot`` calls BLAS), so the
    threads of a Dask worker never wait on each other between sub-blocks. ``block``
    (:class:`BlockRows`) and ``centres`` (:class:`StackedCentres`) are read, ``out``
    (:class:`PassOutputs`) filled in. With ``screen`` (:class:`Screen`, see
    :func:`screen_rows`), only the rows whose centre may have changed go through the
    GEMM and the scan (all rows of a sub-block where a quarter may have);
    ``out.per_row`` then holds the rows' results of the last pass, and receives this
    pass's. With ``groups`` instead (:class:`GroupScreen`, see :func:`screen_groups`),
    Yinyang's group bounds screen the rows (:func:`scan_nearest_groups`). Without
    group bounds, ``by_centers`` chooses the GEMM's layout
    (:func:`~dkmeans.kernels.gemm_by_centers`).
    With ``block.shift`` or ``block.widen`` (float16 rows), every sub-block is first
    copied, widened and minus the shift (:mod:`dkmeans.frame`), into a buffer that stays
    in cache, and everything is computed from that copy.
    """
    scratch = block_scratch(
        block=block, centres=centres, screen=screen, groups=groups, rows=min(step, len(block.x))
    )
    assign_rows(
        block=block,
        centres=centres,
        out=out,
        screen=screen,
        groups=groups,
        step=step,
        by_centers=by_centers,
        scratch=scratch,
        rows=(0, len(block.x)),
    )


@_compile
def assign_rows(block, centres, out, screen, groups, step, by_centers, scratch, rows):
    """:func:`assign_block` of rows ``rows[0]:rows[1]`` of ``block`` (in sub-blocks from
    ``rows[0]``, numbered as rows of ``block`` in ``out.far``), with its scratch
    (:class:`BlockScratch`) given: blocks that follow one another in ``block`` share one
    scratch and one set of far-point slots (:func:`assign_blocks`)."""
    x, bounds, partial = block.x, centres.bounds, scratch.partial
    nearest, scan, gathered = scratch.nearest, scratch.scan, scratch.gathered
    first, last = rows
    for start in range(first, last, step):
        stop = min(start + step, last)
        block_nearest = nearest[: stop - start]
        xs = rows_seen(
            x=x, start=start, stop=stop, shift=block.shift, widen=block.widen, buffer=scratch.moved
        )
        if groups is not None:
            scan_nearest_groups(
                xs=xs,
                start=start,
                stop=stop,
                partial=partial,
                centres=centres,
                last=out.per_row,
                groups=groups,
                nearest=block_nearest,
                scratch=scratch.groups,
            )
        elif screen is None:
            scan_nearest(
                buffer=partial,
                xs=xs,
                by_centers=by_centers,
                centres=centres,
                nearest=block_nearest,
                scan=scan,
            )
        else:
            n = screen_rows(
                start=start,
                stop=stop,
                bounds=bounds,
                last=out.per_row,
                screen=screen,
                nearest=block_nearest,
                gathered=gathered,
            )
            # few rows: the GEMM of a copy of them, centres by rows; most: all rows, laid
            # out as without bounds (rows by centres where that is faster: a pass that
            # renews the bounds at 2M x 32, k = 16)
            few = 4 * n < stop - start
            if few:
                for g in range(n):
                    scratch.gathered_rows[g] = xs[gathered[g] - start]
                measured = sub_block_gemm(
                    partial=partial,
                    centers_gemm=centres.gemm,
                    xs=scratch.gathered_rows[:n],
                    by_centers=True,
                )
            else:
                n = stop - start
                gathered[:n] = np.arange(start, stop)
                measured = sub_block_gemm(
                    partial=partial, centers_gemm=centres.gemm, xs=xs, by_centers=by_centers
                )
            scan_nearest_two(
                xs=xs,
                partial=measured,
                by_centers=few or by_centers,
                centres=centres,
                gathered=gathered[:n],
                start=start,
                nearest=block_nearest,
                screen=screen,
                scan=scan,
            )
        accumulate_rows(
            xs=xs,
            weights=rows_of(block.weights, start, stop),
            nearest=block_nearest,
            centres=centres,
            first_row=start,
            per_row=per_row_of(out.per_row, start, stop),
            totals=out.totals,
            far=out.far,
        )
        merge_moments(xs=xs, moments=out.moments)


@_compile
def measure_candidates(buffer, xs, by_centers, centres, runs, nearest, scan):
    """Fold the candidates ``centres`` (:class:`StackedCentres`) into the nearest so far
    of every row of the sub-block ``xs``, run by run, from its GEMM
    (:func:`sub_block_gemm` into ``buffer``). A candidate replaces a row's nearest
    (``nearest``, :class:`NearestCandidates` of the sub-block's rows) only when strictly
    nearer, so ties keep the lowest index.
    """
    bounds = centres.bounds
    partial = sub_block_gemm(
        partial=buffer, centers_gemm=centres.gemm, xs=xs, by_centers=by_centers
    )
    n_rows = xs.shape[0]
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        if hi == lo:
            continue
        argmin_run(partial=partial, by_centers=by_centers, centres=centres, lo=lo, hi=hi, scan=scan)
        column = runs.columns[r]
        for i in range(n_rows):
            if scan.best_value[i] < nearest.partial[i, column]:
                nearest.partial[i, column] = scan.best_value[i]
                nearest.index[i, column] = runs.first_index[r] + scan.best_index[i]


@_compile
def measure_block(block, centres, runs, nearest, fresh, cost, counts, draws, step, by_centers):
    """One pass of k-means|| over a block in one compiled call, without the GIL.

    Per row sub-block of ``block`` (:class:`BlockRows`, no shift; float16 rows are
    widened into a cached copy): one GEMM against the new candidates of every run (``centres``,
    :class:`StackedCentres`; ``runs``, :class:`CandidateRuns`), the rows'
    nearest candidates (:func:`measure_candidates`), then per row and run its mass ``w * d²``
    added to the run's ``cost``, and either its weight (and weighted row) added to its
    nearest candidate's (``counts``, :class:`CandidateCounts`: the weighing pass) or its
    oversampling key computed (``draws``, :class:`Draws`: a round). A row is kept in the
    draws' slots while its key is at least the cost so far (the block's cost only grows,
    so a row dropped here could never be kept). Returns False when a run keeps more rows than its
    slots hold. ``counts`` or ``draws`` of no runs (empty arrays: :data:`NO_COUNTS`,
    :func:`no_draws`) are skipped: both kinds of pass share one compiled variant, which
    numba loads from its disk cache once per process (tens of milliseconds each, paid
    by a process's first k-means||). With ``fresh``,
    ``nearest`` (:class:`NearestCandidates`) is scratch of one sub-block; otherwise it
    holds the block's rows. ``by_centers`` chooses the GEMM's layout
    (:func:`~dkmeans.kernels.gemm_by_centers`).
    """
    x, bounds, columns = block.x, centres.bounds, runs.columns
    n_rows, n_features = x.shape
    n_centers, dtype = centres.gemm.shape[0], centres.gemm.dtype
    weighing, sampling = counts.edges.size > 1, draws.streams.size > 0
    partial = np.empty(min(step, n_rows) * n_centers, dtype=dtype)
    widened = np.empty((0 if block.widen is None else min(step, n_rows), n_features), dtype)
    scan = Scan(
        best_value=np.empty(min(step, n_rows)),
        best_index=np.empty(min(step, n_rows), dtype=np.int64),
        second=np.empty(0),
        x_sq=np.empty(0),
    )
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        if fresh:
            rows = NearestCandidates(
                partial=nearest.partial[: stop - start], index=nearest.index[: stop - start]
            )
            rows.partial[:] = np.inf
            rows.index[:] = -1
        else:
            rows = NearestCandidates(
                partial=nearest.partial[start:stop], index=nearest.index[start:stop]
            )
        xs = rows_seen(x=x, start=start, stop=stop, shift=None, widen=block.widen, buffer=widened)
        measure_candidates(
            buffer=partial,
            xs=xs,
            by_centers=by_centers,
            centres=centres,
            runs=runs,
            nearest=rows,
            scan=scan,
        )
        for i in range(stop - start):
            w = weight_of(block.weights, start + i)
            if not w > 0:
                continue
            x_sq = 0.0
            for f in range(n_features):
                value = np.float64(xs[i, f])
                x_sq += value * value
            for r in range(len(bounds) - 1):
                column = columns[r]
                mass = w * max(rows.partial[i, column] + x_sq, 0.0)
                cost[r] += mass
                if weighing and rows.index[i, column] >= 0:
                    add_compensated(
                        high=counts.high,
                        low=counts.low,
                        row=counts.edges[r] + rows.index[i, column],
                        values=xs[i],
                        weight=w,
                    )
                if not sampling or not mass > 0:
                    continue
                row = np.uint64(draws.first_row + start + i)
                u = uniform(draws.streams[r], row)
                key = draws.oversampling[r] * mass / u
                if key >= cost[r]:
                    slots = draws.kept_rows.shape[1]
                    if draws.n_kept[r] == slots:
                        drop_below(draws=draws, run=r, threshold=cost[r])
                        if draws.n_kept[r] == slots:
                            return False
                    draws.kept_rows[r, draws.n_kept[r]] = start + i
                    draws.kept_keys[r, draws.n_kept[r]] = key
                    draws.n_kept[r] += 1
    return True


@_compile_exact
def add_compensated(high, low, row, values, weight):
    """Adds ``weight * values`` and, in the last column, ``weight`` to row ``row`` of the
    compensated sums ``high + low`` (:func:`dkmeans.compensated.two_sum` per column)."""
    n_values = values.shape[0]
    for f in range(n_values + 1):
        term = weight * np.float64(values[f]) if f < n_values else weight
        total = high[row, f] + term
        part = total - high[row, f]
        low[row, f] += (high[row, f] - (total - part)) + (term - part)
        high[row, f] = total


@_compile
def drop_below(draws, run, threshold):
    """Keep only the run's kept rows (:class:`Draws`) whose key is at least ``threshold``."""
    filled = 0
    for slot in range(draws.n_kept[run]):
        if draws.kept_keys[run, slot] >= threshold:
            draws.kept_rows[run, filled] = draws.kept_rows[run, slot]
            draws.kept_keys[run, filled] = draws.kept_keys[run, slot]
            filled += 1
    draws.n_kept[run] = filled


@_compile
def exponential_keys(weights, stream, row0, out):
    """``out[i] = Exp(1) / w[i]`` of row ``row0 + i`` (``inf`` where ``w[i] <= 0``);
    ``weights`` of None (all ones) are compiled out."""
    for i in range(out.shape[0]):
        w = 1.0 if weights is None else weights[i]
        if w > 0:
            out[i] = -np.log(uniform(stream, np.uint64(row0 + i))) / w
        else:
            out[i] = np.inf


@_compile
def smallest_per_row(values, out):
    """``out[i]``: the columns of the ``out.shape[1]`` smallest values of row ``i`` of
    ``values``, smallest first, equal values in column order (the twin of
    :func:`~dkmeans.kernels.smallest_first`). One pass along every row, inserting into its
    short sorted list only the values smaller than the list's last."""
    n_smallest = out.shape[1]
    best = np.empty(n_smallest, dtype=values.dtype)
    for i in range(values.shape[0]):
        filled = 0
        for j in range(values.shape[1]):
            value = values[i, j]
            if filled == n_smallest and not value < best[n_smallest - 1]:
                continue
            position = min(filled, n_smallest - 1)  # a new slot, or the last one's
            while position > 0 and value < best[position - 1]:  # equal values stay before
                best[position] = best[position - 1]
                out[i, position] = out[i, position - 1]
                position -= 1
            best[position] = value
            out[i, position] = j
            filled = min(filled + 1, n_smallest)


@_compile
def chosen_distances(xs, centers, chosen, out):
    """``out[i, j]``: the squared distance of row ``xs[i]`` to the centre ``chosen[i, j]``
    of ``centers`` (float64), computed directly in float64."""
    for i in range(xs.shape[0]):
        for j in range(chosen.shape[1]):
            centre = chosen[i, j]
            total = 0.0
            for f in range(xs.shape[1]):
                diff = np.float64(xs[i, f]) - centers[centre, f]
                total += diff * diff
            out[i, j] = total


@_compile
def moments_of_block(moments, b):
    """Block ``b``'s :class:`MomentSums` of moments stacked by block."""
    return MomentSums(count=moments.count[b], mean=moments.mean[b], m2=moments.m2[b])


@_compile
def no_moments():
    """:class:`MomentSums` of no features: moments not asked for."""
    return MomentSums(count=np.zeros(0), mean=np.zeros(0), m2=np.zeros(0))


@_compile
def entry_totals(totals, entry):
    """Entry ``entry`` of ``totals`` (:class:`Totals` with a leading axis), as views."""
    return Totals(
        sums=totals.sums[entry], counts=totals.counts[entry], inertia=totals.inertia[entry]
    )


@_compile
def clear_entry(totals, entry):
    """Entry ``entry`` of ``totals`` set to zero, by index: no view per call (a block of
    a few rows made several, each a pair of atomic reference counts)."""
    n_centers, n_features = totals.sums.shape[1], totals.sums.shape[2]
    for j in range(n_centers):
        for f in range(n_features):
            totals.sums[entry, j, f] = 0.0
        totals.counts[entry, j] = 0.0
        totals.inertia[entry, j] = 0.0


@_compile
def add_entry(totals, target, source, first):
    """Entry ``target`` of ``totals`` becomes entry ``source`` if ``first``, else their
    sum, by index (:func:`clear_entry`)."""
    n_centers, n_features = totals.sums.shape[1], totals.sums.shape[2]
    for j in range(n_centers):
        for f in range(n_features):
            value = totals.sums[source, j, f]
            totals.sums[target, j, f] = value if first else totals.sums[target, j, f] + value
        counts, inertia = totals.counts[source, j], totals.inertia[source, j]
        totals.counts[target, j] = counts if first else totals.counts[target, j] + counts
        totals.inertia[target, j] = inertia if first else totals.inertia[target, j] + inertia


@_compile
def fold_totals(totals, b, n_blocks, split_every):
    """Fold block ``b``'s totals, entry 0 of ``totals`` (:class:`Totals` with one entry
    per level of the combining tree of fan-in ``split_every`` over ``n_blocks`` blocks),
    into the nodes that it completes: entry ``l + 1`` is the node of level ``l + 1``
    being summed, its children's values added left to right as they complete, as
    :func:`~dkmeans.tree.combine_all` adds them (the first copied, the others added:
    the same additions, to the last bit)."""
    width = 1
    for level in range(totals.counts.shape[0] - 1):
        if (b + 1) % width != 0 and b != n_blocks - 1:
            return  # the child of this level is not complete yet
        first = b // width % split_every == 0
        add_entry(totals=totals, target=level + 1, source=level, first=first)
        width *= split_every


@_compile
def assign_blocks(block, edges, centres, out, step, by_centers, split_every):
    """:func:`assign_block` on consecutive blocks in one call, their totals combined as
    the fixed tree of fan-in ``split_every`` over them combines them (the blocks are the
    leaves of a tree of their own, or of one node of a larger one): rows
    ``edges[b]:edges[b + 1]`` of ``block`` are block ``b``, processed exactly as alone
    (its own sub-blocks and GEMMs, its totals from zero).

    ``out`` (:class:`PassOutputs` without per-row results): ``totals`` holds one entry
    per level of that tree (:func:`fold_totals`; the last receives the combined totals),
    ``moments`` one entry per block (or none: not asked for), and ``far`` the far points
    of all blocks, as rows of ``block``: one set of slots that sees the blocks' rows in
    order keeps what the blocks' own slots, merged, would (the farthest rows, ties to
    the earlier). Scratch is allocated once for all blocks: per block it cost more than
    the arithmetic of a block of 8 rows, and so did a stack of every block's totals
    folded afterwards."""
    n_blocks = len(edges) - 1
    largest = 0
    for b in range(n_blocks):
        largest = max(largest, edges[b + 1] - edges[b])
    scratch = block_scratch(
        block=block, centres=centres, screen=None, groups=None, rows=min(step, largest)
    )
    # the leaf's outputs made once, not per block: a view or a tuple of arrays made per
    # block costs a pair of atomic reference counts per array (22% of a pass over blocks
    # of 8 rows), and so did slicing the block
    leaf = PassOutputs(
        per_row=None, totals=entry_totals(out.totals, 0), far=out.far, moments=no_moments()
    )
    for b in range(n_blocks):
        lo, hi = edges[b], edges[b + 1]
        clear_entry(totals=out.totals, entry=0)
        assign_rows(
            block=block,
            centres=centres,
            out=leaf,
            screen=None,
            groups=None,
            step=step,
            by_centers=by_centers,
            scratch=scratch,
            rows=(lo, hi),
        )
        if len(out.moments.count) > 0:  # a block's moments asked for: its entry, no copy
            block_moments(
                block=block, rows=(lo, hi), step=step, buffer=scratch.moved,
                moments=moments_of_block(out.moments, b),
            )  # fmt: skip
        fold_totals(totals=out.totals, b=b, n_blocks=n_blocks, split_every=split_every)


@_compile
def block_moments(block, rows, step, buffer, moments):
    """:func:`merge_moments` of rows ``rows[0]:rows[1]`` of ``block`` as seen
    (:func:`rows_seen`), sub-block by sub-block as :func:`assign_rows` merges them."""
    first, last = rows
    for start in range(first, last, step):
        stop = min(start + step, last)
        xs = rows_seen(
            x=block.x, start=start, stop=stop, shift=block.shift, widen=block.widen, buffer=buffer
        )
        merge_moments(xs=xs, moments=moments)


#: What :func:`minibatch_rows` stopped at: all its rows done, a batch whose centres of
#: low count are to be reassigned (by the caller, then :func:`finish_step`), or a batch
#: after which the stopping rule ends the fit.
BATCHES_DONE, REASSIGN, STOPPED = 0, 1, 2


class MiniBatchModel(NamedTuple):
    """The centres of mini-batch k-means and what their updates keep (in and out)."""

    centers: np.ndarray  # (k, d) float64
    counts: np.ndarray  # (k,) float64: weight every centre has been given
    previous: np.ndarray  # (k, d) float64: the centres before the last batch
    steps: np.ndarray  # (2,) int64: batches processed, rows since the reassignment check


class MiniBatchRule(NamedTuple):
    """How mini-batch k-means updates its centres (inputs)."""

    batch_size: int  # the configured batch size: rows counted towards the reassignment check
    reassignment_ratio: float  # centres of count below this fraction of the largest move
    unit: bool  # spherical k-means: every updated centre is scaled back to unit norm
    wide_above: float  # centres larger than this: the GEMM in float64 (inf: never)
    by_centers: bool  # GEMM layout in the data's dtype (:func:`~dkmeans.kernels.gemm_by_centers`)
    wide_by_centers: bool  # ... in float64
    step: int  # rows per sub-block


class EarlyStopping(NamedTuple):
    """scikit-learn's stopping rule of ``MiniBatchKMeans.fit`` (inputs, and its state in
    and out; see :func:`stop_after`)."""

    batch_size: int  # the batch inertia is smoothed per this many rows
    alpha: float  # smoothing weight of a batch
    tol: float  # stop when a batch moves the centres by at most this (squared); 0: never
    patience: int  # stop after this many batches without improvement; -1: never
    smoothed: np.ndarray  # (2,) float64: the smoothed batch inertia and its minimum (NaN: none)
    counters: np.ndarray  # (2,) int64: batches seen, batches since the minimum improved


class BatchScratch(NamedTuple):
    """Scratch of the batches of one :func:`minibatch_rows` call, in the GEMM dtype."""

    gemm: np.ndarray  # (k, d) -2 * centres
    squared_norms: np.ndarray  # (k,) ||c||² as rounded to the GEMM dtype
    partial: np.ndarray  # (sub-block rows * k,) the GEMM of a sub-block
    nearest: np.ndarray  # (sub-block rows, 1) uint64
    scan: Scan
    totals: Totals


def prefetch_row(x, row):
    """Ask the CPU to start loading row ``row`` of the 2-D array ``x`` into its caches:
    a hint, with no effect on any result (nothing at all without numba)."""


if numba is not None:

    @numba.extending.intrinsic
    def _prefetch(typingctx, x, row):
        # LLVM's prefetch of the row's first cache line: read, keep in all cache levels
        from llvmlite import ir
        from numba.core import cgutils

        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            array = context.make_array(array_type)(context, builder, args[0])
            zero = context.get_constant(numba.types.intp, 0)
            pointer = cgutils.get_item_pointer(
                context, builder, array_type, array, [args[1], zero], wraparound=False
            )
            byte, word = ir.IntType(8).as_pointer(), ir.IntType(32)
            hint = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [byte, word, word, word]),
                "llvm.prefetch.p0i8",
            )
            flags = [ir.Constant(word, value) for value in (0, 3, 1)]
            builder.call(hint, [builder.bitcast(pointer, byte), *flags])
            return context.get_dummy_value()

        return numba.types.void(x, numba.types.intp), codegen

    @numba.extending.overload(prefetch_row, inline="always", jit_options={"nogil": True})
    def _prefetch_row_compiled(x, row):
        return lambda x, row: _prefetch(x, row)


#: Rows that :func:`take_rows` asks the CPU for ahead of the one it copies.
PREFETCH_AHEAD = 8


@_compile
def take_rows(x, order, out):
    """``out[i] = x[order[i]]``: rows gathered (the twin of ``np.take(x, order, axis=0)``),
    for a block of a shuffled mini-batch epoch (:func:`~dkmeans.kernels.rows_in_order`).

    Rows in a random order of a block beyond the caches wait on memory one after the
    other; asking for the rows :data:`PREFETCH_AHEAD` ahead overlaps those waits (262,144
    x 32 float32 rows: 9.5 against 13.8 ms).
    """
    n_rows = len(order)
    for i in range(n_rows):
        if i + PREFETCH_AHEAD < n_rows:
            prefetch_row(x, order[i + PREFETCH_AHEAD])
        row = order[i]
        for f in range(x.shape[1]):
            out[i, f] = x[row, f]


@_compile
def batch_scratch(x, n_rows, n_centers, step):
    """:class:`BatchScratch` for batches of up to ``n_rows`` rows of the dtype of ``x``."""
    rows = min(step, n_rows)
    return BatchScratch(
        gemm=np.empty((n_centers, x.shape[1]), dtype=x.dtype),
        squared_norms=np.empty(n_centers, dtype=x.dtype),
        partial=np.empty(rows * n_centers, dtype=x.dtype),
        nearest=np.empty((rows, 1), dtype=np.uint64),
        scan=Scan(
            best_value=np.empty(rows, dtype=x.dtype),
            best_index=np.empty(rows, dtype=np.int64),
            second=np.empty(0, dtype=x.dtype),
            x_sq=np.empty(0),
        ),
        totals=Totals(
            sums=np.empty((n_centers, x.shape[1])),
            counts=np.empty(n_centers),
            inertia=np.empty(n_centers),
        ),
    )


@_compile
def batch_totals(xs, weights, centers, scratch, by_centers, step):
    """Per-centre weighted sums, weights and inertia of the rows ``xs`` at their nearest
    centre into ``scratch.totals``, as :func:`assign_block` finds them (one GEMM per
    sub-block of ``step`` rows, in the dtype of ``xs``); returns the inertia."""
    n_centers, n_features = centers.shape
    gemm, squared_norms = scratch.gemm, scratch.squared_norms
    for j in range(n_centers):
        total = 0.0
        for f in range(n_features):
            gemm[j, f] = -2 * centers[j, f]
            rounded = np.float64(gemm[j, f])
            total += rounded * rounded
        squared_norms[j] = total / 4
    centres = StackedCentres(
        gemm=gemm,
        squared_norms=squared_norms,
        exact=centers,
        bounds=np.array([0, n_centers], dtype=np.int64),
    )
    totals = scratch.totals
    totals.sums[:] = 0.0
    totals.counts[:] = 0.0
    totals.inertia[:] = 0.0
    for start in range(0, xs.shape[0], step):
        stop = min(start + step, xs.shape[0])
        nearest = scratch.nearest[: stop - start]
        scan_nearest(
            buffer=scratch.partial,
            xs=xs[start:stop],
            by_centers=by_centers,
            centres=centres,
            nearest=nearest,
            scan=scratch.scan,
        )
        accumulate_rows(
            xs=xs[start:stop],
            weights=rows_of(weights, start, stop),
            nearest=nearest,
            centres=centres,
            first_row=start,
            per_row=None,
            totals=totals,
            far=None,
        )
    return totals.inertia.sum()


@_compile
def moved_centres(model, totals, unit):
    """Sculley's update: every centre given rows moves to the weighted mean of all rows
    it has been given, ``(n c + Σ w x) / (n + Σ w)``; the centres before it go into
    ``model.previous``. With ``unit``, every centre is scaled back to unit norm (one
    whose rows cancelled out keeps its direction)."""
    centers, counts, previous = model.centers, model.counts, model.previous
    n_centers, n_features = centers.shape
    for j in range(n_centers):
        total = counts[j] + totals.counts[j]
        for f in range(n_features):
            previous[j, f] = centers[j, f]
            if totals.counts[j] > 0:
                centers[j, f] = (centers[j, f] * counts[j] + totals.sums[j, f]) / total
        counts[j] = total
        if unit:
            squared = 0.0
            for f in range(n_features):
                squared += centers[j, f] * centers[j, f]
            norm = np.sqrt(squared)
            usable = np.isfinite(norm) and norm > 0
            for f in range(n_features):
                centers[j, f] = centers[j, f] / norm if usable else previous[j, f]


@_compile
def reassignment_checked(model, rule):
    """Whether the batch about to update the centres is followed by a reassignment
    check: scikit-learn's schedule, decided before the update (a centre has no weight
    yet, or ``10 k`` rows, counted in ``batch_size``, since the last check)."""
    counts, steps = model.counts, model.steps
    steps[1] += rule.batch_size
    if steps[1] < 10 * len(counts) and counts.min() > 0:
        return False
    steps[1] = 0
    return True


@_compile
def reassignment_due(model, rule, checked):
    """Whether the centres of low count are to be reassigned after this batch's update:
    the batch is ``checked`` (:func:`reassignment_checked`), and some but not all
    centres are below ``reassignment_ratio`` of the largest count."""
    counts = model.counts
    if not checked or not rule.reassignment_ratio > 0:
        return False
    low = 0
    threshold = rule.reassignment_ratio * counts.max()
    for j in range(len(counts)):
        low += counts[j] < threshold
    return 0 < low < len(counts)


@_compile
def stop_after(early, inertia, center_shift):
    """scikit-learn's stopping rule after a batch of weighted ``inertia`` that moved the
    centres by ``center_shift`` (squared): the batch inertia per ``batch_size`` rows,
    smoothed with weight ``alpha`` from the second batch on, has not improved for
    ``patience`` batches, or ``center_shift`` is at most ``tol``."""
    smoothed, counters = early.smoothed, early.counters
    counters[0] += 1
    if counters[0] == 1:
        return False
    per_row = inertia / early.batch_size
    if np.isnan(smoothed[0]):
        smoothed[0] = per_row
    else:
        smoothed[0] = smoothed[0] * (1 - early.alpha) + per_row * early.alpha
    if early.tol > 0 and center_shift <= early.tol:
        return True
    if np.isnan(smoothed[1]) or smoothed[0] < smoothed[1]:
        counters[1] = 0
        smoothed[1] = smoothed[0]
    else:
        counters[1] += 1
    return early.patience >= 0 and counters[1] >= early.patience


@_compile
def finish_step(model, inertia, early):
    """Count the batch, and whether ``early`` (:class:`EarlyStopping`; None: never)
    stops the fit after it."""
    model.steps[0] += 1
    if early is None:
        return False
    center_shift = 0.0
    for j in range(model.centers.shape[0]):
        for f in range(model.centers.shape[1]):
            moved = model.centers[j, f] - model.previous[j, f]
            center_shift += moved * moved
    return stop_after(early=early, inertia=inertia, center_shift=center_shift)


@_compile
def wide_batch_totals(xs, weights, centers, rule):
    """:func:`batch_totals` of float32 rows in float64, for centres too large for a
    float32 GEMM (:data:`~dkmeans.kernels.FLOAT32_GEMM_MAX_CENTER`)."""
    wide = xs.astype(np.float64)
    scratch = batch_scratch(x=wide, n_rows=len(wide), n_centers=len(centers), step=rule.step)
    inertia = batch_totals(
        xs=wide,
        weights=weights,
        centers=centers,
        scratch=scratch,
        by_centers=rule.wide_by_centers,
        step=rule.step,
    )
    return inertia, scratch.totals


@_compile
def minibatch_rows(x, weights, start, stop, rows_per_batch, model, rule, early):
    """Mini-batch k-means over the rows ``start:stop`` of ``x`` in one compiled call,
    without the GIL: batches of ``rows_per_batch`` consecutive rows (the last may be
    shorter), each one GEMM (:func:`batch_totals`), Sculley's update
    (:func:`moved_centres`), the reassignment check and the stopping rule
    (:func:`finish_step`) on ``model`` (:class:`MiniBatchModel`) by ``rule``
    (:class:`MiniBatchRule`) and ``early`` (:class:`EarlyStopping`, None: never).

    Returns ``(status, position, inertia)``: :data:`BATCHES_DONE` at ``stop``, or after
    the batch ending at ``position`` of weighted ``inertia``, :data:`REASSIGN` (that
    batch is not counted yet: the caller reassigns, then calls :func:`finish_step`) or
    :data:`STOPPED`.
    """
    scratch = batch_scratch(
        x=x,
        n_rows=rows_per_batch,
        n_centers=len(model.centers),
        step=rule.step,
    )
    position = start
    while position < stop:
        end = min(position + rows_per_batch, stop)
        xs, ws = x[position:end], rows_of(weights, position, end)
        if np.abs(model.centers).max() > rule.wide_above:
            inertia, totals = wide_batch_totals(xs=xs, weights=ws, centers=model.centers, rule=rule)
        else:
            totals = scratch.totals
            inertia = batch_totals(
                xs=xs,
                weights=ws,
                centers=model.centers,
                scratch=scratch,
                by_centers=rule.by_centers,
                step=rule.step,
            )
        checked = reassignment_checked(model=model, rule=rule)
        moved_centres(model=model, totals=totals, unit=rule.unit)
        position = end
        if reassignment_due(model=model, rule=rule, checked=checked):
            return REASSIGN, position, inertia
        if finish_step(model=model, inertia=inertia, early=early):
            return STOPPED, position, inertia
    return BATCHES_DONE, position, 0.0
