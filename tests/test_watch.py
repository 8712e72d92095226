"""Passes on a distributed cluster fail with a reason instead of hanging (dkmeans.watch).

One LocalCluster of one worker process with a 600 MiB memory limit, started with
``allowed-failures: 0`` so that a worker that dies while running a task fails it at
once: blocks too big for it are refused before any work, a task that kills its worker
and a paused worker end the pass with the limit and the block size, and a scheduler
closed between two passes is reported as lost (in-process cluster, client timeout of a
second).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
from dask.utils import parse_bytes
from distributed import Client, LocalCluster, get_task_stream

from dkmeans import KMeans, watch
from dkmeans.cli import error_message
from dkmeans.kernels import pass_statistics
from dkmeans.sources import DaskSource

LIMIT = "600MiB"
MiB = 2**20
#: float32 rows of 16 features: 64 bytes, 192 bytes of working memory in a pass.
FEATURES = 16


@pytest.fixture(scope="module")
def small_workers() -> Iterator[Client]:
    """One worker process of one thread with a memory limit of :data:`LIMIT`."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            memory_limit=LIMIT,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def zeros(rows: int, block_rows: int) -> da.Array:
    return da.zeros((rows, FEATURES), chunks=(block_rows, FEATURES), dtype=np.float32)


def one_pass(source: DaskSource) -> float:
    centers = np.zeros((2, FEATURES))
    stats = source.map_reduce(pass_statistics, centers, np.array([0, 2]), far_capacity=0)
    return float(stats.counts.sum())


def test_blocks_too_big_for_the_workers_are_refused_before_any_work(small_workers) -> None:
    # blocks of 91.55 MiB: a pass needs 274.66 MiB each, more than the worker has once it
    # has loaded the kernels (280 MiB of 480 MiB used), less than before
    X = zeros(3_000_000, 1_500_000)
    with small_workers.as_current(), get_task_stream(small_workers) as stream:
        with pytest.raises(watch.WorkerMemoryError) as error:
            KMeans(2, random_state=0, persist=False).fit(X)
    message = str(error.value)
    assert "blocks of up to 1,500,000 rows x 16 float32 (91.55 MiB" in message
    assert "a memory limit of 600.00 MiB can use 80% of it (480.00 MiB)" in message
    assert "give the workers a memory limit of at least" in message
    assert stream.data == []  # nothing ran
    assert error_message(error.value) == message  # the command line's one line
    needed = parse_bytes(message.split("at least ")[1].split(" (")[0])
    assert 274 * MiB / 0.8 < needed < (274 + 480) * MiB / 0.8  # the pass, and the worker
    # the advice holds: blocks well within the rows it names pass the check and a pass
    rows = int(message.split("X.rechunk({0: ")[1].split("}")[0]) // 2
    assert 0 < rows < 1_500_000
    with small_workers.as_current():
        assert one_pass(DaskSource(zeros(rows + 1000, rows))) == rows + 1000


def fill_memory(dask_worker, fraction: float) -> None:
    """Hold memory the worker cannot spill until its process uses ``fraction`` of its limit."""
    used = psutil.Process().memory_info().rss
    target = int(fraction * dask_worker.memory_manager.memory_limit)
    dask_worker.ballast = np.ones(max(0, target - used) // 8)


def wait_until_worker(client: Client, status: str, below: float = 1.0) -> None:
    """Wait until the scheduler sees the worker in ``status``, using under ``below`` of
    its memory limit (a worker being restarted is briefly absent)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for worker in client.scheduler_info(n_workers=-1)["workers"].values():
            used = worker["metrics"]["memory"] / worker["memory_limit"]
            if worker["status"] == status and used < below:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the worker did not become {status} (below {below:.0%} of its memory)")


def test_paused_workers_fail_the_pass(small_workers, monkeypatch) -> None:
    monkeypatch.setattr(watch, "STALLED_SECONDS", 1.0)
    monkeypatch.setattr(watch, "POLL_SECONDS", 0.2)
    small_workers.wait_for_workers(1, timeout=30)
    with small_workers.as_current():
        source = DaskSource(zeros(2000, 1000))
    # above the pause threshold (80%), below the nanny's restart (95%)
    small_workers.run(fill_memory, fraction=0.87)
    try:
        wait_until_worker(small_workers, "paused")
        with small_workers.as_current(), pytest.raises(watch.WorkerMemoryError) as error:
            one_pass(source)
    finally:
        small_workers.run(fill_memory, fraction=0.0)
        wait_until_worker(small_workers, "running", below=0.7)
    assert str(error.value).startswith(
        "Dask workers stayed paused for 1 s during pass 1 (pass_statistics) (workers' memory "
        "limit: 600.00 MiB; blocks of up to 1,000 rows x 16 float32"
    )
    with small_workers.as_current():
        assert one_pass(source) == 2000  # resumed, the same source works again


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def test_a_pass_whose_future_is_cancelled_under_it_is_submitted_again(small_workers) -> None:
    # the scheduler cancels a pass's future while it is waited for (here: the client
    # cancels it from another thread): the pass is submitted again and its result returned
    small_workers.wait_for_workers(1, timeout=30)
    with small_workers.as_current():
        blocks = DaskSource(zeros(2000, 1000)).blocks
    submitted = []

    def submit():
        submitted.append(small_workers.submit(sleep_then, 2.0, len(submitted), pure=False))
        if len(submitted) == 1:
            threading.Timer(0.5, small_workers.cancel, [submitted[0]]).start()
        return submitted[-1]

    assert watch.result(small_workers, submit, blocks, "pass 1 (test)") == 1
    assert len(submitted) == 2 and submitted[0].cancelled()


def test_a_worker_that_dies_fails_the_pass_naming_limit_and_blocks(small_workers) -> None:
    dies = da.from_delayed(dask.delayed(os._exit)(1), (1000, FEATURES), np.float32)
    with small_workers.as_current():
        source = DaskSource(da.concatenate([zeros(1000, 1000), dies]))
        with pytest.raises(watch.WorkerMemoryError) as error:
            one_pass(source)
    assert str(error.value).startswith(
        "Dask workers died once running the same task during pass 1 (pass_statistics) "
        "(workers' memory limit: 600.00 MiB; blocks of up to 1,000 rows x 16 float32"
    )
    small_workers.wait_for_workers(1, timeout=30)


def test_a_lost_scheduler_is_named() -> None:
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    client = Client(cluster, timeout="1s", set_as_default=False)
    try:
        with client.as_current():
            source = DaskSource(
                zeros(2000, 1000), on_pass=lambda _: cluster.sync(cluster.scheduler.close)
            )
            assert one_pass(source) == 2000
            with pytest.raises(watch.SchedulerLostError) as error:
                one_pass(source)
    finally:
        client.close()
        for worker in list(cluster.workers.values()):
            cluster.sync(worker.close)
        with contextlib.suppress(TimeoutError):
            cluster.close(timeout=1)  # its scheduler is gone: closing times out
    assert str(error.value) == (
        f"lost the Dask scheduler at {cluster.scheduler.address} during pass 2 "
        "(pass_statistics): the fit cannot go on; restart the scheduler (or the cluster) "
        "and fit again"
    )
    assert error_message(error.value) == str(error.value)  # the CLI's one line
