"""Passes whose tasks follow the workers, not the blocks (dkmeans.spans, dkmeans.tree).

Spans of blocks combine into the root with exactly the calls of ``combine`` of the
fixed tree (checked on expressions that record their shape, for any cuts); spans follow
the runs of blocks each worker holds. A task takes the blocks of a node of the tree at
once (one compiled call, the blocks' results folded in the tree's order) with the bits
of one block at a time, on both engines, in bounded memory. On a LocalCluster of 4
worker processes of 2 threads (one per module): a pass over 5,000 blocks held in the
workers' memory and over a store of 5,000 chunks submits one task per worker, whose
parts run on the worker's threads, and equals the pass on threads bitwise, also when a
worker is killed mid-pass; blocks held in many runs dealt to the workers in turn are
still one task per worker, none fetched; a fit over held blocks that loses a worker ends
as an undisturbed one. Through span loops resident on the workers (dkmeans.passes), a pass
takes no task at all and gives the same bits, also when a worker holding a loop dies
(the pass is repeated as span tasks), and a whole fit through them equals one on threads;
the loops call each other in a tree that visits
the spans in order.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.highlevelgraph import HighLevelGraph
from dask.utils import key_split
from distributed import Client, LocalCluster, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from hypothesis import given, settings
from hypothesis import strategies as st

import dkmeans.io
import dkmeans.passes
import dkmeans.readers
import dkmeans.sources
import dkmeans.spans
from dkmeans import KMeans
from dkmeans.kernels import pass_statistics, pass_statistics_of_blocks
from dkmeans.passes import loop_tree
from dkmeans.sources import DaskSource, InMemorySource, prepared_kernel
from dkmeans.spans import BlockRecipe, SpanPlan, cuts, merge_spans, span_pass
from dkmeans.tree import (
    SPLIT_EVERY,
    combine_all,
    depth,
    node_blocks,
    node_values,
    span_nodes,
    tree_level,
)

#: Blocks of the arrays the cluster passes over, and their rows. The issue's 20,000 cost
#: 100 s of the suite's 10 minutes (scattering them, the per-block reference); the task
#: counts do not depend on it, and benchmarks/scheduling.py runs up to 50,000.
N_BLOCKS, BLOCK_ROWS, FEATURES = 5_000, 2, 3
WORKERS, THREADS = 4, 2


@dataclass(frozen=True)
class Expr:
    """A partial result that records the order in which it was combined."""

    text: str

    def combine(self, other: Expr) -> Expr:
        return Expr(f"({self.text} {other.text})")


def tree_root(n_blocks: int, split_every: int) -> Expr:
    """The root of one task per block, level by level, as DaskSource's graph combines."""
    level = [Expr(str(i)) for i in range(n_blocks)]
    while len(level) > 1:
        level = [combine_all(group) for group in tree_level(level, split_every)]
    return level[0]


def leaf(node: tuple[int, int]) -> Expr | None:
    return Expr(str(node[1])) if node[0] == 0 else None


@settings(max_examples=80, deadline=None)
@given(
    n_blocks=st.integers(1, 700),
    fractions=st.lists(st.floats(0, 1), max_size=12),
    split_every=st.sampled_from([2, 3, 8]),
    shuffle=st.randoms(use_true_random=False),
)
def test_spans_combine_exactly_as_the_tree(n_blocks, fractions, split_every, shuffle) -> None:
    # in any order: a task's spans are one worker's runs, and tasks merge in any groups
    edges = sorted({0, n_blocks, *(int(f * n_blocks) for f in fractions)})
    spans = []
    for start, stop in pairwise(edges):
        nodes = span_nodes(start, stop, n_blocks, split_every)
        covered = [b for node in nodes for b in node_blocks(node, n_blocks, split_every)]
        assert covered == list(range(start, stop))
        values = node_values(nodes, leaf, n_blocks, split_every)
        spans.append(list(zip(nodes, values, strict=True)))
    shuffle.shuffle(spans)
    while len(spans) > 1:
        spans = [merge_spans(n_blocks, split_every, *g) for g in tree_level(spans, split_every)]
    ((_, root),) = spans[0]
    assert root == tree_root(n_blocks, split_every)


@settings(max_examples=30, deadline=None)
@given(n_blocks=st.integers(1, 700), split_every=st.sampled_from([2, 3, 8]))
def test_an_in_process_pass_combines_exactly_as_the_tree(n_blocks, split_every) -> None:
    # an in-process pass combines its blocks node by node, a window of blocks at a time
    blocks = [np.zeros((1, 1), dtype=np.float32)] * n_blocks
    source = InMemorySource(blocks, threads=2, split_every=split_every)
    root = source.map_reduce(lambda block, weights, offset, index: Expr(str(index)))
    assert root == tree_root(n_blocks, split_every)


class Counted:
    """A partial result that counts how many are alive and records its combining order."""

    alive = 0
    most = 0

    def __init__(self, text: str) -> None:
        self.text = text
        Counted.alive += 1
        Counted.most = max(Counted.most, Counted.alive)

    def __del__(self) -> None:
        Counted.alive -= 1

    def combine(self, other: Counted) -> Counted:
        return Counted(f"({self.text} {other.text})")


def test_an_in_process_pass_holds_a_window_of_blocks_results_not_all() -> None:
    n_blocks = 3_000
    x = np.zeros((n_blocks, 1), dtype=np.float32)
    source = InMemorySource.of_array(x, chunks=[1] * n_blocks, threads=2)
    Counted.alive = Counted.most = 0
    root = source.map_reduce(lambda block, weights, offset, index: Counted(str(index)))
    assert root.text == tree_root(n_blocks, SPLIT_EVERY).text
    assert Counted.most <= dkmeans.sources.FOLD_WINDOW + 2 * depth(n_blocks)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(0, 9), min_size=1, max_size=8),
    width=st.sampled_from([(), (1,), (3,)]),
    dtype=st.sampled_from(["float16", "float32", "float64", "int64"]),
    fortran=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_blocks_one_after_another_are_their_concatenation(rows, width, dtype, fortran) -> None:
    rng = np.random.default_rng(len(rows))
    values = [
        np.asfortranarray(block) if f else block
        for block, f in zip(
            (rng.normal(size=(n, *width)).astype(dtype) for n in rows), fortran, strict=False
        )
    ]
    joined = dkmeans.spans.one_after_another(values)
    expected = np.concatenate(values)
    assert joined.dtype == expected.dtype and joined.shape == expected.shape
    np.testing.assert_array_equal(joined, expected)
    assert joined.flags.writeable


def test_cuts_follow_the_runs_of_each_worker() -> None:
    threads = {"a": 1, "b": 2, "c": 1}
    owners = ["a"] * 3000 + ["b"] * 5000 + ["c"] * 1000 + ["a"] * 1000
    edges = cuts(owners, threads, tasks_per_thread=2)
    spans = list(pairwise(edges))
    assert len(spans) <= 2 * 2 * sum(threads.values())
    for start, stop in spans:  # a span takes at most a few blocks from a neighbour
        most = max(owners[start:stop].count(w) for w in threads)
        assert stop - start - most <= (stop - start) // 16
    owned = {w: sum(1 for s, t in spans if owners[s] == w) for w in threads}
    for worker, count in threads.items():  # about twice its threads (a's runs: 3 + 1)
        assert abs(owned[worker] - 2 * count) <= 1


def test_cuts_of_unheld_blocks_are_even() -> None:
    edges = cuts([None] * 10_000, {"a": 2, "b": 2}, tasks_per_thread=2)
    sizes = np.diff(edges)
    assert len(sizes) == 8 and sizes.max() - sizes.min() <= 64
    assert all(e % 64 == 0 for e in edges[:-1])  # few tree nodes per span


def test_scattered_runs_are_one_task_per_worker() -> None:
    owners = ["a", "b", "b", "c", "a", "a", "c", "b"] * 10
    spans = [
        ((SpanPlan(a, b, len(owners), SPLIT_EVERY, (), None, (), (), 4, owners[a]),), {})
        for a, b in pairwise(cuts(owners, {"a": 1, "b": 1, "c": 1}, tasks_per_thread=1))
    ]
    assert len(spans) == 60  # one per run: a, bb, c, aa, c, b
    tasks = dkmeans.spans.by_worker(spans)
    assert [plans[0].worker for plans, _ in tasks] == ["a", "b", "c"]
    for plans, _ in tasks:  # every run of the worker's, in order, and only its
        starts = [plan.start for plan in plans]
        assert starts == sorted(starts)
        worker = plans[0].worker
        assert sum(plan.stop - plan.start for plan in plans) == owners.count(worker)
        assert all(set(owners[p.start : p.stop]) == {worker} for p in plans)


@settings(max_examples=40, deadline=None)
@given(
    runs=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 3000)), min_size=1, max_size=4),
    tasks_per_thread=st.sampled_from([1, 2]),
)
def test_spans_of_held_runs_keep_to_their_worker(runs, tasks_per_thread) -> None:
    owners = [worker for worker, length in runs for _ in range(length)]
    edges = cuts(owners, {"a": 1, "b": 2, "c": 1, "d": 1}, tasks_per_thread)
    assert edges[0] == 0 and edges[-1] == len(owners) and edges == sorted(set(edges))
    for start, stop in pairwise(edges):  # cut at the runs' edges: no block crosses over
        assert len(set(owners[start:stop])) == 1


def lloyd_tree(parts: list) -> object:
    """The partial results of blocks combined as DaskSource's graph combines them."""
    while len(parts) > 1:
        parts = [combine_all(group) for group in tree_level(parts, SPLIT_EVERY)]
    return parts[0]


def same_stats(a, b) -> bool:
    """Whether two Lloyd passes' statistics are equal to the last bit."""
    fields = ("sums", "counts", "cluster_inertia")
    same = all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)
    for x, y in zip(a.far, b.far, strict=True):
        fields = ("rows", "distances", "labels", "weights", "index")
        same &= all(np.array_equal(getattr(x.chosen, f), getattr(y.chosen, f)) for f in fields)
    if a.moments is not None:
        same &= a.moments.count == b.moments.count
        same &= np.array_equal(a.moments.mean, b.moments.mean)
        same &= np.array_equal(a.moments.m2, b.moments.m2)
    return bool(same)


def one_at_a_time(blocks: list[np.ndarray], weights, centers, bounds, **options):
    """The pass over ``blocks`` one block at a time, combined in the tree."""
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blocks])[:-1]])
    return lloyd_tree(
        [
            pass_statistics(block, w, int(offset), i, centers, bounds, **options)
            for i, (block, w, offset) in enumerate(zip(blocks, weights, offsets, strict=True))
        ]
    )


# the first two are the kinds of the passes on the cluster below (compiled once here)
@pytest.mark.parametrize(
    "options",
    [
        {"with_moments": True},
        {"far_capacity": 2},
        {"far_capacity": 0, "shift": np.full(5, 0.5), "dtype": np.float16, "weighted": True},
        {"with_moments": True, "shift": np.full(5, 0.5), "dtype": np.float16},
    ],
)
def test_blocks_at_once_give_the_bits_of_blocks_one_at_a_time(implementation, options) -> None:
    options = dict(options)
    dtype, weighted = options.pop("dtype", np.float32), options.pop("weighted", False)
    rng = np.random.default_rng(3)
    sizes = rng.integers(0, 20, size=75)
    sizes[[3, 40]] = 0  # empty blocks too
    edges = np.concatenate([[0], np.cumsum(sizes)])
    x = rng.normal(size=(edges[-1], 5)).astype(dtype)
    weights = rng.random(edges[-1]) if weighted else None
    if weighted:
        weights[::7] = 0
    centers, bounds = rng.normal(size=(7, 5)), np.array([0, 3, 7])
    blocks = [x[a:b] for a, b in pairwise(edges)]
    block_weights = [None if w is None else w[a:b] for w in [weights] for a, b in pairwise(edges)]
    reference = one_at_a_time(blocks, block_weights, centers, bounds, **options)
    node = pass_statistics_of_blocks(x, edges, weights, 0, 0, 8, centers, bounds, **options)
    assert same_stats(node, reference)  # 75 blocks: 3 levels of the tree


def plan_of(blocks: list[np.ndarray]) -> tuple[SpanPlan, dict]:
    """A plan of one span over all of ``blocks``, held and fetched for the task."""
    n = len(blocks)
    recipes = tuple(BlockRecipe(("x", i, 0), ((("x", i, 0), f"x-{i}"),), None) for i in range(n))
    rows = tuple(len(b) for b in blocks)
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(rows)[:-1]]))
    row_bytes = blocks[0].shape[1] * blocks[0].itemsize
    plan = SpanPlan(0, n, n, SPLIT_EVERY, recipes, None, offsets, rows, row_bytes, None)
    return plan, {f"x-{i}": block for i, block in enumerate(blocks)}


def test_a_task_takes_nodes_of_blocks_at_once_in_bounded_memory(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    blocks = [rng.normal(size=(r, 16)).astype(np.float32) for r in rng.integers(1, 40, 3000)]
    centers, bounds = rng.normal(size=(4, 16)), np.array([0, 4])
    options = {"with_moments": True}
    reference = one_at_a_time(blocks, [None] * len(blocks), centers, bounds, **options)
    plan, fetched = plan_of(blocks)
    monkeypatch.setattr(dkmeans.spans, "BATCH_BYTES", 2**16)  # nodes of 8 to 64 blocks
    kernel = prepared_kernel(pass_statistics, None, check=True)
    args = (centers, bounds)
    ((_, stats),) = span_pass((plan,), kernel, args, options, fetched)
    assert same_stats(stats, reference)
    tracemalloc.start()
    try:
        span_pass((plan,), kernel, args, options, fetched)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    span = sum(b.nbytes for b in blocks)  # 3.6 MiB
    assert peak < 6 * 2**16 < span / 8, f"peak {peak} bytes for a span of {span}"
    # a bad value is named with its block, as when blocks are taken one at a time
    blocks[1234][0, 2] = np.nan
    plan, fetched = plan_of(blocks)
    with pytest.raises(ValueError, match=r"block 1234 \(rows"):
        span_pass((plan,), kernel, args, options, fetched)


@dataclass
class FakeWorker:
    """What :func:`dkmeans.spans.held_values` reads of a worker: ``data`` (its
    ``SpillBuffer``: spilled values too) and ``data.fast.d`` (the values in memory)."""

    data: object


class SpillBuffer(dict):
    def __init__(self, in_memory: dict, spilled: dict) -> None:
        super().__init__({**in_memory, **spilled})
        self.fast = type("Fast", (), {"d": in_memory})()


def test_held_blocks_come_from_memory_fetched_or_spilled_in_order(monkeypatch) -> None:
    rng = np.random.default_rng(8)
    blocks = [rng.normal(size=(r, 3)).astype(np.float32) for r in rng.integers(1, 9, 200)]
    plan, values = plan_of(blocks)
    keys = list(values)
    spilled = {key: values[key] for key in keys[5:200:7]}
    fetched = {key: values[key] for key in keys[3:200:11] if key not in spilled}
    in_memory = {key: v for key, v in values.items() if key not in spilled and key not in fetched}
    buffer = SpillBuffer(in_memory, spilled)
    monkeypatch.setattr("distributed.get_worker", lambda: FakeWorker(buffer))
    held = dkmeans.spans.held_values(fetched)
    assert all(
        a is b for a, b in zip(held(keys[::-1]), [values[k] for k in keys[::-1]], strict=True)
    )
    centers, bounds = rng.normal(size=(4, 3)), np.array([0, 4])
    kernel = prepared_kernel(pass_statistics, None, check=False)
    ((_, stats),) = span_pass((plan,), kernel, (centers, bounds), {}, fetched)
    reference = one_at_a_time(blocks, [None] * len(blocks), centers, bounds)
    assert same_stats(stats, reference)
    del buffer[keys[7]], in_memory[keys[7]]
    with pytest.raises(dkmeans.spans.BlocksMoved, match="not on this worker"):
        held(keys)


class CountedReads:
    """A reader that records the selections it is asked for."""

    def __init__(self, reader) -> None:
        self.reader, self.reads = reader, []

    def __getitem__(self, selection):
        self.reads.append(selection)
        return self.reader[selection]


def test_a_task_reads_a_node_of_stored_blocks_in_one_call(tmp_path) -> None:
    rng = np.random.default_rng(6)
    rows = rng.normal(size=(600, 4)).astype(np.float32)
    path = str(tmp_path / "small.zarr")
    zarr.create_array(store=path, data=rows, chunks=(5, 4), compressors=None)
    x = dkmeans.io.to_dask_array(path)  # 120 blocks of one chunk each
    reader = dkmeans.readers.reader_of(x)
    assert reader is not None and x.numblocks == (120, 1)
    for other in (x[1:], x.astype(np.float64), x.rechunk((10, 4)), x + 0):
        assert dkmeans.readers.reader_of(other) is None  # not plain reads of the store
    blocks, _ = dkmeans.spans.recipes(x)
    offsets, sizes = tuple(range(0, 600, 5)), (5,) * 120
    counted = CountedReads(reader)
    centers, bounds = rng.normal(size=(3, 4)), np.array([0, 3])
    kernel = prepared_kernel(pass_statistics, None, check=True)
    results = [
        span_pass(
            (SpanPlan(0, 120, 120, SPLIT_EVERY, tuple(blocks), None, offsets, sizes, 16, None, r),),
            kernel,
            (centers, bounds),
            {"with_moments": True},
            {},
        )
        for r in (None, counted)
    ]
    assert len(counted.reads) == 1  # the one node of 120 blocks: one read of all rows
    stored = [rows[i : i + 5] for i in range(0, 600, 5)]
    reference = one_at_a_time(stored, [None] * 120, centers, bounds, with_moments=True)
    for ((_, stats),) in results:
        assert same_stats(stats, reference)


@pytest.fixture(scope="module", autouse=True)
def small_blocks() -> Iterator[None]:
    """Keep row blocks as given: one block per stored chunk or Dask chunk."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dkmeans.io, "MERGE_BELOW", 0.0)
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    with (
        LocalCluster(
            n_workers=WORKERS, threads_per_worker=THREADS, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield cluster, client


class FinishedTasks(SchedulerPlugin):
    """Counts the tasks that finish, by name; kills the worker of process ``pid`` once
    ``kill_when(self)`` holds (its nanny starts a new one)."""

    def __init__(self, kill_when: Callable[[FinishedTasks], bool] | None = None, pid: int = 0):
        self.kill_when, self.pid = kill_when, pid
        self.finished: list[str] = []
        self.keys: list[Hashable] = []
        self.killed = False

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if start != "processing" or finish != "memory":
            return
        self.finished.append(key_split(key))
        self.keys.append(key)
        if self.pid and not self.killed and self.kill_when(self):
            os.kill(self.pid, signal.SIGKILL)
            self.killed = True

    def passes_begun(self) -> int:
        """Passes of span tasks one of whose spans finished (a pass's span tasks share
        the first part of their keys)."""
        return len({key[0] for key in self.keys if key_split(key) == "pass_statistics"})


def counted(cluster: LocalCluster, plugin: FinishedTasks, action):
    cluster.scheduler.add_plugin(plugin, name="count-tasks")
    try:
        return action()
    finally:
        cluster.scheduler.remove_plugin(name="count-tasks")


def blocks_of(x: np.ndarray) -> list[np.ndarray]:
    return [x[i : i + BLOCK_ROWS] for i in range(0, len(x), BLOCK_ROWS)]


def held(client: Client, blocks: list[np.ndarray], runs: int = 0) -> da.Array:
    """``blocks`` in the workers' memory, as a Dask array (scattered: far fewer scheduler
    round trips than computing them): in one contiguous run per worker, or in ``runs``
    runs of about equal length, dealt to the workers in turn."""
    workers = sorted(client.nthreads())
    edges = np.linspace(0, len(blocks), (runs or len(workers)) + 1).round().astype(int)
    futures = []
    for j, (start, stop) in enumerate(pairwise(edges)):
        futures += client.scatter(
            blocks[start:stop], workers=[workers[j % len(workers)]], hash=False
        )
    name = f"held-blocks-{runs}"
    layer = {(name, i, 0): future for i, future in enumerate(futures)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    chunks = ((BLOCK_ROWS,) * len(blocks), (FEATURES,))
    return da.Array(graph, name, chunks, blocks[0].dtype)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.normal(size=(N_BLOCKS * BLOCK_ROWS, FEATURES)).astype(np.float32)


CENTERS = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
ONE_RUN = np.array([0, 3])


@pytest.fixture(scope="module")
def threads_pass(rows):
    """The pass over the blocks of ``rows`` as on threads (one block at a time)."""
    return InMemorySource(blocks_of(rows)).map_reduce(pass_statistics, CENTERS, ONE_RUN)


@pytest.fixture(scope="module")
def store(rows, tmp_path_factory) -> str:
    """``rows`` in a Zarr store of one uncompressed chunk per block. The chunks are
    written as the files Zarr writes (its bytes, at its keys ``c/i/0``): through Zarr,
    20,000 chunks took 24 s, more than the passes over them."""
    path = tmp_path_factory.mktemp("spans") / "small.zarr"
    array = zarr.create_array(
        store=str(path),
        shape=rows.shape,
        chunks=(BLOCK_ROWS, FEATURES),
        dtype="float32",
        compressors=None,
    )
    for i, block in enumerate(blocks_of(rows)):
        key = path / array.metadata.encode_chunk_key((i, 0))
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(block.tobytes())
    for i in (0, 7, N_BLOCKS - 1):  # as Zarr reads them
        np.testing.assert_array_equal(
            array[i * BLOCK_ROWS : (i + 1) * BLOCK_ROWS], blocks_of(rows)[i]
        )
    return str(path)


def one_task_per_worker(source: DaskSource, finished: list[str]) -> None:
    """Check that a pass was one span per worker, whose parts ran on its threads, and
    a few tasks more (the centres, the combines)."""
    assert finished.count("pass_statistics") == WORKERS < WORKERS * THREADS
    assert len(finished) <= WORKERS + 2
    for (plans, _), _ in source.spans.spans:
        for plan in plans:
            assert plan.threads == THREADS and len(plan.parts) == 2 * THREADS + 1


def second_pass(cluster, x: da.Array) -> tuple[DaskSource, Any, list[str]]:
    """A source over ``x``, its second pass, and the names of that pass's tasks (the
    first plans the spans)."""
    scheduler, client = cluster
    with client.as_current():
        source = DaskSource(x)
        source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        plugin = FinishedTasks()
        stats = counted(
            scheduler, plugin, lambda: source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        )
    return source, stats, plugin.finished


def test_a_pass_over_held_blocks_is_one_task_per_worker(cluster, rows, threads_pass) -> None:
    _, client = cluster
    x = held(client, blocks_of(rows))
    source, stats, finished = second_pass(cluster, x)
    assert same_stats(stats, threads_pass)
    one_task_per_worker(source, finished)
    # spans run where their blocks are, cut at the edges of the workers' runs: no block
    # comes from another worker
    assert sum(len(remote) for (_, remote), _ in source.spans.spans) == 0
    client.cancel(x)


def test_a_pass_over_scattered_held_blocks_is_one_task_per_worker(
    cluster, rows, threads_pass
) -> None:
    # blocks held in 64 runs dealt to the workers in turn: a worker's task takes all its
    # runs, and so does its resident loop
    scheduler, client = cluster
    client.wait_for_workers(WORKERS, timeout=120)
    x = held(client, blocks_of(rows), runs=64)
    source, stats, finished = second_pass(cluster, x)
    assert same_stats(stats, threads_pass)
    assert finished.count("pass_statistics") == WORKERS
    assert len(finished) <= WORKERS + 2
    tasks = source.spans.spans
    assert sorted(len(plans) for (plans, _), _ in tasks) == [16] * WORKERS
    assert sum(len(remote) for (_, remote), _ in tasks) == 0  # no block from another worker
    source.spans.resident_from = 1  # loops whatever the tasks (64 by default)
    with client.as_current():
        first = source.map_reduce(pass_statistics, CENTERS, ONE_RUN)  # starts the loops
        plugin = FinishedTasks()
        again = counted(
            scheduler, plugin, lambda: source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        )
    assert len(source.spans.loops) == WORKERS and plugin.finished == []
    assert same_stats(first, threads_pass) and same_stats(again, threads_pass)
    client.cancel(x)


def test_a_pass_over_a_store_of_small_chunks_reads_them_in_the_tasks(
    cluster, store, threads_pass
) -> None:
    scheduler, client = cluster
    x = dkmeans.io.check_data(dkmeans.io.to_dask_array(store))
    assert x.numblocks[0] == N_BLOCKS
    with client.as_current():
        source = DaskSource(x)
        plugin = FinishedTasks()
        stats = counted(
            scheduler, plugin, lambda: source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        )
    assert same_stats(stats, threads_pass)
    plans = plugin.finished.count("span-plan")
    assert plans == WORKERS  # the first pass: the plans, then no task per read
    one_task_per_worker(source, [name for name in plugin.finished if name != "span-plan"])
    # a worker killed in the middle of a pass: its spans run again elsewhere, same bits
    with client.as_current():
        again = lambda: source.map_reduce(pass_statistics, CENTERS, ONE_RUN)  # noqa: E731
        second_span = lambda tasks: tasks.finished.count("pass_statistics") == 2  # noqa: E731
        assert same_stats(killing(scheduler, client, second_span, again), threads_pass)


def fit(x, init: np.ndarray | None = None, max_iter: int = 6, **params) -> KMeans:
    if init is None:
        init = np.array([[0.0] * 8, [3.0] * 8, [-3.0] * 8, [0.0] * 4 + [3.0] * 4])
    return KMeans(len(init), init=init, max_iter=max_iter, tol=0, **params).fit(x)


def killing(
    cluster: LocalCluster,
    client: Client,
    kill_when: Callable[[FinishedTasks], bool],
    action: Callable[[], Any],
    worker: str = "",
) -> Any:
    """``action()`` while ``worker`` (by default any) is killed once ``kill_when`` holds
    for the tasks finished (:class:`FinishedTasks`)."""
    pids = client.run(os.getpid, workers=[worker] if worker else None)
    killer = FinishedTasks(kill_when, min(pids.values()))
    result = counted(cluster, killer, action)
    assert killer.killed, Counter(killer.finished)
    client.wait_for_workers(WORKERS, timeout=120)
    return result


@pytest.mark.slow
def test_a_fit_that_loses_a_worker_ends_as_an_undisturbed_one(cluster) -> None:
    scheduler, client = cluster
    rng = np.random.default_rng(4)
    labels = rng.integers(4, size=(64 * 1000, 1))  # overlapping: Lloyd takes its 6 steps
    data = (rng.normal(size=(64 * 1000, 8)) + 0.5 * labels).astype(np.float32)
    lazy = da.from_array(data, chunks=(1000, 8))
    with dask.config.set(scheduler="threads"):
        threads = fit(lazy, persist=False)
    client.wait_for_workers(WORKERS, timeout=120)
    with client.as_current():
        x = client.persist(lazy)  # recomputable: a lost worker's blocks come back
        wait(x)
        undisturbed = fit(x)
        # the scheduler places the blocks (one worker may hold them all) and the spans
        # follow them: a worker holding some dies once a span of the third pass ends
        holder = min(w for ws in client.who_has(x).values() for w in ws)
        third_pass = lambda tasks: tasks.passes_begun() == 3  # noqa: E731
        disturbed = killing(scheduler, client, third_pass, lambda: fit(x), holder)
    for other in (undisturbed, disturbed):
        np.testing.assert_array_equal(other.cluster_centers_, threads.cluster_centers_)
        assert other.inertia_ == threads.inertia_
        assert other.n_iter_ == threads.n_iter_ == 6


class RecordingClient:
    """Stands in for a ``Client`` in :func:`loop_tree`: a loop's future is its span's
    first block; records every loop's children."""

    def __init__(self) -> None:
        self.children: dict[int, list[int]] = {}

    def submit(self, cls, plan_future, children, actor, key, **placement) -> int:
        assert actor and plan_future == f"plan-{key[1]}"
        self.children[key[1]] = children
        return key[1]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 1_200), st.sampled_from([2, 3, 8]))
def test_resident_loops_call_each_other_in_a_shallow_tree_of_the_spans_in_order(
    n_spans, split_every
) -> None:
    plans = [
        (SpanPlan(i, i + 1, n_spans, split_every, (), None, (i,), (1,), 4, None),)
        for i in range(n_spans)
    ]
    spans = [((plan, {}), f"plan-{i}") for i, plan in enumerate(plans)]
    client = RecordingClient()
    futures = loop_tree(client, spans, split_every, "token")
    assert futures[0] == 0 and sorted(futures) == list(range(n_spans))

    def visited(loop: int) -> list[int]:
        return [loop, *(span for child in client.children[loop] for span in visited(child))]

    def height(loop: int) -> int:
        return 1 + max((height(child) for child in client.children[loop]), default=0)

    assert visited(0) == list(range(n_spans))  # merged in order: the tree's bits
    assert all(len(children) <= split_every for children in client.children.values())
    assert height(0) <= depth(n_spans, split_every) + 1


@pytest.mark.parametrize("kind", ["held", "stored"])
def test_a_pass_through_resident_loops_takes_no_task(
    cluster, rows, store, threads_pass, kind
) -> None:
    scheduler, client = cluster
    client.wait_for_workers(WORKERS, timeout=120)
    if kind == "held":
        x = held(client, blocks_of(rows))
    else:
        x = dkmeans.io.check_data(dkmeans.io.to_dask_array(store))
    with client.as_current():
        source = DaskSource(x)
        source.spans.resident_from = 1  # loops whatever the spans (64 by default)
        first = source.map_reduce(pass_statistics, CENTERS, ONE_RUN)  # plans, starts loops
        plugin = FinishedTasks()
        stats = counted(
            scheduler, plugin, lambda: source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        )
    assert len(source.spans.loops) == len(source.spans.spans) == WORKERS
    assert plugin.finished == []  # no task: the client's call goes from loop to loop
    assert same_stats(first, threads_pass) and same_stats(stats, threads_pass)
    if kind == "held":
        client.cancel(x)
        return
    # a worker that holds a loop dies: the pass that finds it gone plans the spans again
    # and is repeated as span tasks, with the same bits; the next pass starts new loops
    loops = list(source.spans.loops)
    os.kill(min(client.run(os.getpid).values()), signal.SIGKILL)
    with client.as_current():
        again = source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        assert same_stats(again, threads_pass) and source.spans.loops is None
        client.wait_for_workers(WORKERS, timeout=120)
        after = source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
    assert same_stats(after, threads_pass)
    assert source.spans.loops is not None and source.spans.loops != loops


def test_a_fit_through_resident_loops_equals_one_on_threads(cluster) -> None:
    scheduler, client = cluster
    client.wait_for_workers(WORKERS, timeout=120)
    rng = np.random.default_rng(5)
    data = (rng.normal(size=(8 * 2000, 8)) + 2.0 * rng.integers(3, size=(8 * 2000, 1))).astype(
        np.float32
    )
    lazy = da.from_array(data, chunks=(2000, 8))
    with dask.config.set(scheduler="threads"):
        threads = KMeans(4, max_iter=5, tol=0, random_state=0, persist=False).fit(lazy)
    with client.as_current(), dask.config.set({"dkmeans.resident-loops": True}):
        plugin = FinishedTasks()
        loops = counted(
            scheduler,
            plugin,
            lambda: KMeans(4, max_iter=5, tol=0, random_state=0, persist=False).fit(lazy),
        )
    # every pass of k-means|| and Lloyd through the loops: the fit's tasks are the plans
    # and the loops (once per fit) and the read of the first rows, none per pass
    tasks = Counter(plugin.finished)
    assert tasks.pop("span-plan") == tasks.pop("span-loop") == WORKERS
    assert sum(tasks.values()) <= 2, tasks
    np.testing.assert_array_equal(loops.cluster_centers_, threads.cluster_centers_)
    assert loops.inertia_ == threads.inertia_ and loops.n_iter_ == threads.n_iter_


@pytest.mark.parametrize(
    ("setting", "loops_from"),
    [
        ("auto", dkmeans.passes.RESIDENT_MIN_SPANS),
        (True, 1),
        ("true", 1),  # as an environment variable gives it
        (False, sys.maxsize),
        ("False", sys.maxsize),
    ],
)
def test_resident_loops_are_chosen_by_dask_config(cluster, store, setting, loops_from) -> None:
    _, client = cluster
    x = dkmeans.io.check_data(dkmeans.io.to_dask_array(store))
    with client.as_current(), dask.config.set({"dkmeans.resident-loops": setting}):
        assert DaskSource(x).spans.resident_from == loops_from


def test_a_wrong_resident_loops_setting_is_refused_before_any_task(cluster, store) -> None:
    scheduler, client = cluster
    x = dkmeans.io.check_data(dkmeans.io.to_dask_array(store))
    plugin = FinishedTasks()
    with (
        client.as_current(),
        dask.config.set({"dkmeans.resident-loops": "sometimes"}),
        pytest.raises(ValueError, match="dkmeans.resident-loops must be 'auto', True or False"),
    ):
        counted(scheduler, plugin, lambda: KMeans(3, persist=False).fit(x))
    assert plugin.finished == []
