"""Passes on a distributed client whose tasks follow the workers, not the blocks.

One task per block costs the scheduler about a millisecond per task (with the combine
tasks, ~1.14 tasks per block for held data and ~2.14 streamed: ``docs/scaling.md``);
at tens of thousands of blocks the scheduler, not the data, sets the pace. Here a pass
cuts the blocks into one contiguous *span* per worker (:data:`SPANS_PER_WORKER`): one
task per span runs the kernel over its blocks, a whole node of small blocks at a time,
on all the worker's threads (the span cut again into :data:`TASKS_PER_THREAD` parts
per thread, :func:`span_pass`), and returns the values of the span's nodes of the fixed
combining tree (:mod:`dkmeans.tree`); spans combine into the root in a tree of their
own, with the same calls of ``combine`` as one task per block, so the result is the
same to the last bit.

Where a span's blocks come from is decided once per fit (:class:`SpanPlan`):

- blocks held in cluster memory (a persisted array) are taken from the memory of the
  worker that runs the task: spans are cut exactly at the edges of each worker's runs
  of blocks (``Client.who_has``), so that no block crosses the network, and kept on
  that worker (``workers=[w]``, strictly: with ``allow_other_workers`` idle workers
  steal spans away from their blocks); when the blocks are scattered in more runs
  than twice the workers (as ``Client.persist`` places them), one task per worker
  takes all of that worker's runs, and the spans' node values merge into those of the
  root whatever their order (:func:`merge_spans`). When a worker of
  the plan is lost, or a block is not where the plan expected it
  (:class:`BlocksMoved`), the spans are planned again and the pass repeated: the
  scheduler recomputes lost blocks, which the new plan takes as dependencies;
- the blocks of a Zarr store as :func:`dkmeans.io.to_dask_array` wraps it are read
  inside the task, the rows of a node of blocks in one call of the store's reader
  (:func:`~dkmeans.readers.reader_of`);
- any other block is computed inside the task from its own part of the array's graph.

The plans travel to the workers once per fit, as tasks; the kernel's array arguments
(the centres) once per pass, as one task; so the client's work per pass does not grow
with the number of blocks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any, NamedTuple

import dask.core
import numpy as np

from .readers import NamedChunkReader, reader_of
from .statistics import Combinable
from .tree import SPLIT_EVERY, Node, node_blocks, node_values, span_nodes

if TYPE_CHECKING:
    import dask.array as da
    from distributed import Client, Future

#: Spans per worker in a pass: one, whose task runs its parts on the worker's threads
#: (the kernels release the GIL), so that the scheduler's work per pass follows the
#: workers, not their threads.
SPANS_PER_WORKER = 1

#: Parts of a span per thread of its worker (:attr:`SpanPlan.parts`): more than one, so
#: that a thread that finishes early can take another part.
TASKS_PER_THREAD = 2

#: Bytes of rows (and of what the kernel keeps per block) that a task takes at once
#: from blocks smaller than this (:func:`span_pass`): blocks of a few rows cost one call
#: of the kernel per node of the tree that holds this much, not one per block.
BATCH_BYTES = 4 * 2**20


class BlocksMoved(RuntimeError):
    """A span's task ran on a worker that does not hold its blocks (its own worker was
    lost, or the blocks moved): the pass is planned again and repeated."""


@dataclass(frozen=True)
class BlockRecipe:
    """How a task obtains one block: the keys of the array's graph held in cluster
    memory that it needs (with the keys of their data on the workers), and the part of
    the graph that computes the block from them (None when the block itself is held)."""

    key: Hashable
    held: tuple[tuple[Hashable, Hashable], ...]
    graph: dict[Hashable, Any] | None


def block_values(
    blocks: Sequence[BlockRecipe], held: Callable[[Sequence[Hashable]], list[Any]]
) -> list[np.ndarray]:
    """The blocks of ``blocks`` (run on a worker; ``held``: :func:`held_values`): held ones
    taken from memory, the others computed from their parts of the graph, all in one call
    (a call per block cost ~130 us more than its share of one)."""
    pairs = [pair for block in blocks for pair in block.held]
    values = dict(zip([key for key, _ in pairs], held([data for _, data in pairs]), strict=True))
    graph = {key: task for block in blocks if block.graph for key, task in block.graph.items()}
    computed = [block.key for block in blocks if block.graph is not None]
    if computed:
        values.update(zip(computed, dask.core.get({**graph, **values}, computed), strict=True))
    return [values[block.key] for block in blocks]


def held_values(fetched: dict[Hashable, Any]) -> Callable[[Sequence[Hashable]], list[Any]]:
    """Run on a worker: a function that gives the values of keys held in cluster memory,
    fetched for this task by the scheduler or taken from this worker's memory.

    Values in memory are read from the dict under the worker's ``SpillBuffer`` (zict's
    ``Buffer.fast.d``; a read through the buffer cost ~40 us, ~1 us from the dict), all
    the keys of a call in one loop in C (``map(dict.get, keys)``: ~0.05 us a key, where a
    Python call per key cost ~1 us); others through the buffer, which brings spilled
    values back. Outside a worker, only ``fetched`` holds values.
    """
    from distributed import get_worker

    try:  # in the task's own thread: the threads it starts see no worker
        data: MutableMapping[Hashable, Any] = get_worker().data
    except ValueError:  # no worker: the values are all in ``fetched``
        data = {}
    in_memory: Mapping[Hashable, Any] = getattr(getattr(data, "fast", None), "d", {})

    def value(key: Hashable) -> Any:
        if key in fetched:
            return fetched[key]
        try:
            return data[key]
        except KeyError:
            raise BlocksMoved(f"block {key} is not on this worker") from None

    def values(keys: Sequence[Hashable]) -> list[Any]:
        found = list(map(in_memory.get, keys))
        return [value(key) if v is None else v for key, v in zip(keys, found, strict=True)]

    return values


def recipes(array: da.Array) -> tuple[list[BlockRecipe], dict[Hashable, Future]]:
    """The recipe of every row block of ``array`` (chunked along rows only), and the
    futures of the keys they need that are held in cluster memory, by their data keys."""
    from distributed import Future

    graph = dict(array.__dask_graph__())
    held = {key: value for key, value in graph.items() if isinstance(value, Future)}
    result = []
    for key in dask.core.flatten(array.__dask_keys__()):
        if key in held:
            result.append(BlockRecipe(key, ((key, held[key].key),), None))
            continue
        part, needs, stack = {key: graph[key]}, [], [key]
        while stack:
            for dependency in dask.core.get_dependencies(graph, stack.pop()):
                if dependency in held and (dependency, held[dependency].key) not in needs:
                    needs.append((dependency, held[dependency].key))
                elif dependency not in held and dependency not in part:
                    part[dependency] = graph[dependency]
                    stack.append(dependency)
        result.append(BlockRecipe(key, tuple(needs), part))
    return result, {future.key: future for future in held.values()}


@dataclass(frozen=True)
class SpanPlan:
    """What one task of a pass passes over: blocks ``start:stop`` of ``n_blocks``."""

    start: int
    stop: int
    n_blocks: int
    split_every: int
    blocks: tuple[BlockRecipe, ...]
    weights: tuple[BlockRecipe, ...] | None
    row_offsets: tuple[int, ...]
    #: Rows of every block, and bytes of a row.
    rows: tuple[int, ...]
    row_bytes: int
    #: The worker that holds most of the span's held keys (None: any worker).
    worker: str | None
    #: The reader whose rows the blocks are, one read per block (a Zarr array as
    #: :func:`dkmeans.io.to_dask_array` wraps it; :func:`~dkmeans.readers.reader_of`):
    #: the task reads the rows of many blocks at once. None: the blocks' recipes.
    reader: NamedChunkReader | None = None
    #: The threads of the worker the task runs on: it runs its :attr:`parts` on as many.
    threads: int = 1
    #: The worker a span of blocks not held is sent to (any other may take it).
    host: str | None = None

    @cached_property
    def parts(self) -> list[int]:
        """Where the parts of the span that the task's threads take begin and end (one
        part on one thread: more would only cut its nodes smaller)."""
        count = 1 if self.threads == 1 else TASKS_PER_THREAD * self.threads
        return even_cuts(self.start, self.stop, count)

    @cached_property
    def row_edges(self) -> np.ndarray:
        """Where the span's blocks begin in its rows, and its rows last (int64)."""
        return np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)])

    @cached_property
    def block_keys(self) -> tuple[Hashable, ...] | None:
        """The keys of the blocks' data on the workers when every block is held as it is
        (:func:`held_keys`; found once per fit, on the worker, not at every pass)."""
        return held_keys(self.blocks)

    @cached_property
    def weight_keys(self) -> tuple[Hashable, ...] | None:
        """:attr:`block_keys` of the weights."""
        return None if self.weights is None else held_keys(self.weights)

    def fits(self, blocks: range, block_bytes: int) -> bool:
        """Whether a task can take ``blocks`` (positions in the array) at once: their
        rows, and ``block_bytes`` kept per block, within :data:`BATCH_BYTES`."""
        rows = sum(self.rows[blocks.start - self.start : blocks.stop - self.start])
        return max(rows * self.row_bytes, len(blocks) * block_bytes) <= BATCH_BYTES


def held_keys(blocks: Sequence[BlockRecipe]) -> tuple[Hashable, ...] | None:
    """The keys of the data of ``blocks`` on the workers when every block is held as it
    is (a persisted array), else None (some are computed from their parts of the graph)."""
    if any(block.graph is not None for block in blocks):
        return None
    return tuple(data for block in blocks for _, data in block.held)


class ManyBlocks(NamedTuple):
    """A kernel's form over many consecutive blocks at once (``kernel.of_blocks``)."""

    #: ``call(x, edges, weights, row_offset, first_block, split_every, *args, **kwargs)``:
    #: ``x`` the blocks' rows one after another, block ``b`` rows ``edges[b]:edges[b + 1]``;
    #: returns their results combined as the tree of fan-in ``split_every`` over them
    #: combines them (the value of the tree node whose blocks they are).
    call: Callable[..., Combinable]
    #: ``kept_bytes(*args, **kwargs)``: bytes the call keeps per block besides the rows.
    kept_bytes: Callable[..., int]


def many_blocks(kernel: Callable[..., Any]) -> ManyBlocks | None:
    """``kernel``'s form over many blocks (its attributes ``of_blocks`` and
    ``kept_bytes``; through a ``functools.partial`` of keywords), or None."""
    if isinstance(kernel, partial) and not kernel.args:
        inner = many_blocks(kernel.func)
        if inner is None:
            return None
        return ManyBlocks(partial(inner.call, **kernel.keywords), inner.kept_bytes)
    call = getattr(kernel, "of_blocks", None)
    return None if call is None else ManyBlocks(call, kernel.kept_bytes)


def span_pass(
    plans: Sequence[SpanPlan],
    kernel: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fetched: dict[Hashable, Any],
) -> list[tuple[Node, Any]]:
    """Run on a worker: ``kernel`` on the blocks of a task's spans (one or more runs of
    blocks, all planned for this worker); the values of their tree nodes, merged
    (:func:`merge_spans`). ``fetched``: the held keys the spans need from other workers.

    A kernel with a form over many blocks (:func:`many_blocks`) runs once per node of
    the tree whose blocks fit in :data:`BATCH_BYTES` and returns the node's value; any
    other kernel, or a block that does not fit, runs one block at a time. The spans'
    :attr:`~SpanPlan.parts` run on the worker's threads and combine as spans do.
    """
    many = many_blocks(kernel)
    block_bytes = 0 if many is None else many.kept_bytes(*args, **kwargs)
    held = held_values(fetched)
    first = plans[0]
    if len(plans) < TASKS_PER_THREAD * first.threads:
        parts = [(plan, blocks) for plan in plans for blocks in pairwise(plan.parts)]
    else:  # enough spans for the threads: a span cut smaller only has more tree nodes
        parts = [(plan, (plan.start, plan.stop)) for plan in plans]

    def part(plan_and_blocks: tuple[SpanPlan, tuple[int, int]]) -> list[tuple[Node, Any]]:
        plan, blocks = plan_and_blocks
        known = partial(known_value, plan, held, kernel, many, block_bytes, args, kwargs)
        nodes = span_nodes(*blocks, plan.n_blocks, plan.split_every)
        values = node_values(nodes, known, plan.n_blocks, plan.split_every)
        return list(zip(nodes, values, strict=True))

    if len(parts) == 1:
        return part(parts[0])
    if first.threads == 1:
        return merge_spans(first.n_blocks, first.split_every, *map(part, parts))
    # the kernels release the GIL: the worker's threads, one task for the scheduler
    with ThreadPoolExecutor(min(first.threads, len(parts))) as pool:
        return merge_spans(first.n_blocks, first.split_every, *pool.map(part, parts))


def known_value(
    plan: SpanPlan,
    held: Callable[[Sequence[Hashable]], list[Any]],
    kernel: Callable[..., Any],
    many: ManyBlocks | None,
    block_bytes: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    node: Node,
) -> Any:
    """Run on a worker: the value of ``node`` of the span ``plan`` from its blocks when
    one call of ``kernel`` gives it (a block, or a node of blocks that fit at once),
    else None (:func:`~dkmeans.tree.node_values` combines its children)."""

    def joined(
        recipes: tuple[BlockRecipe, ...] | None, keys: tuple[Hashable, ...] | None, blocks: range
    ) -> np.ndarray | None:
        """The values of ``blocks`` one after another (None for no recipes); ``keys``:
        the keys of their data when all are held as they are (:func:`held_keys`)."""
        if recipes is None:
            return None
        part = slice(blocks.start - plan.start, blocks.stop - plan.start)
        values = held(keys[part]) if keys is not None else block_values(recipes[part], held)
        return values[0] if len(values) == 1 else one_after_another(values)

    def rows(blocks: range) -> np.ndarray:
        """The rows of ``blocks``: a run of a store's rows in one read (its chunks one
        after another, without a task of the graph per block), else joined."""
        if plan.reader is None:
            return joined(plan.blocks, plan.block_keys, blocks)
        first = plan.row_offsets[blocks.start - plan.start]
        count = sum(plan.rows[blocks.start - plan.start : blocks.stop - plan.start])
        return plan.reader[(slice(first, first + count), slice(None))]

    blocks = node_blocks(node, plan.n_blocks, plan.split_every)
    offset = plan.row_offsets[blocks.start - plan.start]
    if len(blocks) == 1:
        x, weights = rows(blocks), joined(plan.weights, plan.weight_keys, blocks)
        return kernel(x, weights, offset, blocks.start, *args, **kwargs)
    if many is None or not plan.fits(blocks, block_bytes):
        return None
    edges = plan.row_edges[blocks.start - plan.start : blocks.stop - plan.start + 1]
    return many.call(
        rows(blocks),
        edges - edges[0],
        joined(plan.weights, plan.weight_keys, blocks),
        offset,
        blocks.start,
        plan.split_every,
        *args,
        **kwargs,
    )


def one_after_another(values: list[np.ndarray]) -> np.ndarray:
    """Run on a worker: the arrays ``values`` (blocks of one array: one dtype, one width)
    one after another, in a new writable array.

    Their bytes joined in one ``bytearray`` when all are C-contiguous and of one dtype
    (6,250 blocks of 8 x 32 float32 rows: 0.50-0.53 us a block, against 0.71-1.06 for
    ``np.concatenate``, whose checks per array cost more than copying a small block);
    else ``np.concatenate``.
    """
    first = values[0]
    if all(value.dtype == first.dtype for value in values):
        try:
            joined = bytearray().join(values)
        except (TypeError, BufferError):  # not C-contiguous: no flat buffer
            pass
        else:
            return np.frombuffer(joined, dtype=first.dtype).reshape(-1, *first.shape[1:])
    return np.concatenate(values)


def merge_spans(
    n_blocks: int, split_every: int, *spans: list[tuple[Node, Any]]
) -> list[tuple[Node, Any]]:
    """Run on a worker: the node values of spans combined into those of their union,
    the maximal nodes of every run of consecutive blocks they cover, left to right (the
    spans need not be consecutive, nor in order: a task's spans are a worker's runs)."""
    known = dict(node for span in spans for node in span)
    covered = sorted(
        (node_blocks(node, n_blocks, split_every) for node in known), key=lambda r: r.start
    )
    merged: list[tuple[Node, Any]] = []
    start = 0
    for i, blocks in enumerate(covered):
        if i == 0 or blocks.start != covered[i - 1].stop:
            start = blocks.start
        if i + 1 == len(covered) or covered[i + 1].start != blocks.stop:
            nodes = span_nodes(start, blocks.stop, n_blocks, split_every)
            values = node_values(nodes, known.get, n_blocks, split_every)
            merged += zip(nodes, values, strict=True)
    return merged


def cuts(owners: Sequence[str | None], threads: dict[str, int], tasks_per_thread: int) -> list[int]:
    """Where spans begin and end (0 first, the number of blocks last).

    About ``tasks_per_thread`` spans per worker thread. ``owners`` names the worker that
    holds every block (None: not held): each worker's runs of blocks are cut in as many
    spans as it has threads times ``tasks_per_thread``, in proportion to their lengths.
    Spans begin and end exactly at the edges of the runs, so that no held block crosses
    the network (a ragged edge costs the span a few more tree nodes: at most
    ``SPLIT_EVERY - 1`` per level). Cuts inside a run fall on multiples of a power of
    :data:`SPLIT_EVERY` of at most an eighth of a span, so that a span returns few tree
    nodes. Blocks scattered in many short runs give as many spans
    (:func:`plan_spans` gives a worker's runs to one task).
    """
    n = len(owners)
    wanted = tasks_wanted(n, threads, tasks_per_thread)
    unit = alignment(n, wanted)
    share = Counter(owners)
    edges = [0, *(i for i in range(1, n) if owners[i] != owners[i - 1]), n]
    chosen = []
    for start, stop in pairwise(edges):
        owner = owners[start]
        pieces = wanted if owner is None else tasks_per_thread * threads.get(owner, 1)
        count = max(1, round(pieces * (stop - start) / share[owner]))
        inside = [start + round(j * (stop - start) / count) for j in range(1, count)]
        chosen += aligned(inside, start, stop, unit)[:-1]
    chosen.append(n)
    return chosen


def tasks_wanted(n_blocks: int, threads: dict[str, int], tasks_per_thread: int) -> int:
    """Spans a pass is cut into: ``tasks_per_thread`` per worker thread, at most one per
    block, at least one."""
    return max(1, min(n_blocks, tasks_per_thread * sum(threads.values())))


def alignment(n: int, count: int) -> int:
    """The power of :data:`SPLIT_EVERY` that cuts of ``n`` blocks into ``count`` spans
    fall on multiples of: at most an eighth of a span."""
    unit = 1
    while unit * SPLIT_EVERY * SPLIT_EVERY * count <= n:
        unit *= SPLIT_EVERY
    return unit


def even_cuts(start: int, stop: int, count: int) -> list[int]:
    """Where ``count`` spans of about equal length over blocks ``start:stop`` begin and
    end, aligned as :func:`cuts` aligns them."""
    n = stop - start
    positions = [start + round(j * n / count) for j in range(1, count)]
    return aligned(positions, start, stop, alignment(n, count))


def aligned(positions: Sequence[int], start: int, stop: int, unit: int) -> list[int]:
    """``positions`` rounded to multiples of ``unit`` within ``start:stop``, with
    ``start`` and ``stop``, sorted, unique."""
    inside = {min(stop, max(start, unit * round(p / unit))) for p in positions}
    return sorted({start, stop} | inside)


#: What one task of a pass passes over: the plans of one or more spans, all placed on
#: the same worker, and the futures of the held keys they need from other workers.
Span = tuple[tuple[SpanPlan, ...], dict[Hashable, "Future"]]


def plan_spans(
    client: Client,
    x: da.Array,
    weights: da.Array | None,
    row_offsets: np.ndarray,
    split_every: int = SPLIT_EVERY,
    spans_per_worker: int = SPANS_PER_WORKER,
) -> list[Span]:
    """The tasks of a pass over the blocks of ``x`` on ``client``'s workers.

    One task per span, cut by :func:`cuts`; when the held blocks lie scattered in more
    runs than twice the tasks wanted (the scheduler places a persisted array's blocks
    by its own heuristics: 41 runs for 64 blocks on 4 workers), one task takes all the
    spans of one worker, so that the tasks still follow the workers and no held block
    crosses the network.
    """
    blocks, held = recipes(x)
    reader = reader_of(x)
    weight_blocks = None
    if weights is not None:
        weight_blocks, held_weights = recipes(weights)
        held.update(held_weights)
    where = client.who_has(list(held.values())) if held else {}
    owner = {key: (where.get(key) or [None])[0] for key in held}
    owners = [owner[b.held[0][1]] if b.held else None for b in blocks]
    spans = []
    threads = client.nthreads()
    hosts = sorted(threads)
    one_each = dict.fromkeys(threads, 1)  # one task per worker: its threads run its parts
    edges = cuts(owners, one_each, spans_per_worker)
    for i, (start, stop) in enumerate(pairwise(edges)):
        ((worker, _),) = Counter(owners[start:stop]).most_common(1)
        host = None if worker is not None or not hosts else hosts[i % len(hosts)]
        mine = blocks[start:stop]
        theirs = None if weight_blocks is None else weight_blocks[start:stop]
        needed = {data for b in [*mine, *(theirs or ())] for _, data in b.held}
        plan = SpanPlan(
            start,
            stop,
            len(blocks),
            split_every,
            tuple(mine),
            None if theirs is None else tuple(theirs),
            tuple(int(o) for o in row_offsets[start:stop]),
            tuple(int(r) for r in x.chunks[0][start:stop]),
            x.shape[1] * x.dtype.itemsize,
            worker,
            reader,
            threads.get(worker or host, 1),
            host,
        )
        spans.append(((plan,), {key: held[key] for key in needed if owner[key] != worker}))
    wanted = tasks_wanted(len(blocks), one_each, spans_per_worker)
    return spans if len(spans) <= 2 * wanted else by_worker(spans)


def by_worker(spans: Sequence[Span]) -> list[Span]:
    """``spans`` of one plan each gathered into one task per worker (or host), in the
    order of their first spans."""
    plans_of: dict[str | None, list[SpanPlan]] = {}
    fetched_by: dict[str | None, dict[Hashable, Future]] = {}
    for plans, remote in spans:
        where = plans[0].worker or plans[0].host
        plans_of.setdefault(where, []).extend(plans)
        fetched_by.setdefault(where, {}).update(remote)
    return [(tuple(plans), fetched_by[where]) for where, plans in plans_of.items()]


def placed_on(plans: Sequence[SpanPlan]) -> dict[str, Any]:
    """``Client.submit``'s keywords that keep a task's spans on the worker that holds
    their blocks (a loose restriction would let idle workers steal it), or send it to
    its host (loosely: the spans of blocks not held, one per worker)."""
    plan = plans[0]
    if plan.worker is not None:
        return {"workers": [plan.worker]}
    return {} if plan.host is None else {"workers": [plan.host], "allow_other_workers": True}
