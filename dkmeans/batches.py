"""The blocks of a source streamed to the client in order, and cut into mini-batches.

Mini-batch k-means updates its centres after every batch, so the batches are processed
one after another, on the client. The blocks are made ready on :data:`READ_THREADS`
threads of their own, a few ahead of the one being processed, so that reading overlaps
the updates: a Dask source's block is computed there (by Dask's threaded scheduler or
the cluster, watched as a pass is, :mod:`dkmeans.watch`), every block is checked and
brought into the source's frame, and for a shuffled epoch the order its rows are taken
in is drawn: runs of :data:`RUN_ROWS` consecutive rows in a random order
(:func:`run_order`), and the block is copied in that order
(:func:`~dkmeans.kernels.rows_in_order`). The copy is work of the reading threads: the
client, which updates the centres batch after batch, is what bounds an epoch, and its
batches are then consecutive rows of a block (gathering them there cost it a third of
its time). At most ``ahead + 1`` blocks are held at a time, and the one being processed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dask
import numpy as np

from .frame import computing_dtype
from .kernels import rows_in_order
from .sources import DaskSource, InMemorySource, own_pool, prepared_kernel
from .watch import compute as watched_compute
from .watch import distributed_client

if TYPE_CHECKING:
    from distributed import Client

#: Blocks made ready ahead of the one being processed.
READ_AHEAD = 2
#: Threads that make them ready: reading and checking a block of an uncompressed store in
#: the page cache (32 MiB of float32 rows) costs about as much as its batches; two
#: threads keep up with the client.
READ_THREADS = 2
#: Consecutive rows that a shuffled epoch keeps together. Gathering runs of 16 rows of 32
#: float32 (2 KiB) costs a fraction of gathering single rows, and drawing the order of
#: 16,384 runs a fraction of drawing 262,144 rows'; the final inertia stays that of single
#: rows, on blobs and on data stored sorted by cluster (``benchmarks/minibatch.py``).
RUN_ROWS = 16


@dataclass(frozen=True)
class Rows:
    """Rows as the kernels see them (in the source's frame, float32 or float64,
    C-contiguous) in the order they are taken in, and their weights."""

    x: np.ndarray  # (m, d)
    weights: np.ndarray | None  # (m,) float64, or None for all ones

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows: slice) -> Rows:
        """The rows ``rows`` (views)."""
        return Rows(self.x[rows], None if self.weights is None else self.weights[rows])

    def in_order(self, order: np.ndarray) -> Rows:
        """The rows in ``order`` (copied)."""
        weights = None if self.weights is None else self.weights[order]
        return Rows(rows_in_order(self.x, order), weights)

    @classmethod
    def concatenate(cls, parts: Sequence[Rows]) -> Rows:
        """The rows of ``parts`` in order, one after another (a copy)."""
        weights = None if parts[0].weights is None else np.concatenate([p.weights for p in parts])
        return cls(np.concatenate([p.x for p in parts]), weights)


def run_order(n_rows: int, seed: int, run_rows: int = RUN_ROWS) -> np.ndarray:
    """The positions ``0 .. n_rows - 1`` in runs of ``run_rows`` consecutive ones (the
    last run of the block may be shorter), the runs in a random order drawn from
    ``seed``.

    Returns
    -------
    ndarray of shape (n_rows,), intp
    """
    runs = np.random.default_rng(seed).permutation(-(-n_rows // run_rows))
    order = (runs[:, None] * run_rows + np.arange(run_rows)).ravel()
    return order if n_rows % run_rows == 0 else order[order < n_rows]


def _as_seen(block: np.ndarray, weights, row_offset: int, block_index: int) -> Rows:
    """A block as a source's kernel sees it (a kernel that keeps what it is given), in
    the dtype the kernels compute it in (float16 rows widened, exactly)."""
    x = np.ascontiguousarray(block, dtype=computing_dtype(block.dtype))
    return Rows(x, None if weights is None else np.ascontiguousarray(weights, dtype=np.float64))


def _read(
    source: DaskSource, index: int, client: Client | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Block ``index`` of a Dask source (and its weights), computed on ``client`` (the
    client of the caller's thread, its workers watched) or else as Dask computes it here.

    Computed as the chunks themselves: a Dask array of one chunk would be copied once
    more (6 ms per 32 MiB block)."""
    parts = [source.x.blocks[index].to_delayed().item()]
    if source.weights is not None:
        parts.append(source.weights.blocks[index].to_delayed().item())
    if client is not None:
        what = f"the read of block {index} for a mini-batch epoch"
        read = watched_compute(client, dask.delayed(tuple)(parts), source.blocks, what)
    else:
        read = dask.compute(*parts, **own_pool(*parts))
    return read[0], None if len(read) == 1 else read[1]


def _ready(
    source: InMemorySource | DaskSource,
    view: Callable[..., Rows],
    index: int,
    seed: int | None,
    client: Client | None,
) -> Rows:
    """Block ``index`` read, seen through ``view``, and its rows copied in the
    :func:`run_order` of ``seed`` (None: in order)."""
    if isinstance(source, InMemorySource):
        block = source.blocks[index]
        weights = None if source.weight_blocks is None else source.weight_blocks[index]
    else:
        block, weights = _read(source, index, client)
    rows = view(block, weights, int(source.row_offsets[index]), index)
    if seed is None:
        return rows
    return rows.in_order(run_order(len(rows), seed, RUN_ROWS))


def source_blocks(
    source: InMemorySource | DaskSource,
    order: Iterable[int],
    shuffle: np.random.Generator | None = None,
    *,
    ahead: int = READ_AHEAD,
) -> Iterator[Rows]:
    """The blocks of ``source`` in ``order`` as its kernels see them: in its frame (or
    divided by their norms, for a source of unit rows: :mod:`dkmeans.cosine`), checked
    (NaN, infinity, magnitudes) when no pass has read them yet, and with ``shuffle``,
    the rows of every block copied in a :func:`run_order` seeded by ``shuffle`` (one seed
    drawn per block, block after block). Counts as one pass of the source once
    exhausted."""
    check = source.check_finite and source.passes == 0
    view = prepared_kernel(_as_seen, source.shift, check, unit=source.unit)
    client = None if isinstance(source, InMemorySource) else distributed_client(source.x)
    reader = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="dkmeans-read")
    try:
        upcoming = iter(order)
        pending: deque[Future] = deque()

        def ready_next() -> None:
            index = next(upcoming, None)
            if index is not None:
                seed = None if shuffle is None else int(shuffle.integers(2**63))
                pending.append(reader.submit(_ready, source, view, int(index), seed, client))

        for _ in range(ahead + 1):
            ready_next()
        while pending:
            block = pending.popleft().result()
            ready_next()
            yield block
            del block  # only the blocks ahead are held while the consumer works
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
    source.passes += 1


def batch_spans(blocks: Iterable[Rows], batch_size: int) -> Iterator[tuple[Rows, int, int]]:
    """The rows of ``blocks`` in order, as spans ``(rows, start, stop)`` that the caller
    cuts into consecutive batches of ``batch_size`` rows: the whole batches within a block
    (a view of it), and every batch that spans the end of one block and the start of the
    next (copied). Only the last batch may be shorter.
    """
    held: list[Rows] = []
    n_held = 0
    for block in blocks:
        start = 0
        if n_held:
            start = min(batch_size - n_held, len(block))
            held.append(block.take(slice(0, start)))
            n_held += start
            if n_held < batch_size:
                continue
            yield Rows.concatenate(held), 0, batch_size
            held, n_held = [], 0
        stop = start + (len(block) - start) // batch_size * batch_size
        if stop > start:
            yield block, start, stop
        if stop < len(block):  # copied: the block itself is not held on to
            held, n_held = [Rows.concatenate([block.take(slice(stop, None))])], len(block) - stop
    if n_held:
        yield Rows.concatenate(held), 0, n_held
