"""Map a block kernel over the row blocks of the data and tree-reduce its results.

A *source* is the data an algorithm passes over: :class:`DaskSource` for a Dask
array (every pass is one ``compute`` of a tree reduction), :class:`InMemorySource`
for a NumPy array on the client (its blocks on a pool of threads, no task graph; one
block for the few weighted candidates of k-means||). Algorithms are written once
against :class:`Source` and never see the difference.

A kernel is called as ``kernel(block, weights, row_offset, block_index, *args,
**kwargs)`` and returns a :class:`~dkmeans.statistics.Combinable`; combining is done
in a fixed tree over block positions, so the result never depends on which task
finishes first.

Passes run on dkmeans's own threads (:func:`own_threads`): an :class:`InMemorySource`'s
blocks, and every pass, persist or read that dkmeans runs on Dask's threaded scheduler
(:func:`own_pool`). dkmeans touches no other pool and no state of Dask's.
"""

from __future__ import annotations

import atexit
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import pairwise
from typing import Any, Protocol

import dask
import dask.array as da
import dask.local
import dask.threaded
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.system import CPU_COUNT
from dask.utils import funcname

from .cosine import unit_rows
from .frame import check_values, shifted
from .passes import SpanPasses
from .resources import limit_blas
from .spans import many_blocks
from .tree import SPLIT_EVERY, Node, combine_all, depth, node_values, tree_level
from .watch import Blocks, check_worker_memory, distributed_client
from .watch import compute as watched_compute
from .watch import result as watched_result


class Source(Protocol):
    """Data that an algorithm can pass over."""

    n_rows: int
    n_features: int
    dtype: np.dtype
    passes: int
    #: Whether the kernels run in this process, so that they may keep state per block
    #: between passes (threads; not the workers of a cluster, nor processes).
    in_process: bool
    #: Kernels see every block minus this (:mod:`dkmeans.frame`); None: as stored.
    shift: np.ndarray | None
    #: Kernels see every row divided by its norm (:mod:`dkmeans.cosine`).
    unit: bool

    def map_reduce(self, kernel: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``kernel`` on every block and return the combined result."""

    def head(self, n_rows: int) -> np.ndarray:
        """The first ``n_rows`` rows, as stored (not shifted)."""


#: dkmeans's pools of threads, by size, with the process that started them.
_POOLS: dict[int, tuple[int, ThreadPoolExecutor]] = {}


def own_threads(threads: int) -> ThreadPoolExecutor:
    """dkmeans's pool of ``threads`` threads.

    Started on first use and kept for the life of the process (starting threads for every
    pass cost a quarter of a pass over 250,000 rows), shut down at exit. A process
    forked after it started inherits the pool but not its threads: there dkmeans leaves
    the inherited pool alone and starts a pool of its own.
    """
    owner, pool = _POOLS.get(threads, (None, None))
    if owner != os.getpid():
        pool = ThreadPoolExecutor(threads, thread_name_prefix="dkmeans")
        _POOLS[threads] = (os.getpid(), pool)
        atexit.register(pool.shutdown, wait=False)
    return pool


def own_pool(*collections: Any, scheduler: str | None = None) -> dict[str, Any]:
    """Keyword arguments that make ``dask.compute`` or ``dask.persist`` of ``collections``
    (with ``scheduler``) run on dkmeans's own threads where Dask would use its threaded
    scheduler's process-wide pool; none for another scheduler, a client, or a ``pool``
    in Dask's configuration. Dask's pool would hang a forked child that computes."""
    chosen = dask.base.get_scheduler(scheduler=scheduler, collections=list(collections))
    if chosen is not dask.threaded.get or dask.config.get("pool", None) is not None:
        return {}
    return {"pool": own_threads(dask.config.get("num_workers", None) or CPU_COUNT)}


def on_threads(block_result: Callable[[int], Any], n_blocks: int, threads: int) -> list[Any]:
    """``block_result(i)`` of every block ``i < n_blocks`` on dkmeans's pool of ``threads``
    threads, in block order: one task per thread, which takes the next block not yet
    taken until none is left (a task per block cost the caller a future, a wake-up and a
    result to wait for per block). A block that raises stops its thread; the error
    raised is that of the first block that raised, as a task per block would raise it
    (blocks are taken in order, so every block before it ran).
    """
    results: list[Any] = [None] * n_blocks
    errors: dict[int, BaseException] = {}
    taken = itertools.count()  # next() runs under the GIL: every block is taken once

    def work() -> None:
        for i in taken:
            if i >= n_blocks:
                return
            try:
                results[i] = block_result(i)
            except BaseException as error:  # raised in block order by the caller
                errors[i] = error
                return

    pool = own_threads(threads)
    for task in [pool.submit(work) for _ in range(min(threads, n_blocks))]:
        task.result()
    if errors:
        raise errors[min(errors)]
    return results


#: Blocks an in-process pass runs between combining their results into the tree
#: (:func:`~dkmeans.tree.node_values`): the results it holds are at most this many blocks'
#: (at k = 16,384 the candidates' weights of k-means|| take 84 MB a block), and the
#: threads wait for each other once per window. Folding every block as it came cost
#: 7-30% more at thousands of blocks of 200 rows (a wake-up per block).
FOLD_WINDOW = 64


def row_offsets(chunks: Sequence[int]) -> np.ndarray:
    """Global index of the first row of every block."""
    return np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(int)


class InMemorySource:
    """Data in this process's memory, in row blocks; a pass needs no task graph.

    The kernel runs on the blocks in a pool of ``threads`` threads (the kernels release
    the GIL) and the results are combined in the same tree as :class:`DaskSource`
    combines them, so both give bitwise the same result for the same blocks.

    Parameters
    ----------
    blocks : sequence of ndarray of shape (rows, d)
        The row blocks, in order (for a NumPy array see :meth:`of_array`).
    weight_blocks : sequence of ndarray of shape (rows,), optional
        The sample weights of every block; default: all ones.
    threads : int
        Blocks processed at once.
    split_every : int
        Fan-in of the combining tree.
    check_finite : bool
        Check every block's values during the first pass, as :class:`DaskSource` does
        (for data not validated yet).
    shift : ndarray of shape (d,), optional
        Kernels see every block minus ``shift`` (:mod:`dkmeans.frame`).
    unit : bool
        Kernels see every row divided by its norm (:mod:`dkmeans.cosine`).
    """

    def __init__(
        self,
        blocks: Sequence[np.ndarray],
        weight_blocks: Sequence[np.ndarray] | None = None,
        *,
        threads: int = 1,
        split_every: int = SPLIT_EVERY,
        check_finite: bool = False,
        shift: np.ndarray | None = None,
        unit: bool = False,
    ) -> None:
        self.blocks = list(blocks)
        self.weight_blocks = None if weight_blocks is None else list(weight_blocks)
        self.n_rows = sum(len(block) for block in self.blocks)
        self.n_features = self.blocks[0].shape[1]
        self.dtype = self.blocks[0].dtype
        self.row_offsets = row_offsets([len(block) for block in self.blocks])
        self.threads, self.split_every = threads, split_every
        self.check_finite = check_finite
        self.shift = shift
        self.unit = unit
        self.passes = 0
        self.in_process = True

    @classmethod
    def of_array(
        cls,
        x: np.ndarray,
        weights: np.ndarray | None = None,
        *,
        chunks: Sequence[int] | None = None,
        threads: int = 1,
        shift: np.ndarray | None = None,
        unit: bool = False,
    ) -> InMemorySource:
        """A NumPy array cut into blocks of ``chunks`` rows (default: one block), as views."""
        offsets = row_offsets(tuple(chunks) if chunks is not None else (len(x),))
        rows = [slice(a, b) for a, b in zip(offsets, [*offsets[1:], len(x)], strict=True)]
        return cls(
            [x[r] for r in rows],
            None if weights is None else [weights[r] for r in rows],
            threads=threads,
            shift=shift,
            unit=unit,
        )

    def head(self, n_rows: int) -> np.ndarray:
        parts, remaining = [], n_rows
        for block in self.blocks:
            if remaining <= 0:
                break
            parts.append(block[:remaining])
            remaining -= len(parts[-1])
        return np.concatenate(parts)

    def map_blocks(self, kernel: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """``kernel`` on every block (in the source's frame), on the pool of threads; the
        results in block order."""
        return self._map_range(kernel, range(len(self.blocks)), args, kwargs)

    def map_reduce(self, kernel: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # the tree of DaskSource.graph, node by node as a span's task combines it (one
        # child at a time), its blocks run a window at a time
        n_blocks, window = len(self.blocks), {}

        def block_value(node: Node) -> Any:
            level, block = node
            if level:
                return None
            if block not in window:
                blocks = range(block, min(block + FOLD_WINDOW, n_blocks))
                values = self._map_range(kernel, blocks, args, kwargs)
                window.update(zip(blocks, values, strict=True))
            return window.pop(block)

        root = (depth(n_blocks, self.split_every), 0)
        (value,) = node_values([root], block_value, n_blocks, self.split_every)
        self.passes += 1
        return value

    def _map_range(
        self,
        kernel: Callable[..., Any],
        blocks: range,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> list[Any]:
        """``kernel`` on the ``blocks`` (in the source's frame), on the pool of threads
        where there are several of both; the results in block order."""
        kernel = prepared_kernel(
            kernel, self.shift, self.check_finite and self.passes == 0, unit=self.unit
        )

        def block_result(i: int) -> Any:
            block = blocks[i]
            weights = None if self.weight_blocks is None else self.weight_blocks[block]
            return kernel(
                self.blocks[block], weights, int(self.row_offsets[block]), block, *args, **kwargs
            )

        if self.threads > 1 and len(blocks) > 1:
            with limit_blas(self.threads):
                return on_threads(block_result, len(blocks), self.threads)
        return [block_result(i) for i in range(len(blocks))]


class FiniteChecked:
    """A kernel that first checks its block's values (:func:`~dkmeans.frame.check_values`).

    Lazy data can only be checked as it is read; the first pass of a fit wraps its
    kernel in this so that NaN, infinity and magnitudes whose squares overflow are
    reported with their block, before they turn into NaN centres.
    """

    def __init__(self, kernel: Callable[..., Any]) -> None:
        self.kernel = kernel

    def __call__(self, block, weights, row_offset: int, block_index: int, *args, **kwargs):
        check_values(block, row_offset, block_index)
        return self.kernel(block, weights, row_offset, block_index, *args, **kwargs)

    @property
    def of_blocks(self) -> Callable[..., Any] | None:
        """The kernel's form over many blocks (:func:`~dkmeans.spans.many_blocks`),
        checking them first, or None if it has none."""
        inner = many_blocks(self.kernel)
        return None if inner is None else partial(self.checked_blocks, inner.call)

    @property
    def kept_bytes(self) -> Callable[..., int]:
        return many_blocks(self.kernel).kept_bytes

    @staticmethod
    def checked_blocks(call, x, edges, weights, row_offset, first_block, *args, **kwargs):
        """``call`` on consecutive blocks once their values are checked, all at once; the
        error names the first bad block."""
        try:
            check_values(x)
        except ValueError:
            for b, (lo, hi) in enumerate(pairwise(edges)):
                check_values(x[lo:hi], row_offset + int(lo), first_block + b)
            raise
        return call(x, edges, weights, row_offset, first_block, *args, **kwargs)


class Shifted:
    """A kernel that sees its block in the frame of ``shift`` (:mod:`dkmeans.frame`):
    ``block - shift``, one block at a time, so no copy of X is ever made."""

    def __init__(self, kernel: Callable[..., Any], shift: np.ndarray) -> None:
        self.kernel, self.shift = kernel, shift

    def __call__(self, block, weights, row_offset: int, block_index: int, *args, **kwargs):
        return self.kernel(
            shifted(block, self.shift), weights, row_offset, block_index, *args, **kwargs
        )

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("Shifted", tokenize(self.kernel), tokenize(self.shift))


class UnitRows:
    """A kernel that sees its block's rows divided by their norms (:mod:`dkmeans.cosine`),
    one block at a time, so no normalised copy of X is ever made; a row without a
    direction (norm zero or not finite) raises, named."""

    def __init__(self, kernel: Callable[..., Any]) -> None:
        self.kernel = kernel

    def __call__(self, block, weights, row_offset: int, block_index: int, *args, **kwargs):
        return self.kernel(
            unit_rows(block, row_offset, block_index),
            weights,
            row_offset,
            block_index,
            *args,
            **kwargs,
        )

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("UnitRows", tokenize(self.kernel))


def prepared_kernel(
    kernel: Callable[..., Any], shift: np.ndarray | None, check: bool, *, unit: bool = False
) -> Callable[..., Any]:
    """``kernel`` as a source runs it: in the frame of ``shift``, or on unit rows with
    ``unit`` (never both: a shift would change the rows' directions), after checking the
    block's values when ``check``. A kernel with a true ``takes_shift`` attribute gets
    ``shift=`` and applies it itself; any other sees every block minus ``shift``."""
    if unit and shift is not None:
        raise ValueError("unit rows have no shift: a shift would change their directions")
    if unit:
        kernel = UnitRows(kernel)
    if shift is not None and getattr(kernel, "takes_shift", False):
        kernel = partial(kernel, shift=shift)  # it shifts its cached sub-blocks itself
    elif shift is not None:
        kernel = Shifted(kernel, shift)
    return FiniteChecked(kernel) if check else kernel


def kernel_name(kernel: Callable[..., Any]) -> str:
    """The name of the kernel inside its wrappers (what the dashboard shows)."""
    while hasattr(kernel, "kernel"):
        kernel = kernel.kernel
    return funcname(kernel)


class DaskSource:
    """A Dask array chunked along rows only; one pass is one ``compute``.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
        One chunk across features.
    weights : dask.array.Array of shape (n,) or None
        Chunked like the rows of ``x``.
    split_every : int
        Fan-in of the tree reduction.
    on_pass : callable, optional
        Called with the pass number after every pass (progress reporting).
    check_finite : bool
        Check every block's values during the first pass.
    shift : ndarray of shape (d,), optional
        Kernels see every block minus ``shift`` (:mod:`dkmeans.frame`).
    unit : bool
        Kernels see every row divided by its norm (:mod:`dkmeans.cosine`).

    Raises
    ------
    dkmeans.watch.WorkerMemoryError
        On a distributed client whose workers cannot hold a block (before any work), or
        whose workers keep dying or stay paused during a pass.
    dkmeans.watch.SchedulerLostError
        When the client loses the scheduler.
    """

    def __init__(
        self,
        x: da.Array,
        weights: da.Array | None = None,
        *,
        split_every: int = SPLIT_EVERY,
        on_pass: Callable[[int], None] | None = None,
        check_finite: bool = False,
        shift: np.ndarray | None = None,
        unit: bool = False,
    ) -> None:
        if x.numblocks[1] != 1:
            raise ValueError("DaskSource needs one chunk across features; rechunk first")
        self.x = x
        self.weights = weights
        self.n_rows, self.n_features = x.shape
        self.dtype = x.dtype
        self.split_every = split_every
        self.on_pass = on_pass
        self.passes = 0
        self.check_finite = check_finite
        self.shift = shift
        self.unit = unit
        self.row_offsets = row_offsets(x.chunks[0])
        self.blocks = Blocks.of(x)
        client = distributed_client(x)
        if client is not None:
            check_worker_memory(client, self.blocks)
        #: On a distributed client, passes run as one task per worker (dkmeans.spans).
        self.spans = (
            None
            if client is None
            else SpanPasses(client, x, weights, self.row_offsets, split_every)
        )

    @property
    def in_process(self) -> bool:
        scheduler = dask.base.get_scheduler(collections=[self.x])
        return scheduler in (dask.threaded.get, dask.local.get_sync)

    def graph(self, kernel: Callable[..., Any], *args: Any, **kwargs: Any) -> Delayed:
        """The lazy tree reduction of ``kernel`` over all blocks (one key at the root).

        The layer is written out directly, one tuple per task: building it costs a few
        microseconds per block, where ``dask.delayed`` calls cost a third of a
        millisecond (``benchmarks/scheduling.py``), which adds up at 10,000 blocks.
        """
        token = tokenize(
            self.x.name,
            None if self.weights is None else self.weights.name,
            kernel,
            args,
            kwargs,
            self.split_every,
        )
        label = kernel_name(kernel)  # what the dashboard shows
        name, combined, shared_name = (
            f"{label}{part}-{token}" for part in ("", "-combine", "-arg")
        )
        call = partial(kernel, **kwargs) if kwargs else kernel
        layer: dict[Any, Any] = {}
        # small arrays (centres, candidates) enter the graph once, as one key each
        shared = []
        for i, arg in enumerate(args):
            if isinstance(arg, np.ndarray):
                layer[(shared_name, i)] = arg
                shared.append((shared_name, i))
            else:
                shared.append(arg)
        blocks = [key for (key,) in self.x.__dask_keys__()]
        weights = (
            [None] * len(blocks) if self.weights is None else list(self.weights.__dask_keys__())
        )
        level = []
        for i, (block, w, offset) in enumerate(zip(blocks, weights, self.row_offsets, strict=True)):
            layer[(name, i)] = (call, block, w, int(offset), i, *shared)
            level.append((name, i))
        depth = 0
        while len(level) > 1:
            depth += 1
            groups = tree_level(level, self.split_every)
            for i, group in enumerate(groups):
                layer[(combined, depth, i)] = (combine_all, group)
            level = [(combined, depth, i) for i in range(len(groups))]
        dependencies = [self.x] if self.weights is None else [self.x, self.weights]
        graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
        return Delayed(level[0], graph, layer=name)

    def compute(self, collection: Any, what: str) -> Any:
        """``collection`` computed; on a distributed client, with its workers watched
        (:func:`dkmeans.watch.compute`) so that a pass fails instead of waiting forever."""
        client = distributed_client(self.x)
        if client is not None:
            return watched_compute(client, collection, self.blocks, what)
        return dask.compute(collection, **own_pool(collection))[0]

    def head(self, n_rows: int) -> np.ndarray:
        return self.compute(self.x[:n_rows], f"the read of the first {n_rows} rows")

    def map_reduce(self, kernel: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kernel = prepared_kernel(
            kernel, self.shift, self.check_finite and self.passes == 0, unit=self.unit
        )
        label = kernel_name(kernel)
        what = f"pass {self.passes + 1} ({label})"
        if self.spans is None:
            with limit_blas():  # on this process's threads: one BLAS thread each
                result = self.compute(self.graph(kernel, *args, **kwargs), what)
        else:
            client = self.spans.client
            result = self.spans.run(
                kernel,
                label,
                args,
                kwargs,
                lambda submit, check: watched_result(client, submit, self.blocks, what, check),
            )
        self.passes += 1
        if self.on_pass is not None:
            self.on_pass(self.passes)
        return result
