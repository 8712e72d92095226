"""What a fit or a prediction reads: the validated input, and the source that passes over it.

NumPy input stays NumPy from validation to the kernels: it is cut into row blocks (views)
and processed on a pool of threads without a task graph. Any other input is a lazy Dask
array of row blocks, persisted or streamed. Both are cut into the same blocks and their
results combined in the same tree, so both give the same result to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np

from .frame import MAX_MAGNITUDE
from .placement import persist_in_runs
from .resources import client_active, local_threads, should_persist
from .sources import DaskSource, InMemorySource, Source, own_pool
from .watch import distributed_client


@dataclass(frozen=True)
class Input:
    """X as validated: exactly one of ``array`` (in memory) and ``lazy`` is set.

    Attributes
    ----------
    array : ndarray of shape (n, d) or None
        Validated NumPy input (float16, float32 or float64, C-contiguous).
    lazy : dask.array.Array of shape (n, d) or None
        Validated lazy input: floating point, one chunk across features.
    chunks : tuple of int
        The rows of every block a pass cuts X into.
    weights : ndarray, dask.array.Array or None
        Validated sample weights: NumPy when given as NumPy, else lazy (checked as read).
    """

    array: np.ndarray | None
    lazy: da.Array | None
    chunks: tuple[int, ...]
    weights: np.ndarray | da.Array | None = None

    @property
    def values(self) -> np.ndarray | da.Array:
        """The data itself: the NumPy array or the lazy Dask array."""
        return self.array if self.array is not None else self.lazy

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype


def make_source(
    X: Input,
    *,
    shift: np.ndarray | None = None,
    unit: bool = False,
    persist: Literal["auto"] | bool = False,
) -> Source:
    """The source a pass runs over, in the frame of ``shift`` (:mod:`dkmeans.frame`), or
    on rows divided by their norms with ``unit`` (:mod:`dkmeans.cosine`).

    NumPy data runs on a pool of threads on the client without a task graph; lazy data is
    persisted (``persist``, see :func:`~dkmeans.resources.should_persist`) in cluster
    memory (one run of blocks per worker: :mod:`dkmeans.placement`), or in this process's
    memory when no distributed client is active (then also
    on the pool, without a task graph), or streamed from its source. Lazy data is checked
    (NaN, infinity, overflowing magnitudes) as its first pass reads it.
    """
    weights = X.weights
    if X.array is not None:
        if isinstance(weights, da.Array):
            weights = weights.compute(scheduler="threads", **own_pool(scheduler="threads"))
        return InMemorySource.of_array(
            X.array, weights, chunks=X.chunks, threads=local_threads(), shift=shift, unit=unit
        )
    data = X.lazy
    if isinstance(weights, np.ndarray):
        weights = da.from_array(weights, chunks=(X.chunks,))
    if should_persist(persist, data):
        client = distributed_client(data)
        if client is None:
            data, weights = dask.persist(data, weights, **own_pool(data, weights))
        else:  # the blocks in one run per worker: no block crosses the network
            data = persist_in_runs(data, client)
            weights = None if weights is None else persist_in_runs(weights, client)
        if not client_active():
            return InMemorySource(
                _blocks(data),
                None if weights is None else _blocks(weights),
                threads=local_threads(),
                check_finite=True,
                shift=shift,
                unit=unit,
            )
    return DaskSource(data, weights, check_finite=True, shift=shift, unit=unit)


def _blocks(array: da.Array) -> tuple[np.ndarray, ...]:
    """The blocks of a Dask array persisted in this process's memory."""
    blocks = array.to_delayed().ravel()
    return dask.compute(*blocks, scheduler="threads", **own_pool(scheduler="threads"))


def usable_rows(rows: np.ndarray) -> np.ndarray:
    """The rows that hold no NaN, infinity or overflowing value (the checks of the first
    pass report those)."""
    with np.errstate(invalid="ignore"):
        usable = (np.abs(rows.astype(np.float64)) <= MAX_MAGNITUDE).all(axis=1)
    return rows[usable]
