"""The rows of a source streamed to the client in order, and cut into mini-batches.

Mini-batch k-means updates its centres after every batch, so the batches are processed
one after another, on the client. An in-memory source's blocks are views; the blocks of
a Dask source are computed in order on a reading thread of their own (Dask's threaded
scheduler or the cluster reads them), a few ahead of the one being processed, so that
reading overlaps the updates and at most ``ahead + 1`` blocks are held at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dask
import numpy as np

from .sources import DaskSource, InMemorySource, own_pool, prepared_kernel
from .watch import distributed_client

if TYPE_CHECKING:
    from distributed import Client

#: Blocks of a Dask source read ahead of the one being processed.
READ_AHEAD = 2


@dataclass(frozen=True)
class Rows:
    """Rows as the kernels see them (in the source's frame) and their weights."""

    x: np.ndarray  # (m, d)
    weights: np.ndarray | None  # (m,) float64, or None for all ones

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows: slice | np.ndarray) -> Rows:
        """A slice (a view) or a selection (a copy) of the rows."""
        weights = None if self.weights is None else self.weights[rows]
        if isinstance(rows, slice):
            return Rows(self.x[rows], weights)
        # np.take gathers rows 9x faster than fancy indexing (25,000 x 32 float32)
        return Rows(np.take(self.x, rows, axis=0), weights)

    @classmethod
    def concatenate(cls, parts: Sequence[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        weights = None if parts[0].weights is None else np.concatenate([p.weights for p in parts])
        return cls(np.concatenate([p.x for p in parts]), weights)


def _as_seen(block: np.ndarray, weights, row_offset: int, block_index: int) -> Rows:
    """A block as a source's kernel sees it (a kernel that keeps what it is given)."""
    return Rows(block, None if weights is None else np.asarray(weights, dtype=np.float64))


def _read(
    source: DaskSource, index: int, client: Client | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Block ``index`` of a Dask source (and its weights), computed on ``client`` (the
    client of the caller's thread) or else as Dask computes it here."""
    parts = [source.x.blocks[index]]
    if source.weights is not None:
        parts.append(source.weights.blocks[index])
    if client is not None:
        read = client.gather(client.compute(parts))
    else:
        read = dask.compute(*parts, **own_pool(*parts))
    return read[0], None if len(read) == 1 else read[1]


def source_blocks(
    source: InMemorySource | DaskSource, order: Iterable[int], *, ahead: int = READ_AHEAD
) -> Iterator[Rows]:
    """The blocks of ``source`` in ``order`` as its kernels see them: in its frame, and
    checked (NaN, infinity, magnitudes) when no pass has read them yet. Counts as one
    pass of the source once exhausted."""
    view = prepared_kernel(_as_seen, source.shift, source.check_finite and source.passes == 0)
    offsets = source.row_offsets
    if isinstance(source, InMemorySource):
        for i in order:
            weights = None if source.weight_blocks is None else source.weight_blocks[i]
            yield view(source.blocks[i], weights, int(offsets[i]), int(i))
        source.passes += 1
        return
    client = distributed_client(source.x)
    reader = ThreadPoolExecutor(1, thread_name_prefix="dkmeans-read")
    try:
        upcoming = iter(order)
        pending: deque[tuple[int, Future]] = deque()

        def read_next() -> None:
            index = next(upcoming, None)
            if index is not None:
                pending.append((int(index), reader.submit(_read, source, int(index), client)))

        for _ in range(ahead + 1):
            read_next()
        while pending:
            index, future = pending.popleft()
            block, weights = future.result()
            read_next()
            yield view(block, weights, int(offsets[index]), index)
            del block, weights  # only the reads ahead are held while the consumer works
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
    source.passes += 1


def mini_batches(
    blocks: Iterable[Rows], batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[Rows]:
    """Consecutive batches of ``batch_size`` rows of ``blocks`` taken in order.

    A batch may span the end of one block and the start of the next (it is then
    copied); only the last batch may be shorter. With ``rng``, the rows of every block
    are taken in a random order: every batch gathers its rows (no copy of the block).
    """
    pending: list[Rows] = []
    held = 0
    for block in blocks:
        order = None if rng is None else rng.permutation(len(block))

        def rows(start: int, stop: int | None, block: Rows = block, order=order) -> Rows:
            return block.take(slice(start, stop) if order is None else order[start:stop])

        start = 0
        if held:
            start = min(batch_size - held, len(block))
            pending.append(rows(0, start))
            held += start
            if held < batch_size:
                continue
            yield Rows.concatenate(pending)
            pending, held = [], 0
        stop = start + (len(block) - start) // batch_size * batch_size
        for first in range(start, stop, batch_size):
            yield rows(first, first + batch_size)
        if stop < len(block):
            pending, held = [rows(stop, None)], len(block) - stop
    if pending:
        yield Rows.concatenate(pending)
