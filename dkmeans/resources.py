"""What the machine (or cluster) has: threads for BLAS, memory for persisting X."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Literal

import dask
import dask.array as da
import psutil
from threadpoolctl import ThreadpoolController

#: "auto" persists X when it takes under this fraction of the memory available.
PERSIST_FRACTION = 0.5
#: Kernels keep state per row between passes (k-means||'s nearest candidates, Lloyd's
#: distance bounds) when it takes under this fraction of the memory available.
ROW_MEMORY_FRACTION = 0.25


def _client():
    """The active distributed client, or None."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a core dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


def client_active() -> bool:
    """Whether a distributed client is active (tasks then run on its workers)."""
    return _client() is not None


def available_memory() -> int:
    """Bytes available to hold X: free memory of the cluster's workers, or of this machine."""
    client = _client()
    if client is None:
        return int(psutil.virtual_memory().available)
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return int(sum(w["memory_limit"] - w["metrics"]["memory"] for w in workers))


def should_persist(persist: Literal["auto"] | bool, X: da.Array) -> bool:
    """Decide whether to keep X in (cluster) memory for the whole fit."""
    if persist == "auto":
        return X.nbytes < PERSIST_FRACTION * available_memory()
    return bool(persist)


def local_threads() -> int:
    """Threads that work on blocks on this machine: Dask's ``num_workers``, else the cores."""
    return dask.config.get("num_workers", None) or os.cpu_count() or 1


def blas_threads() -> int:
    """BLAS threads per Dask thread so that their product stays within the cores."""
    cores = os.cpu_count() or 1
    if _client() is not None:
        return cores  # tasks run on workers; their own settings apply there
    return max(1, cores // local_threads())


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # finding the loaded libraries costs 10-15 ms (a small fit's whole time): once
    return ThreadpoolController()


def limit_blas(threads: int | None = None) -> Any:
    """A context in which BLAS runs :func:`blas_threads` threads, or, with ``threads``
    of this process calling BLAS at once, as many each as keeps their product within
    the cores (the libraries loaded when it is first called).

    Enter it in the thread that hands the blocks out, before the threads start:
    threadpoolctl lets only one thread set OpenBLAS's process-wide limit and ignores
    the others. Nested BLAS threads cost far more than they bring: predicting
    2M x 32 rows (k = 256) on 2 threads of 2 BLAS threads each took 41-53 s against
    1.1-2.3 s with one (load 9). Where every BLAS library already runs that many threads
    (a pass inside a fit, which set the limit), nothing is set: setting and restoring
    it cost 85-170 us a pass (loaded), checking costs ~20; a pass over 1M x 2 rows ~10 ms.
    """
    per_thread = blas_threads() if threads is None else max(1, (os.cpu_count() or 1) // threads)
    controller = _blas_controller()
    blas = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
    if all(lib.num_threads == per_thread for lib in blas):
        return contextlib.nullcontext()
    return controller.limit(limits=per_thread, user_api="blas")


def may_remember(in_process: bool, n_bytes: int) -> bool:
    """Whether kernels may keep ``n_bytes`` of state about the rows between passes: they
    must run in this process, and it must take under :data:`ROW_MEMORY_FRACTION` of the
    memory available."""
    return in_process and n_bytes < ROW_MEMORY_FRACTION * available_memory()
