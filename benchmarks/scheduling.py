"""Time per Lloyd pass against the number of blocks on a distributed cluster (issue 22).

On a LocalCluster of worker processes (8 of one thread by default: on a small machine
the point is the scheduler's load, not the compute), the same float32 array (default
400,000 x 32, 51 MB) is cut into each number of row blocks given (1,000 / 10,000 /
50,000: 400 / 40 / 8 rows a block) and passed over with ``pass_statistics`` (k = 16):

- *held*: the blocks scattered into the workers' memory (as a persisted array), one
  contiguous run per worker;
- *scattered*: the same, in runs of ``--run-blocks`` blocks dealt to the workers in turn
  (as ``Client.persist`` scatters a persisted array: a worker's task takes all its runs);
- *streamed*: a Zarr store with one stored chunk per block, read at every pass;

each by three designs (``--designs``):

- *new*: ``DaskSource.map_reduce`` on the client, one task per worker, its parts on
  the worker's threads (``dkmeans/spans.py``), each taking whole nodes of the combining
  tree at once;
- *loops*: the same spans through loops resident on the workers, no task per pass
  (``dkmeans/passes.py``; by default only from 64 spans, here forced);
- *old*: the graph of one task per block and its combine tree (``DaskSource.graph``,
  what passes on a cluster were before issue 22, and still are without a distributed
  client), computed on the same client (only up to ``--old-max-blocks``).

Every pass is timed (median of ``--repeats``) and its tasks are counted from the
scheduler (a scheduler plugin: tasks that finished). ``old`` per-task time is fitted as
``pass = fixed + per_task x tasks``. Then the kernel's throughput on one large block,
the combine of 8 partial results and the size of one (what moves between workers).
Everything feeds ``docs/scaling.md``::

    python -m benchmarks.scheduling                       # 1,000 / 10,000 / 50,000 blocks
    python -m benchmarks.scheduling --blocks 1000 10000 --workers 4 --repeats 3
    python -m benchmarks.scheduling --workers 2 --threads 2 --kinds held   # one task per worker

Results: a table on stdout and ``benchmarks/results/scheduling.json`` (or ``--out``; with the load
average before and after every point).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
import zarr
from dask.highlevelgraph import HighLevelGraph
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from threadpoolctl import threadpool_limits

import dkmeans.io
from dkmeans.kernels import pass_statistics
from dkmeans.passes import loop_tree, runs_after
from dkmeans.readers import reader_of
from dkmeans.sources import DaskSource
from dkmeans.tree import SPLIT_EVERY, combine_all

RESULTS = Path(__file__).parent / "results"


class FinishedTasks(SchedulerPlugin):
    """Counts the tasks that finish on the scheduler."""

    def __init__(self) -> None:
        self.count = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if start == "processing" and finish == "memory":
            self.count += 1


def seconds_of(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median_seconds(action: Callable[[], Any], repeats: int) -> float:
    return statistics.median(seconds_of(action) for _ in range(repeats))


def centers_and_bounds(k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(1).random((k, d)), np.array([0, k])


def moved(centers: np.ndarray) -> np.ndarray:
    """The centres moved a little, as in Lloyd: a pass never finds its results held."""
    return centers + np.random.default_rng().uniform(0, 1e-9, centers.shape)


def held(client: Client, rows: np.ndarray, n_blocks: int, run_blocks: int = 0) -> da.Array:
    """``rows`` cut into ``n_blocks`` blocks held in the workers' memory (scattered:
    persisting 50,000 tasks costs the scheduler a minute): a contiguous run per worker, or
    runs of ``run_blocks`` blocks dealt to the workers in turn."""
    size = len(rows) // n_blocks
    blocks = [rows[i * size : (i + 1) * size] for i in range(n_blocks)]
    workers = sorted(client.nthreads())
    per = run_blocks or -(-n_blocks // len(workers))
    futures = []
    for j, start in enumerate(range(0, n_blocks, per)):
        worker = workers[j % len(workers)]
        futures += client.scatter(blocks[start : start + per], workers=[worker], hash=False)
    name = f"held-{n_blocks}-{run_blocks}"
    layer = {(name, i, 0): future for i, future in enumerate(futures)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, ((size,) * n_blocks, (rows.shape[1],)), rows.dtype)


def stored(rows: np.ndarray, n_blocks: int, folder: Path) -> da.Array:
    """``rows`` in a Zarr store of ``n_blocks`` chunks (uncompressed), as dkmeans reads
    it, one block per chunk."""
    path = folder / f"blocks-{n_blocks}.zarr"
    array = zarr.create_array(
        store=str(path),
        shape=rows.shape,
        chunks=(len(rows) // n_blocks, rows.shape[1]),
        dtype=rows.dtype,
        compressors=None,
        overwrite=True,
    )
    array[:] = rows
    dkmeans.io.MERGE_BELOW = 0.0  # keep one block per stored chunk
    return dkmeans.io.check_data(dkmeans.io.to_dask_array(str(path)))


def file_floor(x: da.Array) -> dict[str, float]:
    """The floor of a streamed pass: every chunk file of ``x``'s store opened, read and
    closed once (``os.open``, ``os.readv``, ``os.close``), in this process, best of 3."""
    reader = reader_of(x)
    array = reader.array
    root = Path(array.store.root, array.path)
    files = [str(root / array.metadata.encode_chunk_key((i, 0))) for i in range(len(x.chunks[0]))]
    buffer = bytearray(array.chunks[0] * array.shape[1] * array.dtype.itemsize)

    def read_all() -> None:
        for file in files:
            descriptor = os.open(file, os.O_RDONLY)
            os.readv(descriptor, [buffer])
            os.close(descriptor)

    read_all()
    cpu, wall = [], []
    for _ in range(3):
        start_cpu, start = time.process_time(), time.perf_counter()
        read_all()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return {"files": len(files), "floor_cpu_s": min(cpu), "floor_s": min(wall)}


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of the worker processes (every child of this process, summed)
    and of this process (the scheduler and the client)."""
    me = psutil.Process()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        children += times.user + times.system
    times = me.cpu_times()
    return children, times.user + times.system


def timed_passes(
    cluster: LocalCluster, run: Callable[[], Any], repeats: int
) -> tuple[float, int, tuple[float, float]]:
    """Median seconds of ``repeats`` runs of ``run`` (after one warm-up that plans the
    spans and compiles the kernels), the tasks of the first, and the CPU seconds per run
    of the workers and of this process (:func:`cpu_seconds`; on a machine with fewer
    cores than workers the wall time says how the processes shared the cores, the CPU
    what a pass costs them)."""
    run()
    counter = FinishedTasks()
    cluster.scheduler.add_plugin(counter, name="count-tasks")
    before = cpu_seconds()
    try:
        times = [seconds_of(run)]
    finally:
        cluster.scheduler.remove_plugin(name="count-tasks")
    times += [seconds_of(run) for _ in range(repeats - 1)]
    after = cpu_seconds()
    per_run = ((after[0] - before[0]) / repeats, (after[1] - before[1]) / repeats)
    return statistics.median(times), counter.count, per_run


def blocks_point(
    cluster: LocalCluster, client: Client, x: da.Array, kind: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Time and tasks per pass over ``x`` by the new design and, for few blocks, the old."""
    centers, bounds = centers_and_bounds(args.clusters, args.features)
    source = DaskSource(x)
    source.spans.resident_from = len(x.chunks[0]) + 1  # span tasks, whatever the spans
    designs = {"new": lambda: source.map_reduce(pass_statistics, moved(centers), bounds)}
    if "loops" in args.designs:
        resident = DaskSource(x)
        resident.spans.resident_from = 1
        designs["loops"] = lambda: resident.map_reduce(pass_statistics, moved(centers), bounds)
    if "old" in args.designs and x.numblocks[0] <= args.old_max_blocks:
        designs["old"] = lambda: client.compute(
            source.graph(pass_statistics, moved(centers), bounds)
        ).result()
    points = []
    for design, run in designs.items():
        load_before = os.getloadavg()[0]
        seconds, tasks, (workers_cpu, main_cpu) = timed_passes(cluster, run, args.repeats)
        points.append(
            {
                **(file_floor(x) if kind == "streamed" else {}),
                "kind": kind,
                "design": design,
                "blocks": x.numblocks[0],
                "block_rows": x.chunks[0][0],
                "workers": args.workers,
                "threads": args.threads,
                "tasks": tasks,
                "spans": len(source.spans.spans),
                "pass_s": seconds,
                "workers_cpu_s": workers_cpu,
                "scheduler_and_client_cpu_s": main_cpu,
                "load": [load_before, os.getloadavg()[0]],
            }
        )
        floor = points[-1].get("floor_s")
        print(
            f"{kind:8} {design:5} {x.numblocks[0]:7,} blocks: {1e3 * seconds:8.0f} ms per pass, "
            f"{tasks:6,} tasks, CPU {1e3 * workers_cpu:.0f} ms workers + "
            f"{1e3 * main_cpu:.0f} ms scheduler and client "
            f"(load {load_before:.1f} -> {os.getloadavg()[0]:.1f})"
            + ("" if floor is None else f"; its chunk files read once: {1e3 * floor:.0f} ms"),
            flush=True,
        )
    return points


def tree_height(first: int, stop: int, fan_in: int) -> int:
    """Levels of :func:`~dkmeans.passes.loop_tree` under the loop heading spans
    ``first:stop``."""
    runs = runs_after(first, stop, fan_in)
    return 1 + max((tree_height(a, b, fan_in) for a, b in runs), default=0)


def loop_round_trips(client: Client, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time per pass through resident loops against the depth of their tree: one block
    of 8 rows per worker, the loops called in trees of fan-in 8, 2 and 1 (a chain), so
    that the pass's work is nothing but the calls. The slope is the cost of one level
    of the tree (a call from worker to worker and back, the merge); the 1,000-worker
    row of ``docs/scaling.md`` takes it as the loops' cost per level."""
    rows = np.random.default_rng(4).random((8 * args.workers, args.features), dtype=np.float32)
    x = held(client, rows, args.workers)
    centers, bounds = centers_and_bounds(args.clusters, args.features)
    source = DaskSource(x)
    source.spans.resident_from = 1
    source.map_reduce(pass_statistics, centers, bounds)  # plans the spans
    points = []
    for fan_in in (8, 2, 1):
        source.spans.loops = loop_tree(client, source.spans.spans, fan_in, f"fan-in-{fan_in}")
        run = partial(source.map_reduce, pass_statistics, centers, bounds)
        run()
        levels = tree_height(0, args.workers, fan_in)
        seconds = median_seconds(run, 10 * args.repeats)
        points.append(
            {"fan_in": fan_in, "spans": args.workers, "levels": levels, "pass_s": seconds}
        )
        print(f"loops of fan-in {fan_in}: {levels} levels, {1e3 * seconds:.1f} ms per pass")
    slope, intercept = np.polyfit([p["levels"] for p in points], [p["pass_s"] for p in points], 1)
    print(f"loops: pass = {1e3 * intercept:.1f} ms + {1e3 * slope:.2f} ms x levels")
    client.cancel(x)
    return points + [{"per_level_s": float(slope), "fixed_s": float(intercept)}]


def kernel_seconds(rows: int, d: int, k: int, repeats: int) -> float:
    """One thread, one block: ``pass_statistics`` on ``rows x d`` float32."""
    block = np.random.default_rng(2).random((rows, d), dtype=np.float32)
    centers, bounds = centers_and_bounds(k, d)
    with threadpool_limits(limits=1, user_api="blas"):
        pass_statistics(block, None, 0, 0, centers, bounds)  # warm-up (compilation)
        return median_seconds(lambda: pass_statistics(block, None, 0, 0, centers, bounds), repeats)


def partial_result(rows: int, d: int, k: int) -> Any:
    block = np.random.default_rng(3).random((rows, d), dtype=np.float32)
    centers, bounds = centers_and_bounds(k, d)
    return pass_statistics(block, None, 0, 0, centers, bounds)


def compute_costs(args: argparse.Namespace) -> dict[str, Any]:
    """Kernel time per large block, combine time, pickled partial result bytes."""
    rows, d, k = args.big_rows, args.features, args.clusters
    kernel = kernel_seconds(rows, d, k, args.repeats)
    partials = [partial_result(1000, d, k) for _ in range(SPLIT_EVERY)]
    combine = median_seconds(lambda: combine_all(partials), 10 * args.repeats)
    sizes = {kk: len(pickle.dumps(partial_result(1000, d, kk))) for kk in (k, 256, 1024)}
    return {
        "block_rows": rows,
        "block_mb": rows * d * 4 / 2**20,
        "kernel_s": kernel,
        "kernel_gb_per_s": rows * d * 4 / kernel / 1e9,
        "combine_ms": 1e3 * combine,
        "partial_bytes": sizes,
    }


def per_task_fit(points: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least squares ``pass_s = fixed + per_task * tasks`` over the old design's passes."""
    old = [p for p in points if p["design"] == "old"]
    if len({p["blocks"] for p in old}) < 2:
        return None
    per_task, fixed = np.polyfit([p["tasks"] for p in old], [p["pass_s"] for p in old], 1)
    return {"fixed_s": float(fixed), "per_task_s": float(per_task)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--kinds", nargs="+", default=["held", "streamed"])
    parser.add_argument("--run-blocks", type=int, default=8, help="blocks per scattered run")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old-max-blocks", type=int, default=10_000)
    parser.add_argument("--designs", nargs="+", default=["new", "loops", "old"])
    parser.add_argument("--big-rows", type=int, default=250_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "scheduling.json")
    args = parser.parse_args()
    rows = np.random.default_rng(0).random((args.rows, args.features), dtype=np.float32)
    points = []
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads,
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
        dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"}),
    ):
        for n_blocks in args.blocks:
            if "held" in args.kinds:
                x = held(client, rows, n_blocks)
                points += blocks_point(cluster, client, x, "held", args)
                written(args, points)
                client.cancel(x)
            if "scattered" in args.kinds:
                x = held(client, rows, n_blocks, args.run_blocks)
                points += blocks_point(cluster, client, x, "scattered", args)
                written(args, points)
                client.cancel(x)
            if "streamed" in args.kinds:
                x = stored(rows, n_blocks, Path(folder))
                points += blocks_point(cluster, client, x, "streamed", args)
                written(args, points)
        round_trips = loop_round_trips(client, args) if "loops" in args.designs else None
    costs = compute_costs(args)
    fit = per_task_fit(points)
    print(
        f"kernel, 1 thread, {costs['block_rows']:,} x {args.features} float32, "
        f"k={args.clusters}: {costs['kernel_s'] * 1e3:.1f} ms "
        f"({costs['kernel_gb_per_s']:.2f} GB/s); "
        f"combine of {SPLIT_EVERY} partials {costs['combine_ms']:.3f} ms; "
        f"partial bytes by k {costs['partial_bytes']}"
    )
    if fit is not None:
        print(f"old: pass = {fit['fixed_s']:.3f} s + {1e3 * fit['per_task_s']:.3f} ms x tasks")
    written(args, points, costs, fit, round_trips)
    print(f"written {args.out}")


def written(
    args: argparse.Namespace,
    points: list[dict[str, Any]],
    costs: dict[str, Any] | None = None,
    fit: dict[str, float] | None = None,
    round_trips: list[dict[str, Any]] | None = None,
) -> None:
    """The results so far written to ``args.out`` (after every point too: closing a
    cluster that held 50,000 scattered keys can time out on a loaded machine)."""
    args.out.parent.mkdir(exist_ok=True)
    record = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "points": points,
        "old_per_task_fit": fit,
        "loop_round_trips": round_trips,
        "costs": costs,
        "split_every": SPLIT_EVERY,
    }
    args.out.write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
