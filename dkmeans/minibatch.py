"""Mini-batch k-means (Sculley, WWW 2010) over a source streamed in order to the client.

The data is read block by block (:mod:`dkmeans.batches`) and cut into batches of
``batch_size`` rows. Every batch costs one GEMM (the nearest centre of its rows, their
per-centre weighted sums and weights, as :func:`~dkmeans.kernels.pass_statistics` finds
them) and moves
every centre that got rows to the weighted mean of all the rows it has been given so
far: ``c ← (n_c c + Σ w x) / (n_c + Σ w)``, where ``n_c`` is the weight the centre has
seen (Sculley's per-centre learning rate ``1 / n_c``, with scikit-learn's counts).

Everything else is scikit-learn's ``MiniBatchKMeans``: centres whose count falls below
``reassignment_ratio`` times the largest are moved onto rows of the batch; a fit stops
when the smoothed batch inertia has not improved for ``max_no_improvement`` batches, or
when a batch moved the centres by at most ``tol`` (squared, absolute). One rule is
added: after the batches 1, 2, 4, ... up to :data:`RELOCATION_BATCHES`, then after every
:data:`RELOCATION_BATCHES` batches, the batch just processed tests the guarded
relocation of :mod:`dkmeans.relocation` (a centre that costs little is moved into the
cluster of largest inertia, split in two, if that lowers the inertia of both halves of
the batch; repeated while it does). scikit-learn's reassignment moves only centres of
almost no count, so from a poor start (k random rows) its fits end where the start put
them: two centres in one cluster, one centre between two. ``reassignment_ratio=0`` turns
off both rules. What differs too is how batches are drawn: scikit-learn draws rows at
random from X in memory; here an epoch reads every row exactly once, the blocks in a
random order and the rows of every block in runs of :data:`~dkmeans.batches.RUN_ROWS`
consecutive rows in a random order (``shuffle``), or in the order of X. So one epoch
costs one read of X and memory is bounded by a few blocks; the result depends on the
seed and the chunking, not on the scheduler.

The batches of a block run in one compiled call
(:func:`~dkmeans.kernels.minibatch_rows`: GEMM, update, reassignment check and stopping
rule per batch, no Python in between), which returns here only for a batch whose centres
of low count are reassigned, since those draws come from a NumPy generator, and for a
batch that tests a relocation (rare: a few GEMMs of the batch, once per 1,024 batches
after the first eleven). Meanwhile the next blocks are read, checked and copied in
their shuffled order on threads of their own (:func:`~dkmeans.batches.source_blocks`),
so that every batch is consecutive rows of a block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from . import loops
from .batches import Rows, batch_spans, source_blocks
from .kernels import minibatch_rows, minibatch_rule
from .loops import EarlyStopping, MiniBatchModel
from .relocation import relocate
from .sources import DaskSource, InMemorySource

#: Batches between two relocations (:mod:`dkmeans.relocation`), counted over the whole run.
RELOCATION_BATCHES = 1024


@dataclass
class MiniBatchState:
    """The running state of mini-batch k-means (what ``partial_fit`` keeps).

    Attributes
    ----------
    model : MiniBatchModel
        The centres (float64, in the source's frame), the weight every centre has been
        given (reset on reassignment), the batches processed and the rows since the last
        reassignment check; updated in place.
    seed : int
        Seeds the reassignments' draws (``rng``) and the order of every epoch.
    rng : numpy Generator
        Draws the rows that reassigned centres move onto.
    unit : bool
        Spherical k-means (:mod:`dkmeans.cosine`): the rows are unit vectors, and every
        updated centre is scaled back to unit norm.
    """

    model: MiniBatchModel
    seed: int
    rng: np.random.Generator
    unit: bool = False

    @classmethod
    def start(cls, centers: np.ndarray, seed: int, *, unit: bool = False) -> MiniBatchState:
        centers = np.array(centers, dtype=np.float64, order="C")
        model = MiniBatchModel(
            centers=centers,
            counts=np.zeros(len(centers)),
            previous=np.empty_like(centers),
            steps=np.zeros(2, dtype=np.int64),
        )
        return cls(model, seed, np.random.default_rng(seed), unit)

    @property
    def centers(self) -> np.ndarray:
        return self.model.centers

    @property
    def counts(self) -> np.ndarray:
        return self.model.counts

    @property
    def n_steps(self) -> int:
        return int(self.model.steps[0])


def _reassign(state: MiniBatchState, batch: Rows, ratio: float) -> None:
    """Move the centres of low count onto rows of the batch (drawn without replacement,
    with probability proportional to weight), at most half a batch of them; their count
    becomes the smallest count of the others, so that they are not moved again at once."""
    low = state.counts < ratio * state.counts.max()
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


def _next_relocation(steps: int) -> int:
    """The batch after which the next relocation is tried, after ``steps`` batches: every
    power of two up to :data:`RELOCATION_BATCHES`, then every multiple of it."""
    if steps < RELOCATION_BATCHES:
        return 1 << steps.bit_length()
    return (steps // RELOCATION_BATCHES + 1) * RELOCATION_BATCHES


def run_batches(
    state: MiniBatchState,
    rows: Rows,
    start: int,
    stop: int,
    *,
    rows_per_batch: int,
    batch_size: int,
    reassignment_ratio: float,
    early: EarlyStopping | None = None,
) -> bool:
    """Update the centres (in place) with the rows in positions ``start:stop`` of
    ``rows``, in batches of ``rows_per_batch`` consecutive positions; returns whether
    ``early`` stopped the fit.

    The batches run in compiled calls (:func:`~dkmeans.kernels.minibatch_rows`), which
    come back here for a batch whose centres of low count are reassigned (the draws come
    from ``state.rng``) and for a batch after which a relocation is tried (counted in
    ``state.n_steps``, so that consecutive calls continue the schedule).

    Parameters
    ----------
    state : MiniBatchState
    rows : Rows
        In the source's frame, float32 or float64, C-contiguous, in their order.
    start, stop : int
    rows_per_batch : int
    batch_size : int
        The configured batch size (counts rows towards the reassignment schedule, as
        scikit-learn counts them, and scales the batch inertia of the stopping rule).
    reassignment_ratio : float
        Centres whose count is below this fraction of the largest are reassigned; 0
        also turns off the relocations.
    early : EarlyStopping, optional
        The stopping rule (:func:`early_stopping`); None: never stop.
    """
    rule = minibatch_rule(
        rows.x.dtype,
        *state.centers.shape,
        batch_size=batch_size,
        reassignment_ratio=reassignment_ratio,
        unit=state.unit,
    )
    relocating = reassignment_ratio > 0
    position = start
    while position < stop:
        # the compiled call returns at the next relocation, if it comes before ``stop``
        due = _next_relocation(state.n_steps) - state.n_steps
        until = min(stop, position + due * rows_per_batch) if relocating else stop
        status, position, inertia = minibatch_rows(
            rows.x,
            rows.weights,
            position,
            until,
            rows_per_batch,
            state.model,
            rule,
            early,
        )
        if status == loops.STOPPED:
            return True
        first = start + (position - 1 - start) // rows_per_batch * rows_per_batch
        batch = rows.take(slice(first, position))
        if status == loops.REASSIGN:
            _reassign(state, batch, reassignment_ratio)
            if loops.finish_step(model=state.model, inertia=inertia, early=early):
                return True
        if relocating and _next_relocation(state.n_steps - 1) == state.n_steps:
            relocate(state.centers, state.counts, batch.x, batch.weights, unit=state.unit)
    return False


def minibatch_step(
    state: MiniBatchState,
    batch: Rows,
    *,
    batch_size: int,
    reassignment_ratio: float,
) -> None:
    """Update the centres with one batch (in place).

    Parameters
    ----------
    state : MiniBatchState
    batch : Rows
        The batch in the source's frame (float32 or float64, C-contiguous).
    batch_size : int
        The configured batch size (counts rows towards the reassignment schedule).
    reassignment_ratio : float
        Centres whose count is below this fraction of the largest are reassigned.
    """
    run_batches(
        state,
        batch,
        0,
        len(batch),
        rows_per_batch=len(batch),
        batch_size=batch_size,
        reassignment_ratio=reassignment_ratio,
    )


def early_stopping(
    batch_size: int, n_samples: int, tol: float, max_no_improvement: int | None
) -> EarlyStopping:
    """scikit-learn's stopping rule for ``MiniBatchKMeans.fit``, before the first batch.

    The batch inertia (per ``batch_size`` rows) is smoothed with the weight
    ``2 batch_size / (n_samples + 1)``; the fit stops when that has not improved for
    ``max_no_improvement`` batches, or when a batch moved the centres by at most
    ``tol`` (squared, absolute; only when ``tol > 0``).
    """
    return EarlyStopping(
        batch_size=int(batch_size),
        alpha=min(batch_size * 2.0 / (n_samples + 1), 1.0),
        tol=float(tol),
        patience=-1 if max_no_improvement is None else int(max_no_improvement),
        smoothed=np.full(2, np.nan),
        counters=np.zeros(2, dtype=np.int64),
    )


def smoothed_inertia(early: EarlyStopping) -> float | None:
    """The smoothed batch inertia per row (None before the second batch)."""
    value = float(early.smoothed[0])
    return None if np.isnan(value) else value


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
    early: EarlyStopping | None = None,
) -> bool:
    """One read of ``source`` in batches; returns whether ``early`` ended it early.

    With ``shuffle``, the blocks are read in a random order and the rows of every block
    taken in runs in a random order (:func:`~dkmeans.batches.run_order`); without, the
    rows come in the order of the source.
    """
    n_blocks = len(source.row_offsets)
    order = range(n_blocks) if shuffle is None else shuffle.permutation(n_blocks)
    with closing(source_blocks(source, order, shuffle)) as blocks:
        for rows, start, stop in batch_spans(blocks, batch_size):
            if run_batches(
                state,
                rows,
                start,
                stop,
                rows_per_batch=batch_size,
                batch_size=batch_size,
                reassignment_ratio=reassignment_ratio,
                early=early,
            ):
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
    :func:`early_stopping`'s rule stops it or ``max_iter`` epochs are done.

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
    early = early_stopping(batch_size, source.n_rows, tol, max_no_improvement)
    for index in range(max_iter):
        started = time.perf_counter()
        order = np.random.default_rng([state.seed, index]) if shuffle else None
        stopped = epoch(
            source,
            state,
            batch_size=batch_size,
            reassignment_ratio=reassignment_ratio,
            shuffle=order,
            early=early,
        )
        if on_epoch is not None:
            seconds = time.perf_counter() - started
            on_epoch(EpochReport(index + 1, state.n_steps, smoothed_inertia(early), seconds))
        if stopped:
            return MiniBatchResult(index + 1, smoothed_inertia(early))
    return MiniBatchResult(max_iter, smoothed_inertia(early))
