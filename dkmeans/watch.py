"""Passes on a distributed cluster that fail with a reason instead of waiting forever.

Left alone, Dask waits as long as it takes, and some clusters can never finish a pass:

- workers whose memory cannot hold a block: the worker pauses (and never resumes, as its
  memory is not data it can spill) or its nanny restarts it, again and again;
- a scheduler that is gone: the client gives up reconnecting and cancels the pass, or
  refuses to send the next one.

:func:`check_worker_memory` compares a block's working memory with the workers' memory
limits before the first pass; :func:`compute` runs a pass on a client and watches it,
raising :class:`WorkerMemoryError` or :class:`SchedulerLostError` with what was measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
from dask.utils import format_bytes

from .io import block_rows

if TYPE_CHECKING:
    from distributed import Client, Future

#: Working memory of a pass per block on a worker, in copies of the block: the block
#: itself and the copy the kernels see when the data is shifted (:mod:`dkmeans.frame`).
BLOCK_COPIES = 2
#: ... plus this per row: labels, distances and checks of the kernels (38 to 52 bytes
#: per row measured with ``tracemalloc`` for Lloyd and k-means||; k-means++ needs more).
ROW_SCRATCH_BYTES = 64
#: Seconds between two looks at the workers while a pass runs.
POLL_SECONDS = 1.0
#: A pass fails when no worker has been running (all paused, or all gone after some
#: died) for this many seconds: a paused worker whose memory is not data never resumes.
STALLED_SECONDS = 60.0
#: Times a pass whose future the scheduler cancelled (not the fit) is submitted again.
CANCELLED_RESUBMITS = 2


class ClusterError(RuntimeError):
    """The Dask cluster cannot finish a pass."""


class WorkerMemoryError(ClusterError):
    """The workers cannot hold a block, or keep dying or pausing while they process one."""


class SchedulerLostError(ClusterError):
    """The client lost its connection to the scheduler during a fit."""


@dataclass(frozen=True)
class Blocks:
    """The largest row block of the data a pass runs over."""

    rows: int
    n_features: int
    dtype: np.dtype

    @classmethod
    def of(cls, x: Any) -> Blocks:
        """The largest block of a Dask array chunked along rows."""
        return cls(max(x.chunks[0], default=0), x.shape[1], np.dtype(x.dtype))

    @property
    def row_bytes(self) -> int:
        return self.n_features * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def working_memory(self) -> int:
        """Bytes a pass needs on a worker for one block (:data:`BLOCK_COPIES`, scratch)."""
        return self.rows * (BLOCK_COPIES * self.row_bytes + ROW_SCRATCH_BYTES)

    def describe(self) -> str:
        return (
            f"blocks of up to {self.rows:,} rows x {self.n_features} {self.dtype} "
            f"({format_bytes(self.nbytes)}; a pass needs about "
            f"{format_bytes(self.working_memory)} per block)"
        )

    def rows_within(self, n_bytes: float) -> int:
        """The most rows per block whose working memory fits in ``n_bytes``."""
        return max(0, int(n_bytes // (BLOCK_COPIES * self.row_bytes + ROW_SCRATCH_BYTES)))


def distributed_client(collection: Any) -> Client | None:
    """The distributed client that would compute ``collection``, or None (threads,
    processes, synchronous)."""
    scheduler = dask.base.get_scheduler(collections=[collection])
    client = getattr(scheduler, "__self__", None)
    return client if type(client).__name__ == "Client" else None


def usable_fraction() -> float:
    """Fraction of its memory limit a worker can use: above it the worker pauses (or is
    restarted, when pausing is off)."""
    for threshold in ("pause", "terminate"):
        value = dask.config.get(f"distributed.worker.memory.{threshold}", False)
        if value:
            return float(value)
    return 1.0


def _workers(client: Client) -> list[dict[str, Any]]:
    # a client that lost its scheduler reports no information at all
    return list(client.scheduler_info(n_workers=-1).get("workers", {}).values())


def worker_memory(dask_worker: Any) -> tuple[int, int]:
    """Run on a worker (``client.run``): its memory limit and the memory it holds and
    cannot spill (the process minus its data), once it has loaded what a pass loads."""
    import dkmeans.kernels  # noqa: F401  (numba and the kernels: 100 MiB or more)

    used = dask_worker.monitor.get_process_memory() - dask_worker.state.nbytes
    return int(dask_worker.memory_manager.memory_limit or 0), max(0, int(used))


def _limits(workers: list[dict[str, Any]]) -> str:
    """The workers' memory limits, as ``"4.00 GiB"`` or ``"2.00 GiB to 4.00 GiB"``."""
    limits = [w["memory_limit"] for w in workers if w["memory_limit"]]
    if not limits:
        return "none"
    low, high = format_bytes(min(limits)), format_bytes(max(limits))
    return low if low == high else f"{low} to {high}"


def check_worker_memory(client: Client, blocks: Blocks) -> None:
    """Raise :class:`WorkerMemoryError` if a worker cannot hold one block in a pass.

    A worker can use :func:`usable_fraction` of its memory limit, less the memory it
    holds and cannot spill; one block being processed needs
    :attr:`Blocks.working_memory`. The workers are looked at as the scheduler last saw
    them, then once they have loaded the kernels (:func:`worker_memory`), which a
    worker too small may not survive. Workers without a limit, and a cluster without
    workers yet, pass.
    """
    seen = [
        (w["memory_limit"], max(0, w["metrics"]["memory"] - w["metrics"]["managed_bytes"]))
        for w in _workers(client)
    ]
    for limit, used in seen:
        _check_room(limit, used, blocks, advise_rows=False)  # the kernels add more
    try:
        loaded = client.run(worker_memory).values()
    except OSError as error:  # the connection to a worker that died
        raise WorkerMemoryError(
            f"a Dask worker died while loading the kernels (workers' memory limit: "
            f"{_limits(_workers(client))}; {blocks.describe()}): give the workers more "
            "memory (memory_limit in the cluster config)"
        ) from error
    for limit, used in loaded:
        _check_room(limit, used, blocks, advise_rows=True)


def _check_room(limit: int, used: int, blocks: Blocks, *, advise_rows: bool) -> None:
    """Raise :class:`WorkerMemoryError` unless a worker with this memory ``limit`` that
    uses ``used`` bytes it cannot spill has room for a block; ``advise_rows``: name the
    block rows that would fit (only when ``used`` is all the worker will use)."""
    fraction = usable_fraction()
    room = fraction * limit - used
    if not limit or blocks.working_memory <= room:
        return
    needed = (used + blocks.working_memory) / fraction
    fits = blocks.rows_within(room)
    smaller = (
        f", or use row blocks of at most {fits:,} rows (a Dask array rechunked with "
        f"X.rechunk({{0: {fits}}}), or a Zarr store chunked so)"
        if advise_rows and fits and block_rows(fits, blocks.row_bytes, fits + 1) == fits
        else ""
    )
    raise WorkerMemoryError(
        f"the Dask workers have too little memory for the {blocks.describe()}: a worker "
        f"with a memory limit of {format_bytes(limit)} can use {fraction:.0%} of it "
        f"({format_bytes(fraction * limit)}) and already uses {format_bytes(used)}; "
        f"give the workers a memory limit of at least {format_bytes(needed)} "
        f"(memory_limit in the cluster config){smaller}"
    )


class PassWatch:
    """What happens to the workers while one pass runs; raises when it cannot finish.

    A pass cannot finish when its workers died more often than the scheduler retries a
    task on each of them (``distributed.scheduler.allowed-failures``), or when no worker
    has been running for :data:`STALLED_SECONDS` (all paused, or gone after deaths).
    """

    def __init__(self, client: Client, blocks: Blocks, what: str) -> None:
        self.client, self.blocks, self.what = client, blocks, what
        self.started = time.time()
        self.workers = _workers(client)
        self.retries = int(dask.config.get("distributed.scheduler.allowed-failures", 3))
        self.stalled_since: float | None = None

    def deaths(self) -> int:
        """Workers removed since the pass started (a restarted worker is a new one)."""
        return sum(
            1
            for stamp, event in self.client.get_events("all")
            if stamp >= self.started
            and isinstance(event, dict)
            and event.get("action") == "remove-worker"
            and not event.get("expected", False)
        )

    def failure(self, what_happened: str) -> WorkerMemoryError:
        """The error of a pass that cannot finish, with the limits and the block size."""
        return WorkerMemoryError(
            f"Dask workers {what_happened} during {self.what} (workers' memory limit: "
            f"{_limits(self.workers)}; {self.blocks.describe()}): if they ran out of "
            "memory, give them more (memory_limit in the cluster config) or use smaller "
            "row blocks"
        )

    def check(self) -> None:
        """Look at the workers once; raise :class:`WorkerMemoryError` if the pass cannot
        finish. A client that is reconnecting to its scheduler is left to it: if that
        fails, the client cancels the pass."""
        if self.client.status != "running":
            return
        workers = _workers(self.client)
        self.workers = workers or self.workers
        deaths = self.deaths()
        if deaths > self.retries * max(1, len(self.workers)):
            raise self.failure(f"died {_times(deaths)}")
        if any(w["status"] == "running" for w in workers) or not (
            deaths or any(w["status"] == "paused" for w in workers)
        ):
            self.stalled_since = None
            return
        now = time.time()
        self.stalled_since = self.stalled_since or now
        if now - self.stalled_since >= STALLED_SECONDS:
            state = "stayed paused" if workers else "all died"
            raise self.failure(f"{state} for {now - self.stalled_since:.0f} s")


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def scheduler_lost(client: Client, error: BaseException) -> bool:
    """Whether ``error`` came from losing the scheduler (rather than from the pass)."""
    from distributed.client import ClosedClientError, FutureCancelledError
    from distributed.comm import CommClosedError

    if isinstance(error, (ClosedClientError, CommClosedError)):
        return True
    if isinstance(error, FutureCancelledError) and error.reason == "scheduler-connection-lost":
        return True
    return client.status != "running"


def compute(client: Client, collection: Any, blocks: Blocks, what: str) -> Any:
    """Compute ``collection`` on ``client`` (the same graph, so the same result, as
    ``dask.compute``), watching the workers while it runs (:func:`result`)."""
    return result(client, lambda: client.compute(collection), blocks, what)


def result(
    client: Client,
    submit: Callable[[], Future],
    blocks: Blocks,
    what: str,
    check: Callable[[], None] | None = None,
) -> Any:
    """The result of the future that ``submit`` submits on ``client``, watching the
    workers while it runs; ``check`` is called as often, and may raise to end the wait.

    Raises
    ------
    WorkerMemoryError
        When workers die repeatedly (``KilledWorker``) or stay paused: the message names
        their memory limit and the block size.
    SchedulerLostError
        When the scheduler is lost before or during the pass.
    """
    from distributed import KilledWorker

    address = getattr(client.scheduler, "address", "?")
    future = None
    resubmits = CANCELLED_RESUBMITS
    try:
        watch = PassWatch(client, blocks, what)
        future = submit()
        while True:
            try:
                return future.result(timeout=POLL_SECONDS)
            except TimeoutError:
                watch.check()
                if check is not None:
                    check()
            except (CancelledError, UnboundLocalError):
                # the pass's future was cancelled under it (seen once in a CI run of
                # concurrent fits on one client); waited for with a timeout, distributed
                # then raises UnboundLocalError (dask/distributed#8514). A pass is a pure
                # function of its inputs: it is submitted again
                if not future.cancelled() or not resubmits:
                    raise
                resubmits -= 1
                future.release()
                future = submit()
    except KilledWorker as error:
        tries = error.allowed_failures + 1
        raise watch.failure(f"died {_times(tries)} running the same task") from error
    except ClusterError:
        raise
    except Exception as error:
        if not scheduler_lost(client, error):
            raise
        raise SchedulerLostError(
            f"lost the Dask scheduler at {address} during {what}: the fit cannot go on; "
            "restart the scheduler (or the cluster) and fit again"
        ) from error
    finally:
        if future is not None:
            future.release()
