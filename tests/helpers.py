"""Shared test helpers: counting Dask computes and Zarr chunk reads."""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager

import dask
import numpy as np
from zarr.storage import LocalStore, WrapperStore


class ComputeCounter:
    """A scheduler that counts how many times Dask computes (one call per compute)."""

    def __init__(self) -> None:
        self.computes = 0

    def __call__(self, dsk, keys, **kwargs):
        self.computes += 1
        return dask.threaded.get(dsk, keys, **kwargs)


@contextmanager
def count_computes():
    counter = ComputeCounter()
    with dask.config.set(scheduler=counter):
        yield counter


class CountingStore(WrapperStore):
    """A Zarr store that counts reads of every chunk key (metadata excluded)."""

    def __init__(self, store, reads: Counter | None = None) -> None:
        super().__init__(store)
        self.reads = Counter() if reads is None else reads
        self._lock = threading.Lock()

    def _with_store(self, store):
        return type(self)(store, self.reads)

    async def get(self, key, prototype, byte_range=None):
        if not key.endswith((".json", ".zarray", ".zattrs", ".zgroup")):
            with self._lock:
                self.reads[key] += 1
        return await self._store.get(key, prototype, byte_range)


def counting_store(path) -> CountingStore:
    return CountingStore(LocalStore(str(path), read_only=True))


def brute_force_inertia(X, centers, sample_weight=None) -> float:
    X = np.asarray(X, dtype=np.float64)
    d2 = ((X[:, None, :] - np.asarray(centers, dtype=np.float64)[None]) ** 2).sum(-1).min(1)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight)
    return float((w * d2).sum())
