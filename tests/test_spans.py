"""Passes whose tasks follow the workers, not the blocks (dkmeans.spans, dkmeans.tree).

Spans of blocks combine into the root with exactly the calls of ``combine`` of the
fixed tree (checked on expressions that record their shape, for any cuts); spans follow
the runs of blocks each worker holds. On a LocalCluster of 4 single-thread worker
processes (one per module): a pass over 2,000 blocks held in the workers' memory and
over a store of 2,000 chunks submits a few tasks per worker thread and equals the pass
on threads bitwise; a fit that loses a worker mid-way ends as an undisturbed fit and as
the same fit on the threaded scheduler.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

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
from dkmeans import KMeans
from dkmeans.kernels import pass_statistics
from dkmeans.sources import DaskSource, InMemorySource
from dkmeans.spans import cuts, merge_spans
from dkmeans.tree import combine_all, node_blocks, node_values, span_nodes, tree_level

#: Blocks of the arrays the cluster passes over, and their rows.
N_BLOCKS, BLOCK_ROWS, FEATURES = 2_000, 4, 3
WORKERS = 4


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
)
def test_spans_combine_exactly_as_the_tree(n_blocks, fractions, split_every) -> None:
    edges = sorted({0, n_blocks, *(int(f * n_blocks) for f in fractions)})
    spans = []
    for start, stop in pairwise(edges):
        nodes = span_nodes(start, stop, n_blocks, split_every)
        covered = [b for node in nodes for b in node_blocks(node, n_blocks, split_every)]
        assert covered == list(range(start, stop))
        values = node_values(nodes, leaf, n_blocks, split_every)
        spans.append(list(zip(nodes, values, strict=True)))
    while len(spans) > 1:
        spans = [merge_spans(n_blocks, split_every, *g) for g in tree_level(spans, split_every)]
    ((_, root),) = spans[0]
    assert root == tree_root(n_blocks, split_every)


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


def test_cuts_of_unheld_or_scattered_blocks_are_even() -> None:
    for owners in ([None] * 10_000, ["a", "b"] * 5000):
        edges = cuts(owners, {"a": 2, "b": 2}, tasks_per_thread=2)
        sizes = np.diff(edges)
        assert len(sizes) == 8 and sizes.max() - sizes.min() <= 64
        assert all(e % 64 == 0 for e in edges[:-1])  # few tree nodes per span


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
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield cluster, client


class FinishedTasks(SchedulerPlugin):
    """Counts the tasks that finish, by name; kills a worker at the ``kill_at``-th
    task named ``name`` (its nanny starts a new one)."""

    def __init__(self, name: str = "", kill_at: int = 0, pid: int = 0) -> None:
        self.name, self.kill_at, self.pid = name, kill_at, pid
        self.finished: list[str] = []
        self.killed = False

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if start != "processing" or finish != "memory":
            return
        self.finished.append(key_split(key))
        if self.pid and self.finished.count(self.name) == self.kill_at:
            os.kill(self.pid, signal.SIGKILL)
            self.killed = True


def counted(cluster: LocalCluster, plugin: FinishedTasks, action):
    cluster.scheduler.add_plugin(plugin, name="count-tasks")
    try:
        return action()
    finally:
        cluster.scheduler.remove_plugin(name="count-tasks")


def blocks_of(x: np.ndarray) -> list[np.ndarray]:
    return [x[i : i + BLOCK_ROWS] for i in range(0, len(x), BLOCK_ROWS)]


def held(client: Client, blocks: list[np.ndarray]) -> da.Array:
    """``blocks`` in the workers' memory, in one contiguous run per worker, as a Dask
    array (scattered: far fewer scheduler round trips than computing them)."""
    workers = sorted(client.nthreads())
    per = -(-len(blocks) // len(workers))
    futures = []
    for j, worker in enumerate(workers):
        futures += client.scatter(blocks[j * per : (j + 1) * per], workers=[worker])
    name = "held-blocks"
    layer = {(name, i, 0): future for i, future in enumerate(futures)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    chunks = ((BLOCK_ROWS,) * len(blocks), (FEATURES,))
    return da.Array(graph, name, chunks, blocks[0].dtype)


def same_stats(a, b) -> bool:
    return all(
        np.array_equal(getattr(a, field), getattr(b, field))
        for field in ("sums", "counts", "cluster_inertia")
    ) and np.array_equal(a.far[0].index, b.far[0].index)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.normal(size=(N_BLOCKS * BLOCK_ROWS, FEATURES)).astype(np.float32)


CENTERS = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
ONE_RUN = np.array([0, 3])


def test_a_pass_over_held_blocks_is_a_few_tasks_per_thread(cluster, rows) -> None:
    scheduler, client = cluster
    reference = InMemorySource(blocks_of(rows)).map_reduce(pass_statistics, CENTERS, ONE_RUN)
    x = held(client, blocks_of(rows))
    with client.as_current():
        source = DaskSource(x)
        source.map_reduce(pass_statistics, CENTERS, ONE_RUN)  # plans the spans
        plugin = FinishedTasks()
        stats = counted(
            scheduler, plugin, lambda: source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        )
    assert same_stats(stats, reference)
    spans = plugin.finished.count("pass_statistics")
    assert WORKERS <= spans <= 4 * WORKERS
    assert len(plugin.finished) <= spans + 4  # the args and the combines
    # spans run where their blocks are: only blocks past the edges of a worker's run
    # (cuts fall on multiples of 64 blocks) come from another worker
    assert sum(len(remote) for (_, remote), _ in source.spans.spans) <= WORKERS * 32


def test_a_pass_over_a_store_of_small_chunks_reads_them_in_the_tasks(
    cluster, rows, tmp_path
) -> None:
    scheduler, client = cluster
    path = str(tmp_path / "small.zarr")
    store = zarr.create_array(
        store=path, shape=rows.shape, chunks=(BLOCK_ROWS, FEATURES), dtype="float32"
    )
    store[:] = rows
    x = dkmeans.io.check_data(dkmeans.io.to_dask_array(path))
    assert x.numblocks[0] == N_BLOCKS
    reference = InMemorySource(blocks_of(rows)).map_reduce(pass_statistics, CENTERS, ONE_RUN)
    with client.as_current():
        source = DaskSource(x)
        plugin = FinishedTasks()
        stats = counted(
            scheduler, plugin, lambda: source.map_reduce(pass_statistics, CENTERS, ONE_RUN)
        )
    assert same_stats(stats, reference)
    assert WORKERS <= plugin.finished.count("pass_statistics") <= 4 * WORKERS
    assert len(plugin.finished) <= 6 * WORKERS  # plans, args, spans, combines: no reads


def fit(x: da.Array, **params) -> KMeans:
    init = np.array([[0.0] * 8, [3.0] * 8, [-3.0] * 8, [0.0] * 4 + [3.0] * 4])
    return KMeans(4, init=init, max_iter=6, tol=0, **params).fit(x)


@pytest.mark.slow
def test_a_fit_that_loses_a_worker_ends_as_an_undisturbed_one(cluster) -> None:
    scheduler, client = cluster
    rng = np.random.default_rng(4)
    labels = rng.integers(4, size=(64 * 1000, 1))  # overlapping: Lloyd takes its 6 steps
    data = (rng.normal(size=(64 * 1000, 8)) + 0.5 * labels).astype(np.float32)
    lazy = da.from_array(data, chunks=(1000, 8))
    with dask.config.set(scheduler="threads"):
        threads = fit(lazy, persist=False)
    client.wait_for_workers(WORKERS)
    with client.as_current():
        x = client.persist(lazy)  # recomputable: a lost worker's blocks come back
        wait(x)
        undisturbed = fit(x)
        pids = client.run(os.getpid)
        # the middle of the third pass (8 spans a pass)
        killer = FinishedTasks("pass_statistics", 2 * 8 + 4, min(pids.values()))
        disturbed = counted(scheduler, killer, lambda: fit(x))
    assert killer.killed, Counter(killer.finished)
    client.wait_for_workers(WORKERS)
    for other in (undisturbed, disturbed):
        np.testing.assert_array_equal(other.cluster_centers_, threads.cluster_centers_)
        assert other.inertia_ == threads.inertia_
        assert other.n_iter_ == threads.n_iter_ == 6
