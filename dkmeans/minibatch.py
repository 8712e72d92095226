"""Mini-batch k-means (Sculley, WWW 2010) over a source streamed in order to the client.

The data is read block by block (:mod:`dkmeans.batches`) and cut into batches of
``batch_size`` rows. Every batch costs one GEMM (:func:`~dkmeans.kernels.pass_statistics`:
the nearest centre of its rows, their per-centre weighted sums and weights) and moves
every centre that got rows to the weighted mean of all the rows it has been given so
far: ``c ← (n_c c + Σ w x) / (n_c + Σ w)``, where ``n_c`` is the weight the centre has
seen (Sculley's per-centre learning rate ``1 / n_c``, with scikit-learn's counts).

Everything else is scikit-learn's ``MiniBatchKMeans``: centres whose count falls below
``reassignment_ratio`` times the largest are moved onto rows of the batch; a fit stops
when the smoothed batch inertia has not improved for ``max_no_improvement`` batches, or
when a batch moved the centres by at most ``tol`` (squared, absolute). What differs is
how batches are drawn: scikit-learn draws rows at random from X in memory; here an
epoch reads every row exactly once, the blocks in a random order and the rows of every
block permuted (``shuffle``), or in the order of X. So one epoch costs one read of X
and memory is bounded by a few blocks; the result depends on the seed and the chunking,
not on the scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from .batches import Rows, mini_batches, source_blocks
from .cosine import unit_centers
from .kernels import cluster_totals
from .sources import DaskSource, InMemorySource


@dataclass
class MiniBatchState:
    """The running state of mini-batch k-means (what ``partial_fit`` keeps).

    Attributes
    ----------
    centers : ndarray of shape (k, d), float64
        In the source's frame.
    counts : ndarray of shape (k,), float64
        Weight every centre has been given (reset on reassignment).
    seed : int
        Seeds the reassignments' draws (``rng``) and the order of every epoch.
    rng : numpy Generator
        Draws the rows that reassigned centres move onto.
    unit : bool
        Spherical k-means (:mod:`dkmeans.cosine`): the rows are unit vectors, and every
        updated centre is scaled back to unit norm.
    n_steps : int
        Batches processed.
    since_reassign : int
        Rows (in batches of ``batch_size``) since the last reassignment check.
    """

    centers: np.ndarray
    counts: np.ndarray
    seed: int
    rng: np.random.Generator
    unit: bool = False
    n_steps: int = 0
    since_reassign: int = 0

    @classmethod
    def start(cls, centers: np.ndarray, seed: int, *, unit: bool = False) -> MiniBatchState:
        centers = np.array(centers, dtype=np.float64)
        return cls(centers, np.zeros(len(centers)), seed, np.random.default_rng(seed), unit)


@dataclass(frozen=True)
class StepReport:
    """What one batch did: its weighted inertia under the centres it started from, and
    the squared distance the centres moved."""

    inertia: float
    center_shift: float


def _reassign_due(state: MiniBatchState, batch_size: int) -> bool:
    """scikit-learn's schedule: when a centre has no weight, or after ``10 k`` rows."""
    state.since_reassign += batch_size
    if (state.counts == 0).any() or state.since_reassign >= 10 * len(state.centers):
        state.since_reassign = 0
        return True
    return False


def _reassign(state: MiniBatchState, batch: Rows, ratio: float) -> None:
    """Move the centres of low count onto rows of the batch (drawn without replacement,
    with probability proportional to weight), at most half a batch of them; their count
    becomes the smallest count of the others, so that they are not moved again at once."""
    low = state.counts < ratio * state.counts.max()
    if not low.any() or low.all():
        return
    if low.sum() > 0.5 * len(batch):
        low[np.argsort(state.counts, kind="stable")[int(0.5 * len(batch)) :]] = False
    weights = np.ones(len(batch)) if batch.weights is None else batch.weights
    n_moved = min(int(low.sum()), int(np.count_nonzero(weights)))
    if n_moved == 0:
        return
    low[np.flatnonzero(low)[n_moved:]] = False
    rows = state.rng.choice(len(batch), size=n_moved, replace=False, p=weights / weights.sum())
    state.centers[low] = batch.x[rows]
    state.counts[low] = state.counts[~low].min()


def minibatch_step(
    state: MiniBatchState,
    batch: Rows,
    *,
    batch_size: int,
    reassignment_ratio: float,
) -> StepReport:
    """Update the centres with one batch (in place) and report it.

    Parameters
    ----------
    state : MiniBatchState
    batch : Rows
        The batch in the source's frame.
    batch_size : int
        The configured batch size (counts rows towards the reassignment schedule, as
        scikit-learn counts them).
    reassignment_ratio : float
        Centres whose count is below this fraction of the largest are reassigned.
    """
    totals = cluster_totals(batch.x, batch.weights, state.centers)
    old = state.centers
    total = state.counts + totals.counts
    # whole arrays, not the centres given rows: k x d is small, indexing costs more
    means = np.divide(
        old * state.counts[:, None] + totals.sums,
        total[:, None],
        out=old.copy(),
        where=(totals.counts > 0)[:, None],
    )
    # a centre whose unit rows cancel out keeps its direction
    state.centers = unit_centers(means, fallback=old) if state.unit else means
    state.counts = total
    if _reassign_due(state, batch_size) and reassignment_ratio > 0:
        _reassign(state, batch, reassignment_ratio)
    state.n_steps += 1
    shift = float(((state.centers - old) ** 2).sum())
    return StepReport(float(totals.inertia.sum()), shift)


@dataclass
class EarlyStop:
    """scikit-learn's stopping rule for ``MiniBatchKMeans.fit``.

    The batch inertia (per ``batch_size`` rows) is smoothed with the weight
    ``2 batch_size / (n_samples + 1)``; the fit stops when that has not improved for
    ``max_no_improvement`` batches, or when a batch moved the centres by at most
    ``tol`` (squared, absolute; only when ``tol > 0``).
    """

    batch_size: int
    n_samples: int
    tol: float
    max_no_improvement: int | None
    ewa_inertia: float | None = None
    ewa_inertia_min: float | None = None
    no_improvement: int = 0
    steps: int = 0

    def __call__(self, step: StepReport) -> bool:
        """Whether to stop after this batch."""
        self.steps += 1
        inertia = step.inertia / self.batch_size
        if self.steps == 1:
            return False
        if self.ewa_inertia is None:
            self.ewa_inertia = inertia
        else:
            alpha = min(self.batch_size * 2.0 / (self.n_samples + 1), 1.0)
            self.ewa_inertia = self.ewa_inertia * (1 - alpha) + inertia * alpha
        if self.tol > 0 and step.center_shift <= self.tol:
            return True
        if self.ewa_inertia_min is None or self.ewa_inertia < self.ewa_inertia_min:
            self.no_improvement, self.ewa_inertia_min = 0, self.ewa_inertia
        else:
            self.no_improvement += 1
        return (
            self.max_no_improvement is not None and self.no_improvement >= self.max_no_improvement
        )


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did (for ``verbose``)."""

    epoch: int
    steps: int  # batches so far
    ewa_inertia: float | None  # smoothed batch inertia per row
    seconds: float


@dataclass(frozen=True)
class MiniBatchResult:
    """How a fit ended: the epochs started (scikit-learn's ``n_iter_``) and the smoothed
    batch inertia per row when it stopped (None before the second batch)."""

    n_iter: int
    ewa_inertia: float | None


def epoch(
    source: InMemorySource | DaskSource,
    state: MiniBatchState,
    *,
    batch_size: int,
    reassignment_ratio: float,
    shuffle: np.random.Generator | None = None,
    stop: Callable[[StepReport], bool] | None = None,
) -> bool:
    """One read of ``source`` in batches; returns whether ``stop`` ended it early.

    With ``shuffle``, the blocks are read in a random order and the rows of every block
    permuted; without, the rows come in the order of the source.
    """
    n_blocks = len(source.row_offsets)
    order = range(n_blocks) if shuffle is None else shuffle.permutation(n_blocks)
    with closing(source_blocks(source, order)) as blocks:
        for batch in mini_batches(blocks, batch_size, shuffle):
            step = minibatch_step(
                state, batch, batch_size=batch_size, reassignment_ratio=reassignment_ratio
            )
            if stop is not None and stop(step):
                return True
    return False


def minibatch_kmeans(
    source: InMemorySource | DaskSource,
    state: MiniBatchState,
    *,
    batch_size: int,
    max_iter: int,
    tol: float,
    max_no_improvement: int | None,
    reassignment_ratio: float,
    shuffle: bool,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> MiniBatchResult:
    """Run epochs of mini-batch k-means from ``state`` (updated in place) until
    :class:`EarlyStop` stops it or ``max_iter`` epochs are done.

    Parameters
    ----------
    source : InMemorySource or DaskSource
    state : MiniBatchState
    batch_size : int
    max_iter : int
        Epochs at most.
    tol : float
        Absolute tolerance on the squared centre shift of a batch (0: not used).
    max_no_improvement : int or None
    reassignment_ratio : float
    shuffle : bool
        Read every epoch in an order drawn from ``state.seed`` and the epoch's index
        (see :func:`epoch`); False reads in order.
    on_epoch : callable, optional
        Called with an :class:`EpochReport` after every complete epoch.
    """
    stop = EarlyStop(batch_size, source.n_rows, tol, max_no_improvement)
    for index in range(max_iter):
        started = time.perf_counter()
        order = np.random.default_rng([state.seed, index]) if shuffle else None
        stopped = epoch(
            source,
            state,
            batch_size=batch_size,
            reassignment_ratio=reassignment_ratio,
            shuffle=order,
            stop=stop,
        )
        if on_epoch is not None:
            seconds = time.perf_counter() - started
            on_epoch(EpochReport(index + 1, state.n_steps, stop.ewa_inertia, seconds))
        if stopped:
            return MiniBatchResult(index + 1, stop.ewa_inertia)
    return MiniBatchResult(max_iter, stop.ewa_inertia)
