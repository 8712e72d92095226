"""Where dkmeans persists lazy X on a cluster: one run of blocks per worker (dkmeans.placement).

The runs cover the blocks in order, each worker's in proportion to its threads; blocks
are computed on their run's worker, blocks held already stay where they are; a fit
that persists a store on a LocalCluster moves no block between workers
(``tests/test_determinism.py::test_a_persisted_store_is_read_where_it_is_held``).
"""

from __future__ import annotations

from itertools import pairwise

import dask.array as da
import numpy as np
from dask.core import flatten
from distributed import Client, LocalCluster, wait
from hypothesis import given
from hypothesis import strategies as st

import dkmeans.io
from dkmeans.placement import persist_in_runs, run_edges

addresses = st.lists(st.integers(1, 64), min_size=1, max_size=12).map(
    lambda threads: {f"tcp://10.0.0.{i}:8786": t for i, t in enumerate(threads)}
)


@given(st.integers(0, 5_000), addresses)
def test_runs_cover_the_blocks_in_order_in_proportion_to_the_threads(n_blocks, threads) -> None:
    edges = run_edges(n_blocks, threads)
    assert len(edges) == len(threads) + 1
    assert edges[0] == 0 and edges[-1] == n_blocks
    assert all(a <= b for a, b in pairwise(edges))
    total = sum(threads.values())
    for worker, (start, stop) in zip(sorted(threads), pairwise(edges), strict=True):
        assert abs((stop - start) - n_blocks * threads[worker] / total) <= 1


def test_runs_follow_the_sorted_addresses() -> None:
    threads = {"tcp://b:1": 1, "tcp://a:1": 3}
    assert run_edges(8, threads) == [0, 6, 8]  # a's 3 threads first: 6 blocks, then b's 2


def test_blocks_are_computed_in_one_run_per_worker_and_held_blocks_stay(monkeypatch) -> None:
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0.0)  # keep these tiny blocks apart
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    lazy = da.from_array(x, chunks=(4, 3))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        placed = persist_in_runs(lazy)  # the current client
        graph = placed.__dask_graph__()
        futures = [graph[key] for key in flatten(placed.__dask_keys__())]
        wait(futures)
        owners = [client.who_has(futures)[future.key][0] for future in futures]
        first, second = sorted(client.nthreads())
        assert owners == [first] * 5 + [second] * 5
        np.testing.assert_array_equal(placed.compute(), x)
        held = client.persist(lazy)
        assert persist_in_runs(held, client) is held  # a user's persisted blocks stay put


def test_rows_are_cut_into_the_blocks_of_a_fit() -> None:
    x = np.ones((4_000, 8), dtype=np.float32)  # 32 KiB in chunks of 1 KiB: one block
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        placed = persist_in_runs(da.from_array(x, chunks=(32, 4)), client)
        assert placed.chunks == ((4_000,), (8,))
        np.testing.assert_array_equal(placed.compute(), x)
