"""Lloyd's algorithm over a :class:`~dkmeans.sources.Source`, several runs at once.

Semantics follow scikit-learn's ``KMeans(algorithm="lloyd")``: a run stops when its
centres stop changing or when the squared centre shift is at most ``tol`` times the
mean per-feature variance of the data; empty clusters are moved to the points
farthest from their centres; the reported inertia belongs to the final centres.

All active runs advance together: one pass over the data per iteration serves all of
them, and a run that has converged drops out of the next pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .cosine import Metric, inertia_per_squared_distance, unit_centers, unit_rows
from .frame import shifted
from .groups import CentreGroups
from .io import ZERO_WEIGHTS
from .kernels import pass_statistics, ranked_centers
from .resources import may_remember
from .row_memory import (
    DistanceBounds,
    RowMemory,
    distance_bounds_memory,
    group_bounds_memory,
    labels_memory,
    labels_of_run,
    skipped_fraction,
)
from .sources import InMemorySource, Source
from .statistics import FarPoints, PassStats

#: Bytes of distance bounds kept per row and run (centre, distance, lower bound).
BOUNDS_BYTES_PER_ROW_AND_RUN = 24
#: Distance bounds are kept when a pass multiplies at least this many row-centre-feature
#: triples (n * K * d); below it, a pass costs about a millisecond and keeping the
#: bounds costs more than the distances it skips.
BOUNDS_MIN_WORK = 2**22
#: A pass uses the bounds when the rows they let it skip save at least this many
#: multiply-adds per row on average (skipped fraction times the centres of a run times
#: d) and at least :data:`BOUNDS_MIN_SKIPPED` of the rows: a bounded pass that skips
#: little costs more than a full one (it also finds every gathered row's second-nearest
#: centre). With fewer centres times features than this, bounds are never kept. At
#: k = 16, d = 32 (2M rows, one pass at a time on 2 threads), a full pass took 55 ms
#: and a bounded one 63-97 ms at 81-89% of the rows skipped, 45-55 ms at 98%.
BOUNDS_MIN_SAVING = 448
BOUNDS_MIN_SKIPPED = 0.15
#: Hamerly's bounds (runs of fewer than :data:`GROUP_BOUNDS_MIN_CENTERS` centres) need
#: more: their pass cuts a sub-block's GEMM only where fewer than a quarter of its rows
#: are gathered (:func:`~dkmeans.loops.assign_block`), and below that costs a full pass
#: plus the screening (2M x 32 structureless rows, k = 16: 1.4x a full pass at about
#: half the rows skipped).
HAMERLY_MIN_SKIPPED = 0.8
#: A pass that streams X from its store (not held in memory) keeps bounds only where its
#: arithmetic outweighs the reading, with at least this many centres per run, and where
#: the bounds take at most :data:`STREAMED_BOUNDS_FRACTION` of X's bytes (a streaming
#: fit keeps its memory small).
STREAMED_BOUNDS_MIN_CENTERS = 128
STREAMED_BOUNDS_FRACTION = 0.125
#: Runs of at least this many centres keep Yinyang's group bounds (:mod:`dkmeans.groups`)
#: instead of Hamerly's: one lower bound per row and group of about
#: :data:`CENTERS_PER_GROUP` centres (Ding et al.'s k / 10 groups), in float32, next to
#: the row's centre and distance (16 bytes). At most :data:`MAX_GROUPS` groups, and the
#: bounds take at most :data:`GROUP_BOUNDS_FRACTION` of X's bytes (streamed:
#: :data:`STREAMED_BOUNDS_FRACTION`); fewer than :data:`MIN_GROUPS` groups: Hamerly's.
#: Measured on blobs (`benchmarks/group_bounds.py`, quiet, per iteration relative to full
#: passes, Hamerly / Yinyang): k = 256: 0.46 / 0.51 (d = 768), 0.52 / 0.64 (d = 64);
#: k = 512: 0.49 / 0.52, 0.47 / 0.47; k = 1,024: 0.63 / 0.50; k = 4,096: 0.76 / 0.62.
GROUP_BOUNDS_MIN_CENTERS = 1024
CENTERS_PER_GROUP = 10
MAX_GROUPS = 256
MIN_GROUPS = 4
GROUP_BOUNDS_FRACTION = 0.5
#: Bytes of group bounds per row and run besides the groups' four each.
GROUP_BOUNDS_BYTES_PER_ROW_AND_RUN = 16
#: Far points a Lloyd pass keeps per run for empty clusters (:func:`_lloyd_pass`): at
#: large k, keeping k of them per block cost two thirds of a pass (10,000 x 64 rows,
#: k = 1,024).
FAR_POINTS_PER_RUN = 32
#: After this many full passes in a row (the bounds predicted too few skips), the next
#: pass renews the bounds anyway: the centres may have settled since. Every renewal
#: after which the bounds still predict too few skips doubles the wait (structureless
#: data, where renewing costs more than a full pass every time), up to
#: 2**:data:`MAX_RENEWAL_BACKOFF` times.
BOUNDS_RENEWED_AFTER = 4
MAX_RENEWAL_BACKOFF = 6
#: Before renewing Hamerly's bounds of data in memory, a pass predicts on a sample of
#: about this many rows what fresh bounds would skip at the next pass (every row's exact
#: nearest and second-nearest distances, and the centres' last step as their next one),
#: and makes a full pass instead when too few: a renewal costs about two full passes, and
#: on structureless data it never paid (2M x 32, k = 16: three in iterations 3-20). A
#: prediction under half of :data:`HAMERLY_MIN_SKIPPED` doubles the wait before the next,
#: as a renewal that did not pay does (200k x 768 structureless rows, k = 256: 0.2-0.4%
#: predicted at each of 15 passes in a row, each prediction 26 ms, a pass's 4%).
FRESH_SAMPLE_ROWS = 4096
#: A full pass renews the bounds at once when the centres' last step is under
#: 1/BOUNDS_SETTLED of the drift since the bounds were made: the centres have settled,
#: and fresh bounds will skip most rows from the next pass on.
BOUNDS_SETTLED = 4


@dataclass(frozen=True)
class IterationReport:
    """What one Lloyd iteration of one run did (for ``verbose`` and progress)."""

    run: int
    iteration: int
    inertia: float  # of the centres the iteration started from
    center_shift: float  # squared
    seconds: float


@dataclass(frozen=True)
class LloydResult:
    """Final state of one run."""

    centers: np.ndarray  # (k, d) float64
    inertia: float
    n_iter: int
    counts: np.ndarray  # (k,) weight of every cluster under the final centres
    #: (n,) int32 nearest final centre of every row, when the final pass kept them
    labels: np.ndarray | None = None


def stack_centers(centers: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the centres of several runs; return them and the run bounds."""
    bounds = np.concatenate([[0], np.cumsum([len(c) for c in centers])]).astype(np.int64)
    return np.concatenate([np.asarray(c, dtype=np.float64) for c in centers]), bounds


def check_finite_statistics(stats: PassStats, pass_number: int) -> None:
    """Raise if a pass's sums or inertia are not finite.

    The first pass over lazy data checks every value it reads; a later pass that meets
    NaN or infinity read data that changed during the fit (a store rewritten meanwhile,
    a flaky source). Checking the few summed statistics costs nothing per row.
    """
    if np.isfinite(stats.sums).all() and np.isfinite(stats.cluster_inertia).all():
        return
    raise ValueError(
        f"pass {pass_number} over X gave non-finite sums: X now holds NaN or infinity that "
        "an earlier pass did not see (was the data changed during the fit?). Fix the data "
        "and fit again"
    )


def tolerance(stats: PassStats, tol: float) -> float:
    """scikit-learn's absolute tolerance: ``tol`` times the mean feature variance."""
    if tol == 0:
        return 0.0
    return float(np.mean(stats.moments.variance) * tol)


def relocate_empty_clusters(sums: np.ndarray, counts: np.ndarray, far: FarPoints) -> None:
    """Move every empty cluster onto one of the farthest points, in place.

    As in scikit-learn, the point leaves its own cluster (its weighted coordinates
    and weight are subtracted there) and becomes the only member of the empty one.
    The farthest point goes to the empty cluster with the lowest index. When every
    point sits on its centre (more clusters than distinct points) nothing moves:
    relocating would only swap duplicates between clusters.
    """
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return
    chosen = far.chosen
    if len(chosen.distances) == 0 or chosen.distances[0] == 0:
        return
    for cluster, row, weight, own in zip(
        empty, chosen.rows, chosen.weights, chosen.labels, strict=False
    ):
        sums[own] -= row * weight
        counts[own] -= weight
        sums[cluster] = row * weight
        counts[cluster] = weight


def updated_centers(
    centers: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    far: FarPoints,
    metric: Metric = "euclidean",
) -> np.ndarray:
    """New centres from one pass's sums and counts, after empty-cluster relocation.

    A cluster still empty after relocation is placed on the centre of the heaviest
    cluster (the first one of the largest weight), as scikit-learn places it; without
    any weight at all the centres stay where they are. For ``metric="cosine"`` the
    means are scaled to unit norm (a cluster whose unit rows cancel out keeps its
    centre).
    """
    sums, counts = sums.copy(), counts.copy()
    relocate_empty_clusters(sums, counts, far)
    nonempty = counts > 0
    new = centers.copy()
    new[nonempty] = sums[nonempty] / counts[nonempty, None]
    if nonempty.any():
        new[~nonempty] = new[np.argmax(counts)]
    return unit_centers(new, fallback=centers) if metric == "cosine" else new


@dataclass
class LloydState:
    """Where a set of runs stands between two passes (what a checkpoint saves).

    ``final`` holds the runs whose result is known; the others continue from
    ``centers`` after ``n_iter`` iterations. ``tol_abs`` is None until the first pass
    has measured the variance of the data.
    """

    centers: list[np.ndarray]
    n_iter: list[int]
    stopped: list[bool]
    final: dict[int, LloydResult]
    tol_abs: float | None = None
    iteration: int = 0

    @classmethod
    def start(cls, initial_centers: Sequence[np.ndarray]) -> LloydState:
        centers = [np.array(c, dtype=np.float64) for c in initial_centers]
        return cls(centers, [0] * len(centers), [False] * len(centers), {})

    @property
    def active(self) -> list[int]:
        return [r for r, done in enumerate(self.stopped) if not done]

    @property
    def results(self) -> list[LloydResult] | None:
        """Results of all runs once every run is final, else None."""
        if len(self.final) < len(self.centers):
            return None
        return [self.final[r] for r in range(len(self.centers))]


class RowBounds:
    """Distance bounds of the rows kept from pass to pass, for one set of runs.

    Kept only where the kernels run in this process, when the bounds fit
    (:func:`~dkmeans.resources.may_remember`) and can pay (:data:`BOUNDS_MIN_WORK`,
    :data:`BOUNDS_MIN_SAVING`): for data in this process's memory, and for data
    streamed from its store where the pass is compute-bound (many centres) and the
    bounds are small next to X (:data:`STREAMED_BOUNDS_MIN_CENTERS`). A pass over
    another set of runs (one has converged)
    starts new bounds. Every pass first predicts from a sample of the rows how many
    its bounds would skip, and makes a full pass instead when too few
    (structureless data, centres still moving far); the bounds stay valid across
    such passes, measured against the centres they were last updated for.
    """

    def __init__(self, source: Source, initial_centers: Sequence[np.ndarray]) -> None:
        centers_per_run = max(len(c) for c in initial_centers)
        self.row_work = centers_per_run * source.n_features
        row_bytes = source.n_features * np.dtype(source.dtype).itemsize
        x_bytes = source.n_rows * row_bytes
        in_memory = isinstance(source, InMemorySource)
        self.groups_per_run = groups_per_run(centers_per_run, row_bytes, streamed=not in_memory)
        per_row = (
            GROUP_BOUNDS_BYTES_PER_ROW_AND_RUN + 4 * self.groups_per_run
            if self.groups_per_run
            else BOUNDS_BYTES_PER_ROW_AND_RUN
        )
        n_bytes = source.n_rows * len(initial_centers) * per_row
        streamed_pays = (
            centers_per_run >= STREAMED_BOUNDS_MIN_CENTERS
            and n_bytes <= STREAMED_BOUNDS_FRACTION * x_bytes
        )
        self.allowed = (
            source.in_process
            and (in_memory or streamed_pays)
            and self.row_work >= BOUNDS_MIN_SAVING
            and source.n_rows * self.row_work * len(initial_centers) >= BOUNDS_MIN_WORK
            and may_remember(True, n_bytes)
        )
        self.runs: list[int] | None = None
        self.memory: RowMemory | None = None
        self.groups: CentreGroups | None = None
        self.previous: np.ndarray | None = None  # the centres the bounds belong to
        self.unpaid: np.ndarray | None = None  # a drift after which the kept bounds did not pay
        self.latest: np.ndarray | None = None  # the centres of the last pass
        self.full_passes = 0  # full passes since the bounds were last updated
        self.fresh = False  # the last pass renewed the bounds without a prediction
        self.backoff = 0  # renewals (or predictions) in a row that did not pay: wait 2**backoff
        # rows on which a renewal of Hamerly's bounds is predicted (data in memory)
        self.sample = (
            sample_rows(source, FRESH_SAMPLE_ROWS)
            if self.allowed and in_memory and not self.groups_per_run
            else None
        )

    def for_pass(
        self, runs: list[int], stacked: np.ndarray, bounds: np.ndarray, *, last: bool = False
    ) -> DistanceBounds | None:
        """The bounds for a pass of ``runs`` with these stacked centres (run ``r`` owns
        ``stacked[bounds[r]:bounds[r + 1]]``), or None for a full pass. New bounds cost
        more than a full pass and pay off from the next one, so the ``last`` pass only
        uses bounds it already has."""
        if not self.allowed or (last and runs != self.runs):
            return None
        if runs != self.runs:
            self.runs, self.previous, self.latest, self.full_passes = runs, stacked, stacked, 0
            if self.groups_per_run:
                self.groups = CentreGroups.of_centers(stacked, bounds, self.groups_per_run)
                self.memory = group_bounds_memory(len(runs), self.groups.n_groups)
            else:
                self.memory = distance_bounds_memory(len(runs))
        drift = np.sqrt(((stacked - self.previous) ** 2).sum(axis=1))
        step = np.sqrt(((stacked - self.latest) ** 2).sum(axis=1))
        self.latest = stacked
        # stale bounds are renewed after a few full passes, or at once when the centres
        # have settled since (their last step a small part of the drift the bounds carry)
        wait = 1 << self.backoff
        settled = BOUNDS_SETTLED * step.max() < drift.max()
        due = self.full_passes >= BOUNDS_RENEWED_AFTER * wait or (
            settled and self.full_passes >= wait
        )
        renew = due
        if due and self.memory.blocks and self.sample is not None:
            # a renewal predicted not to pay leaves the pass to the bounds already kept;
            # predicted far from paying, it doubles the wait as a renewal that did not pay
            predicted = fresh_skipped_fraction(self.sample, stacked, bounds, step)
            renew = self.pays(predicted, HAMERLY_MIN_SKIPPED)
            if predicted < HAMERLY_MIN_SKIPPED / 2:
                self.backoff = min(self.backoff + 1, MAX_RENEWAL_BACKOFF)
        fresh, self.fresh = self.fresh, False
        if self.memory.blocks and (last or not renew):
            if not self.kept_bounds_pay(drift, bounds):
                if fresh:
                    self.backoff = min(self.backoff + 1, MAX_RENEWAL_BACKOFF)
                self.full_passes += 1
                return None
            self.backoff = 0
        else:  # renewed (the first bounds of the runs come without evidence either way)
            self.fresh = bool(self.memory.blocks)
        self.previous, self.full_passes, self.unpaid = stacked, 0, None
        return DistanceBounds(self.memory, drift, self.groups)

    def kept_bounds_pay(self, drift: np.ndarray, bounds: np.ndarray) -> bool:
        """Whether the bounds kept, after the centres drifted by ``drift`` since they were
        made, would skip enough rows (:func:`~dkmeans.row_memory.skipped_fraction`).

        A row is skipped only while its bounds stay apart by more than the drifts, so a
        drift at least as large for every centre as one after which the bounds did not
        pay cannot pay either, and is not measured (on structureless rows the bounds of
        the first pass were measured at every later pass, 2-3 ms against a pass's 70-80
        at 2M x 32, k = 16).
        """
        if self.unpaid is not None and np.all(drift >= self.unpaid):
            return False
        skipped = skipped_fraction(self.memory, drift, bounds, self.groups)
        least = BOUNDS_MIN_SKIPPED if self.groups is not None else HAMERLY_MIN_SKIPPED
        pays = self.pays(skipped, least)
        self.unpaid = None if pays else drift
        return pays

    def pays(self, skipped: float, least: float) -> bool:
        """Whether a pass with bounds that skip this fraction of the rows beats a full one:
        at least ``least`` of them, saving :data:`BOUNDS_MIN_SAVING` multiply-adds a row."""
        return skipped >= least and skipped * self.row_work >= BOUNDS_MIN_SAVING


def fresh_skipped_fraction(
    rows: np.ndarray, stacked: np.ndarray, bounds: np.ndarray, drift: np.ndarray
) -> float:
    """The fraction of ``rows`` that Hamerly's bounds made now, against ``stacked``,
    would let the next pass skip if every centre then moved by ``drift``: as
    :func:`~dkmeans.row_memory.skipped_fraction` predicts for bounds already kept, with
    each row's exact nearest and second-nearest distances in place of its bounds.

    Parameters
    ----------
    rows : ndarray of shape (m, d)
        A sample of the rows, as the kernels see them (in the source's frame).
    stacked : ndarray of shape (K, d)
        The centres of every run, stacked.
    bounds : ndarray of shape (R + 1,)
        Run ``r`` owns stacked centres ``bounds[r]:bounds[r + 1]``.
    drift : ndarray of shape (K,)
        How far every centre is expected to move before the next pass.
    """
    stays = np.ones(len(rows), dtype=bool)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi - lo < 2:
            continue
        nearest, squared = ranked_centers(rows, stacked[lo:hi], 2)
        first, second = np.sqrt(squared).T
        stays &= first + drift[lo + nearest[:, 0]] < second - drift[lo:hi].max()
    return float(np.count_nonzero(stays) / len(rows)) if len(rows) else 0.0


def sample_rows(source: InMemorySource, n_rows: int) -> np.ndarray:
    """About ``n_rows`` rows spread evenly over the blocks of ``source``, as its kernels
    see them (in its frame, unit rows for the cosine metric)."""
    stride = max(1, -(-source.n_rows // n_rows))
    rows = shifted(np.concatenate([block[::stride] for block in source.blocks]), source.shift)
    return unit_rows(rows) if source.unit else rows


def groups_per_run(centers_per_run: int, row_bytes: int, *, streamed: bool) -> int:
    """Groups of Yinyang's bounds per run for runs of up to ``centers_per_run`` centres
    and rows of ``row_bytes`` bytes; 0: Hamerly's bounds (see
    :data:`GROUP_BOUNDS_MIN_CENTERS`)."""
    if centers_per_run < GROUP_BOUNDS_MIN_CENTERS:
        return 0
    fraction = STREAMED_BOUNDS_FRACTION if streamed else GROUP_BOUNDS_FRACTION
    fits = int(fraction * row_bytes - GROUP_BOUNDS_BYTES_PER_ROW_AND_RUN) // 4
    groups = min(centers_per_run // CENTERS_PER_GROUP, fits, MAX_GROUPS)
    return groups if groups >= MIN_GROUPS else 0


def lloyd(
    source: Source,
    initial_centers: Sequence[np.ndarray],
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    on_iteration: Callable[[IterationReport], None] | None = None,
    resume: LloydState | None = None,
    on_pass: Callable[[LloydState], None] | None = None,
    metric: Metric = "euclidean",
    stored: Callable[[np.ndarray], np.ndarray] | None = None,
    keep_labels: bool = False,
) -> list[LloydResult]:
    """Run Lloyd's algorithm from each set of initial centres, sharing passes.

    Parameters
    ----------
    source : Source
        The data.
    initial_centers : sequence of ndarray of shape (k_r, d)
        One set of initial centres per run; runs may have different k.
    max_iter : int
        Maximum number of iterations of every run.
    tol : float
        Relative tolerance (scikit-learn's definition).
    on_iteration : callable, optional
        Called with an :class:`IterationReport` after every iteration of every run.
    resume : LloydState, optional
        Continue from this state (saved by ``on_pass``) instead of the initial centres.
    on_pass : callable, optional
        Called with the current :class:`LloydState` after every pass.
    metric : {"euclidean", "cosine"}
        ``"cosine"``: spherical k-means. The source must show the kernels unit rows
        and the initial centres must be unit vectors; centres stay unit vectors and the
        inertia is ``Σ w (1 - cos)`` (:mod:`dkmeans.cosine`).
    stored : callable, optional
        The final centres of a run as the caller will store them (rounded to the data's
        dtype, say), in the source's frame: the final pass measures these, so that the
        inertia and the labels are those of the stored centres. The results keep the
        centres themselves.
    keep_labels : bool
        Keep every row's nearest centre from the final pass (``LloydResult.labels``):
        where the kernels run in this process and the labels fit
        (:func:`~dkmeans.resources.may_remember`); a run that stops because its centres
        stopped changing makes no final pass and keeps none.

    Returns
    -------
    list of LloydResult, one per run, in the order of ``initial_centers``.
    """
    state = LloydState.start(initial_centers) if resume is None else resume
    row_bounds = RowBounds(source, state.centers)
    while state.iteration < max_iter and state.active:
        _iterate(source, state, tol, on_iteration, row_bounds, metric)
        if on_pass is not None:
            on_pass(state)
    if state.results is None:
        _finalize(source, state, row_bounds, metric, stored, keep_labels)
        if on_pass is not None:
            on_pass(state)
    return state.results


def _lloyd_pass(
    source: Source,
    stacked: np.ndarray,
    bounds: np.ndarray,
    *,
    with_moments: bool,
    distance_bounds: DistanceBounds | None,
    far_points: int = FAR_POINTS_PER_RUN,
) -> PassStats:
    """The statistics of one Lloyd pass, with ``far_points`` far points per run; in the
    rare pass where more clusters of a run turn empty than that, the pass is made again
    keeping that many more than the most empty clusters of a run (without bounds: the
    first pass has updated them). The far points kept are the farthest, so the
    relocation is the same as with k of them: keeping k instead cost a scan of k slots
    for every row kept, which at k = 65,536 made the pass many times slower."""
    capacity = far_points if np.diff(bounds).max() > far_points else None
    stats = source.map_reduce(
        pass_statistics,
        stacked,
        bounds,
        with_moments=with_moments,
        far_capacity=capacity,
        distance_bounds=distance_bounds,
    )
    if capacity is None:
        return stats
    empty = [np.count_nonzero(stats.counts[lo:hi] == 0) for lo, hi in pairwise(bounds)]
    # more empty clusters than far points, and more points than kept (the far points
    # are selected only where a cluster is empty)
    cut_short = [
        n_empty > 0 and n_empty > len(far.chosen.distances) == capacity
        for n_empty, far in zip(empty, stats.far, strict=True)
    ]
    if any(cut_short):
        return _lloyd_pass(
            source,
            stacked,
            bounds,
            with_moments=with_moments,
            distance_bounds=None,
            far_points=int(max(empty)) + FAR_POINTS_PER_RUN,
        )
    return stats


def _iterate(
    source: Source,
    state: LloydState,
    tol: float,
    on_iteration: Callable[[IterationReport], None] | None,
    row_bounds: RowBounds,
    metric: Metric,
) -> None:
    """One Lloyd iteration of every active run: one pass over the data."""
    active = state.active
    per_squared = inertia_per_squared_distance(metric)
    started = time.perf_counter()
    stacked, bounds = stack_centers([state.centers[r] for r in active])
    stats = _lloyd_pass(
        source,
        stacked,
        bounds,
        with_moments=state.tol_abs is None,
        distance_bounds=row_bounds.for_pass(active, stacked, bounds),
    )
    check_finite_statistics(stats, source.passes)
    if state.tol_abs is None:
        if not stats.counts.any():
            # the first pass read lazy weights that are zero everywhere
            raise ValueError(ZERO_WEIGHTS)
        state.tol_abs = tolerance(stats, tol)
    seconds = time.perf_counter() - started
    state.iteration += 1
    for j, r in enumerate(active):
        lo, hi = bounds[j], bounds[j + 1]
        old = state.centers[r]
        new = updated_centers(old, stats.sums[lo:hi], stats.counts[lo:hi], stats.far[j], metric)
        shift = float(((new - old) ** 2).sum())
        inertia = float(stats.cluster_inertia[lo:hi].sum()) * per_squared
        state.n_iter[r] = state.iteration
        if on_iteration is not None:
            on_iteration(IterationReport(r, state.iteration, inertia, shift, seconds))
        if np.array_equal(new, old):
            # same assignment as the previous iteration: the pass's inertia and
            # counts already belong to these centres
            state.final[r] = LloydResult(new, inertia, state.iteration, stats.counts[lo:hi].copy())
            state.stopped[r] = True
        elif shift <= state.tol_abs:
            state.stopped[r] = True
        state.centers[r] = new


def _finalize(
    source: Source,
    state: LloydState,
    row_bounds: RowBounds,
    metric: Metric,
    stored: Callable[[np.ndarray], np.ndarray] | None,
    keep_labels: bool,
) -> None:
    """One more pass (shared) for the runs whose inertia is not yet known for their
    final centres (as ``stored``), keeping the rows' labels with ``keep_labels``: then a
    full pass, which costs what the labels' own pass would."""
    pending = [r for r in range(len(state.centers)) if r not in state.final]
    final = [state.centers[r] if stored is None else stored(state.centers[r]) for r in pending]
    stacked, bounds = stack_centers(final)
    labels = labels_memory(source.in_process, source.n_rows, len(pending)) if keep_labels else None
    stats = source.map_reduce(
        pass_statistics,
        stacked,
        bounds,
        far_capacity=0,
        distance_bounds=(
            None if labels is not None else row_bounds.for_pass(pending, stacked, bounds, last=True)
        ),
        row_results=labels,
    )
    check_finite_statistics(stats, source.passes)
    for j, r in enumerate(pending):
        lo, hi = bounds[j], bounds[j + 1]
        inertia = float(stats.cluster_inertia[lo:hi].sum()) * inertia_per_squared_distance(metric)
        counts = stats.counts[lo:hi].copy()
        state.final[r] = LloydResult(
            state.centers[r],
            inertia,
            state.n_iter[r],
            counts,
            None if labels is None else labels_of_run(labels, j),
        )
        state.stopped[r] = True
