"""The same random_state and chunking give bitwise-identical fits on every scheduler.

The matrix of fits is init x n_init x sample_weight x NumPy/Zarr input (32 fits; k-means||
seeds from a sample of the rows at 3 clusters and from all rows at 12). All of them run
on the threaded scheduler (the reference); each one also runs on one of the three other
schedulers (processes, a LocalCluster of one worker process, of two), chosen so that
every scheduler sees every init with n_init 1 and 3 and all four weight/input
combinations (10 or 11 fits each). ``cluster_centers_``, ``inertia_`` and
``n_iter_`` must match to the last bit. The fits of one scheduler run concurrently
from a few client threads: they mostly wait for round trips, and concurrency is one
more way in which task order could (and must not) leak into the result.

Blocks are kept small (module fixture ``small_blocks``) so that every pass has a
two-level reduction tree (more than ``SPLIT_EVERY`` blocks, the last one shorter).

The last test kills a worker process in the middle of a fit and checks that the fit
completes with the result of an undisturbed run.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import dask
import dask.array as da
import dask.multiprocessing
import numpy as np
import pytest
import zarr
from dask.highlevelgraph import HighLevelGraph
from dask.utils import key_split
from distributed import Client, LocalCluster, get_task_stream
from distributed.diagnostics.plugin import SchedulerPlugin
from threadpoolctl import threadpool_limits

import dkmeans.io
from benchmarks.placement import bytes_received
from dkmeans import KMeans
from dkmeans.seeding import sample_fractions
from dkmeans.sources import SPLIT_EVERY, DaskSource

#: The initialisers themselves, not the small-data path every small fit takes.
pytestmark = pytest.mark.usefixtures("kmeans_parallel_on_small_data")

#: Rows and block rows of the matrix data: 10 blocks, the last one of 50 rows.
N_ROWS, BLOCK_ROWS = 2300, 250
#: Clusters too many for a seeding sample of these rows (32 rows per centre above half).
ALL_ROWS_CLUSTERS = 40
#: k-means|| seeds its 3 clusters from a sample of the rows (dkmeans.seeding.sample_fractions),
#: its ALL_ROWS_CLUSTERS from all rows.
INITS = ("k-means|| on a sample", "k-means|| on all rows", "k-means++", "random")
#: (weighted, input) combinations.
SOURCES = list(itertools.product((False, True), ("numpy", "zarr")))
#: (init, n_init, weighted, input) of every fit of the matrix.
MATRIX = [
    (init, n_init, weighted, source)
    for init in INITS
    for n_init in (1, 3)
    for weighted, source in SOURCES
]
OTHER_SCHEDULERS = ("processes", "one worker process", "two worker processes")


def share_of(scheduler: str) -> list[tuple[str, int, bool, str]]:
    """The fits of MATRIX that ``scheduler`` checks: fit (init i, source s) goes to
    scheduler (i + s) mod 3, so each gets every init (both n_init) and every source."""
    index = OTHER_SCHEDULERS.index(scheduler)
    return [
        config
        for config in MATRIX
        if (INITS.index(config[0]) + SOURCES.index(config[2:])) % 3 == index
    ]


#: Few iterations and rounds: every pass is a chance to diverge, and passes cost round trips.
PARAMS = {"n_clusters": 3, "max_iter": 4, "init_rounds": 1, "random_state": 12345}
#: Client threads that run the fits of one scheduler concurrently.
CONCURRENT_FITS = 8

Fit = tuple[bytes, float, int]


@pytest.fixture(scope="module", autouse=True)
def small_blocks() -> Iterator[None]:
    """Keep row blocks as given (no merging) and split NumPy input into BLOCK_ROWS rows."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dkmeans.io, "MERGE_BELOW", 0.0)
        patch.setattr(dkmeans.io, "TARGET_BLOCK_BYTES", 2 * BLOCK_ROWS * 5 * 8)
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Overlapping blobs as NumPy float64 and as a Zarr float32 store, and sample weights."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N_ROWS, 5)) + rng.integers(4, size=(N_ROWS, 1)) * [1.5, 1.0, 0.5, 0.0, 0.0]
    path = tmp_path_factory.mktemp("determinism") / "x.zarr"
    store = zarr.create_array(
        store=str(path), shape=x.shape, chunks=(BLOCK_ROWS, 5), dtype="float32", compressors=None
    )
    store[:] = x
    return {"numpy": x, "zarr": str(path), "weights": rng.uniform(0.1, 3.0, size=N_ROWS)}


def fit_once(data: dict[str, Any], config: tuple[str, int, bool, str]) -> Fit:
    init, n_init, weighted, source = config
    n_clusters = {"k-means|| on all rows": ALL_ROWS_CLUSTERS}.get(init, PARAMS["n_clusters"])
    params = {**PARAMS, "n_clusters": n_clusters}
    km = KMeans(init=init.split(" on ")[0], n_init=n_init, **params)
    km.fit(data[source], sample_weight=data["weights"] if weighted else None)
    return km.cluster_centers_.tobytes(), km.inertia_, km.n_iter_


def fit_all(
    data: dict[str, Any], configs: list[tuple], scheduler: AbstractContextManager
) -> dict[tuple, Fit]:
    """Every fit of ``configs``, run concurrently under ``scheduler``."""
    # threadpool_limits restores the BLAS threads that concurrent fits may leave changed
    with scheduler, threadpool_limits(limits=None), ThreadPoolExecutor(CONCURRENT_FITS) as pool:
        # each thread sees the scheduler context (the current distributed client)
        futures = {
            config: pool.submit(contextvars.copy_context().run, fit_once, data, config)
            for config in configs
        }
        return {config: future.result() for config, future in futures.items()}


def differences(result: dict[tuple, Fit], reference: dict[tuple, Fit]) -> list[str]:
    return [
        f"{config}: inertia {reference[config][1]!r} -> {result[config][1]!r}, "
        f"n_iter {reference[config][2]} -> {result[config][2]}, "
        f"centres equal: {reference[config][0] == result[config][0]}"
        for config in result
        if result[config] != reference[config]
    ]


@pytest.fixture(scope="module")
def reference(data: dict[str, Any]) -> dict[tuple, Fit]:
    return fit_all(data, MATRIX, dask.config.set(scheduler="threads"))


@contextmanager
def local_client(n_workers: int) -> Iterator[tuple[LocalCluster, Client]]:
    """A LocalCluster of single-threaded worker processes and a client that is not the
    default (tests choose their scheduler explicitly)."""
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield cluster, client


@pytest.fixture(scope="module")
def two_workers() -> Iterator[tuple[LocalCluster, Client]]:
    with local_client(2) as pair:
        yield pair


def test_matrix_has_a_two_level_reduction_tree(data: dict[str, Any]) -> None:
    for source in ("numpy", "zarr"):
        blocks = dkmeans.io.check_data(dkmeans.io.to_dask_array(data[source])).chunks[0]
        assert len(blocks) > SPLIT_EVERY
        assert blocks[-1] < blocks[0]


def test_matrix_seeds_kmeans_parallel_on_a_sample_and_on_all_rows(data: dict[str, Any]) -> None:
    fractions = sample_fractions(
        DaskSource(da.from_array(data["numpy"])),
        [PARAMS["n_clusters"], ALL_ROWS_CLUSTERS],
        init_rounds=PARAMS["init_rounds"],
    )
    assert fractions[0] < 1 and fractions[1] == 1


def test_every_fit_is_checked_on_another_scheduler() -> None:
    shares = [share_of(scheduler) for scheduler in OTHER_SCHEDULERS]
    assert sorted(itertools.chain(*shares)) == sorted(MATRIX)
    for share in shares:
        assert {config[:2] for config in share} == set(itertools.product(INITS, (1, 3)))
        assert {config[2:] for config in share} == set(SOURCES)


def test_threaded_scheduler_repeats_itself(data, reference) -> None:
    again = fit_all(data, share_of("processes"), dask.config.set(scheduler="threads"))
    assert not differences(again, reference)


def test_processes_scheduler_matches_threads(data, reference) -> None:
    with ProcessPoolExecutor(2, mp_context=dask.multiprocessing.get_context()) as pool:
        scheduler = dask.config.set(scheduler="processes", pool=pool)
        result = fit_all(data, share_of("processes"), scheduler)
    assert not differences(result, reference)


def test_one_worker_process_matches_threads(data, reference) -> None:
    with local_client(1) as (_, client):
        result = fit_all(data, share_of("one worker process"), client.as_current())
    assert not differences(result, reference)


def test_two_worker_processes_match_threads(data, reference, two_workers) -> None:
    _, client = two_workers
    result = fit_all(data, share_of("two worker processes"), client.as_current())
    assert not differences(result, reference)


class KillWorkerAfter(SchedulerPlugin):
    """Kills one worker process (SIGKILL) when the ``count``-th task named ``name``
    has finished; its nanny then starts a new one."""

    def __init__(self, name: str, count: int, pid: int) -> None:
        self.name, self.count, self.pid = name, count, pid
        self.finished = 0
        self.killed = False

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish != "memory" or key_split(key) != self.name:
            return
        self.finished += 1
        if self.finished == self.count:
            os.kill(self.pid, signal.SIGKILL)
            self.killed = True


def fit_big(path: str, client: Client) -> KMeans:
    """A fit of a few seconds: 8 blocks of 100,000 x 16 float32, 8 Lloyd iterations."""
    with client.as_current():
        return KMeans(8, max_iter=8, tol=0, init_rounds=2, random_state=1).fit(path)


def run_with(plugin: SchedulerPlugin, cluster: LocalCluster, action: Callable[[], Any]) -> Any:
    cluster.scheduler.add_plugin(plugin, name="kill-worker")
    try:
        return action()
    finally:
        cluster.scheduler.remove_plugin(name="kill-worker")


def write_big(path: str, rows: int = 100_000, n_blocks: int = 8) -> str:
    """A Zarr store of ``n_blocks`` chunks of ``rows`` x 16 float32 blobs."""
    big = zarr.create_array(
        store=path,
        shape=(rows * n_blocks, 16),
        chunks=(rows, 16),
        dtype="float32",
        compressors=None,
    )
    rng = np.random.default_rng(5)
    for block in range(n_blocks):
        big[block * rows : (block + 1) * rows] = rng.normal(size=(rows, 16)) + rng.integers(
            8, size=(rows, 1)
        )
    return path


@pytest.mark.slow
def test_a_persisted_store_is_read_where_it_is_held(tmp_path, two_workers) -> None:
    # X persisted by the fit is held in one run of blocks per worker, and every pass runs
    # each worker's blocks where they are: no block of X crosses the network
    _, client = two_workers
    path = write_big(str(tmp_path / "big.zarr"))
    with dask.config.set(scheduler="threads"):
        threads = KMeans(8, max_iter=8, tol=0, init_rounds=2, random_state=1).fit(path)
    client.wait_for_workers(2, timeout=120)
    before = sum(client.run(bytes_received).values())
    held = fit_big(path, client)
    received = sum(client.run(bytes_received).values()) - before
    assert received < 2**20, received  # centres and partial results only; a block: 6.4 MB
    np.testing.assert_array_equal(held.cluster_centers_, threads.cluster_centers_)
    assert held.inertia_ == threads.inertia_


def test_blocks_a_user_persisted_are_read_where_the_scheduler_put_them(
    tmp_path, two_workers
) -> None:
    # X persisted by the user, its blocks scattered over the workers (as Client.persist
    # may place them; here every other block on each worker, the most scattered): each
    # worker's one task takes all its runs, no block crosses the network or moves
    _, client = two_workers
    path = write_big(str(tmp_path / "big.zarr"))
    with dask.config.set(scheduler="threads"):
        threads = KMeans(8, max_iter=8, tol=0, init_rounds=2, random_state=1).fit(path)
    client.wait_for_workers(2, timeout=120)
    workers = sorted(client.nthreads())
    lazy = da.from_zarr(path)
    futures = []
    for i in range(lazy.numblocks[0]):
        block = client.persist(lazy.blocks[i], workers=[workers[i % 2]])
        futures += list(dict(block.__dask_graph__()).values())
    layer = {("scattered", i, 0): future for i, future in enumerate(futures)}
    graph = HighLevelGraph.from_collections("scattered", layer, dependencies=[])
    x = da.Array(graph, "scattered", lazy.chunks, meta=lazy._meta)
    client.gather(futures)
    placed = client.who_has(futures)
    before = sum(client.run(bytes_received).values())
    with client.as_current():
        held = KMeans(8, max_iter=8, tol=0, init_rounds=2, random_state=1).fit(x)
    received = sum(client.run(bytes_received).values()) - before
    assert received < 2**20, received  # centres and partial results only; a block: 6.4 MB
    assert client.who_has(futures) == placed
    np.testing.assert_array_equal(held.cluster_centers_, threads.cluster_centers_)
    assert held.inertia_ == threads.inertia_


@pytest.mark.slow
def test_fit_survives_losing_a_worker(tmp_path, two_workers) -> None:
    cluster, client = two_workers
    path = write_big(str(tmp_path / "big.zarr"))
    undisturbed = fit_big(path, client)

    client.wait_for_workers(2, timeout=120)
    pids = client.run(os.getpid)
    # mid-way through the third Lloyd pass (the first pass_statistics pass weights the
    # k-means|| candidates): a pass is one span task per worker (dkmeans/spans.py); X is
    # persisted on the workers, so blocks are lost too
    tasks_per_pass = len(pids)
    killer = KillWorkerAfter("pass_statistics", 3 * tasks_per_pass + 1, min(pids.values()))
    disturbed = run_with(killer, cluster, lambda: fit_big(path, client))

    assert killer.killed
    assert killer.finished > 4 * tasks_per_pass  # passes went on after the kill
    client.wait_for_workers(2, timeout=120)
    assert min(pids.values()) not in client.run(os.getpid).values()
    np.testing.assert_array_equal(disturbed.cluster_centers_, undisturbed.cluster_centers_)
    assert disturbed.inertia_ == undisturbed.inertia_
    assert disturbed.n_iter_ == undisturbed.n_iter_ == 8


def test_numpy_input_stays_on_the_client_with_a_cluster_active() -> None:
    # NumPy data is already here: fitting it, predicting and scoring must not ship it
    # to the workers of an active distributed client, and give the same result
    X = np.random.default_rng(8).normal(size=(3000, 4))
    alone = KMeans(3, random_state=2).fit(X)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        with_client = KMeans(3, random_state=2).fit(X)
        labels, score = with_client.predict(X), with_client.score(X)
    assert stream.data == []
    np.testing.assert_array_equal(with_client.cluster_centers_, alone.cluster_centers_)
    np.testing.assert_array_equal(labels, alone.labels_)
    assert score == -alone.inertia_
