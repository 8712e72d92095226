"""What a process remembers about the rows of its blocks between passes.

Only where the kernels run in this process (``Source.in_process``): every block is
processed by one task per pass, so its arrays can be kept and updated in place.
:class:`RowMemory` holds them; Lloyd's distance bounds (Hamerly) are one use, the
k-means|| rounds' nearest candidates (:func:`dkmeans.oversampling.nearest_candidates`)
another.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .groups import CentreGroups
from .loops import GroupScreen, Screen
from .resources import may_remember


class RowMemory:
    """Arrays about the rows of every block, kept in this process between passes.

    ``make(n_rows)`` returns a block's arrays on its first pass; kernels then read and
    write them in place. Only for sources whose kernels run in this process
    (``Source.in_process``): every block is processed by one task per pass.
    """

    def __init__(self, make: Callable[[int], tuple[np.ndarray, ...]]) -> None:
        self.make = make
        self.blocks: dict[int, tuple[np.ndarray, ...]] = {}
        self.token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self.token  # never hash (or pickle) the arrays to name a task

    def of_block(self, block_index: int, n_rows: int) -> tuple[np.ndarray, ...]:
        """The block's arrays."""
        if block_index not in self.blocks:
            self.blocks[block_index] = self.make(n_rows)
        return self.blocks[block_index]


@dataclass(frozen=True)
class DistanceBounds:
    """What a Lloyd pass may skip: the rows' distances of the last pass and how far
    every centre has moved since (see :func:`~dkmeans.loops.screen_rows`).

    Attributes
    ----------
    memory : RowMemory
        Per block (:func:`distance_bounds_memory`): the rows' centres, squared
        distances to them, and lower bounds on the distance to every other centre.
    drift : ndarray of shape (K,)
        Distance every stacked centre moved since the last pass.
    groups : CentreGroups, optional
        The centres' groups when the memory keeps Yinyang's bounds
        (:func:`group_bounds_memory`): one lower bound per row and group instead of
        one per row and run.
    """

    memory: RowMemory
    drift: np.ndarray
    groups: CentreGroups | None = None

    def screen(
        self, lower: np.ndarray, centers: np.ndarray, bounds: np.ndarray, dtype: np.dtype
    ) -> Screen:
        """The bounds of a pass as the compiled screening reads them."""
        norms_sq = np.einsum("ij,ij->i", centers, centers)
        max_drift, max_sq = run_maxima(self.drift, bounds), run_maxima(norms_sq, bounds)
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

    def group_screen(
        self,
        lower: np.ndarray,
        centers: np.ndarray,
        bounds: np.ndarray,
        gemm: np.ndarray,
        squared_norms: np.ndarray,
    ) -> GroupScreen:
        """The group bounds of a pass as the compiled screening reads them; ``gemm`` and
        ``squared_norms`` as :class:`~dkmeans.loops.StackedCentres` holds them."""
        hamerly = self.screen(lower, centers, bounds, gemm.dtype)
        groups, order = self.groups, self.groups.order
        return GroupScreen(
            lower=lower,
            drift=self.drift,
            group_drift=groups.maxima(self.drift),
            centers_norm=hamerly.centers_norm,
            max_sq=hamerly.max_sq,
            eps=hamerly.eps,
            order=order,
            edges=groups.edges,
            run_groups=groups.run_groups,
            gemm=np.ascontiguousarray(gemm[order]),
            squared_norms=np.ascontiguousarray(squared_norms[order]),
        )


def run_maxima(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The largest of ``values[bounds[r]:bounds[r + 1]]`` for every run ``r`` (0 if empty)."""
    return np.array(
        [values[lo:hi].max(initial=0.0) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
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


#: Bytes per row and run of :func:`row_results_memory` (centre and squared distance).
ROW_RESULTS_BYTES_PER_ROW_AND_RUN = 16


def row_results_memory(n_runs: int) -> RowMemory:
    """Per block: the rows' nearest centres and squared distances to them, per run."""
    return RowMemory(
        lambda n_rows: (np.empty((n_rows, n_runs), dtype=np.int64), np.empty((n_rows, n_runs)))
    )


def labels_memory(in_process: bool, n_rows: int, n_runs: int) -> RowMemory | None:
    """A :func:`row_results_memory` for a pass that also labels the rows, where the
    kernels run in this process and it fits (:func:`~dkmeans.resources.may_remember`);
    else None (the labels then take a pass of their own)."""
    n_bytes = n_rows * n_runs * ROW_RESULTS_BYTES_PER_ROW_AND_RUN
    return row_results_memory(n_runs) if may_remember(in_process, n_bytes) else None


def labels_of_run(memory: RowMemory, run: int) -> np.ndarray:
    """Every row's nearest centre of ``run`` in a memory every block of a pass filled,
    as ``predict`` gives them (int32)."""
    blocks = [memory.blocks[i][0][:, run] for i in sorted(memory.blocks)]
    return np.concatenate(blocks).astype(np.int32)


def group_bounds_memory(n_runs: int, n_groups: int) -> RowMemory:
    """Per block: the rows' centres (-1 before the first pass) and squared distances to
    them, per run, and per group of centres (:class:`~dkmeans.groups.CentreGroups`) a
    lower bound on the distance to its centres but the row's own, in float32."""
    return RowMemory(
        lambda n_rows: (
            np.full((n_rows, n_runs), -1, dtype=np.int64),
            np.zeros((n_rows, n_runs)),
            np.full((n_rows, n_groups), -np.inf, dtype=np.float32),
        )
    )


def skipped_fraction(
    memory: RowMemory,
    drift: np.ndarray,
    bounds: np.ndarray,
    groups: CentreGroups | None = None,
    sample_every: int = 64,
) -> float:
    """The fraction of rows the next pass may skip, from every ``sample_every``-th row:
    those whose bounds, after the centres drift by ``drift``, stay apart in every run
    (:func:`~dkmeans.loops.screen_rows` or :func:`~dkmeans.loops.screen_groups`, without
    their allowance for rounding nor the exact upper bounds of the latter).

    Parameters
    ----------
    memory : RowMemory
        The rows' bounds (:func:`distance_bounds_memory` or :func:`group_bounds_memory`).
    drift : ndarray of shape (K,)
        How far every stacked centre has moved since the bounds were last updated.
    bounds : ndarray of shape (R + 1,)
        Run ``r`` owns stacked centres ``bounds[r]:bounds[r + 1]``.
    groups : CentreGroups, optional
        The groups of group bounds; default: Hamerly's bounds, one group per run.
    """
    groups = CentreGroups.of_runs(bounds) if groups is None else groups
    group_drift, run_groups = groups.maxima(drift), groups.run_groups
    if not memory.blocks:
        return 0.0
    # the sampled rows of every block at once: a few NumPy calls per pass, not per block
    # (2M rows in 8 blocks: 2 ms a pass, 3% of a full one at k = 16, d = 32)
    labels, distances, lower = (
        np.concatenate([block[part][::sample_every] for block in memory.blocks.values()])
        for part in range(3)
    )
    lower = lower - group_drift
    stays = np.ones(len(labels), dtype=bool)
    for r in range(len(bounds) - 1):
        nearest = lower[:, run_groups[r] : run_groups[r + 1]].min(axis=1, initial=np.inf)
        measured = labels[:, r] >= 0
        own = bounds[r] + np.where(measured, labels[:, r], 0)
        stays &= measured & (np.sqrt(distances[:, r]) + drift[own] < nearest)
    return np.count_nonzero(stays) / len(labels) if len(labels) else 0.0
