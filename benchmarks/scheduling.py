"""Per-pass scheduling overhead against the number of blocks, and per-block compute cost.

On a LocalCluster, times one ``DaskSource.map_reduce(pass_statistics, ...)`` pass (one
Lloyd iteration) over persisted arrays of tiny blocks (so that the time is almost all
scheduling), for 100 to 10,000 blocks, split into building the graph on the client and
running it; fits ``seconds = fixed + per_task * tasks``. Then times the kernel on one
large block (compute cost per row), a pass over large blocks on the cluster, the
combine step of the reduction tree and the size of one partial result (what moves
between workers). These numbers feed ``docs/scaling.md``.

    python benchmarks/scheduling.py --blocks 100 1000 10000 --workers 2

Results: a table on stdout and ``benchmarks/results/scheduling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait
from threadpoolctl import threadpool_limits

from dkmeans.kernels import pass_statistics
from dkmeans.sources import SPLIT_EVERY, DaskSource, combine_all

RESULTS = Path(__file__).parent / "results"


def median_seconds(action: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def persisted(client: Client, n_blocks: int, rows: int, d: int) -> da.Array:
    """Random float32 rows in ``n_blocks`` blocks, held in the workers' memory."""
    x = da.random.default_rng(0).random((n_blocks * rows, d), chunks=(rows, d), dtype=np.float32)
    x = client.persist(x)
    wait(x)
    return x


def one_pass(source: DaskSource, centers: np.ndarray, bounds: np.ndarray) -> Any:
    """One Lloyd pass: one compute of the tree-reduced statistics.

    The centres move a little at every call, as in Lloyd: a graph with the keys of the
    previous pass would find its results still held by the scheduler.
    """
    moved = centers + np.random.default_rng().uniform(0, 1e-9, centers.shape)
    return source.map_reduce(pass_statistics, moved, bounds)


def centers_and_bounds(k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(1).random((k, d)), np.array([0, k])


def count_tasks(source: DaskSource, centers: np.ndarray, bounds: np.ndarray) -> int:
    """Tasks a pass submits (the persisted blocks themselves are not recomputed)."""
    graph = dict(source.graph(pass_statistics, centers, bounds).__dask_graph__())
    return sum(1 for key in graph if not str(key).startswith("('random"))


def blocks_point(client: Client, n_blocks: int, args: argparse.Namespace) -> dict[str, Any]:
    """Pass time over ``n_blocks`` tiny blocks: graph building and running."""
    x = persisted(client, n_blocks, args.tiny_rows, args.features)
    source = DaskSource(x)
    centers, bounds = centers_and_bounds(args.clusters, args.features)
    one_pass(source, centers, bounds)  # warm-up
    build = median_seconds(lambda: source.graph(pass_statistics, centers, bounds), args.repeats)
    total = median_seconds(lambda: one_pass(source, centers, bounds), args.repeats)
    client.cancel(x)
    tasks = count_tasks(source, centers, bounds)
    return {
        "blocks": n_blocks,
        "tasks": tasks,
        "build_s": build,
        "pass_s": total,
        "per_task_ms": 1e3 * total / tasks,
    }


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


def compute_costs(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """Kernel time per block, a cluster pass over big blocks, combine time, result bytes."""
    rows, d, k = args.big_rows, args.features, args.clusters
    kernel = kernel_seconds(rows, d, k, args.repeats)
    n_big = 2 * args.workers
    x = persisted(client, n_big, rows, d)
    centers, bounds = centers_and_bounds(k, d)
    source = DaskSource(x)
    one_pass(source, centers, bounds)
    big_pass = median_seconds(lambda: one_pass(source, centers, bounds), args.repeats)
    client.cancel(x)
    partials = [partial_result(1000, d, k) for _ in range(SPLIT_EVERY)]
    combine = median_seconds(lambda: combine_all(partials), 10 * args.repeats)
    sizes = {kk: len(pickle.dumps(partial_result(1000, d, kk))) for kk in (k, 256, 1024)}
    return {
        "block_rows": rows,
        "block_mb": rows * d * 4 / 2**20,
        "kernel_s": kernel,
        "kernel_gb_per_s": rows * d * 4 / kernel / 1e9,
        "big_blocks": n_big,
        "big_pass_s": big_pass,
        "combine_ms": 1e3 * combine,
        "partial_bytes": sizes,
    }


def fit_line(points: list[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares ``pass_s = fixed + per_task * tasks``."""
    tasks = np.array([p["tasks"] for p in points], dtype=float)
    seconds = np.array([p["pass_s"] for p in points])
    per_task, fixed = np.polyfit(tasks, seconds, 1)
    return float(fixed), float(per_task)


def print_table(
    points: list[dict[str, Any]], costs: dict[str, Any], fit: tuple[float, float]
) -> None:
    print(f"{'blocks':>7} {'tasks':>7} {'build s':>8} {'pass s':>8} {'ms/task':>8}")
    for p in points:
        print(
            f"{p['blocks']:7d} {p['tasks']:7d} {p['build_s']:8.3f} {p['pass_s']:8.3f} "
            f"{p['per_task_ms']:8.2f}"
        )
    fixed, per_task = fit
    print(f"fit: pass_s = {fixed:.3f} + {1e3 * per_task:.3f} ms x tasks")
    print(
        f"kernel, 1 thread, {costs['block_rows']} x {costs['features']} float32 "
        f"({costs['block_mb']:.0f} MiB), k={costs['clusters']}: {costs['kernel_s']:.3f} s "
        f"({costs['kernel_gb_per_s']:.2f} GB/s)"
    )
    print(
        f"cluster pass over {costs['big_blocks']} such blocks on {costs['workers']} workers: "
        f"{costs['big_pass_s']:.3f} s"
    )
    print(f"combine of {SPLIT_EVERY} partial results: {costs['combine_ms']:.3f} ms")
    print(f"pickled partial result bytes by k: {costs['partial_bytes']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiny-rows", type=int, default=8)
    parser.add_argument("--big-rows", type=int, default=250_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
        dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"}),
    ):
        points = [blocks_point(client, n, args) for n in args.blocks]
        costs = compute_costs(client, args)
    costs.update(features=args.features, clusters=args.clusters, workers=args.workers)
    fit = fit_line(points)
    print_table(points, costs, fit)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "scheduling.json"
    record = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "points": points,
        "fit": {"fixed_s": fit[0], "per_task_s": fit[1]},
        "costs": costs,
        "split_every": SPLIT_EVERY,
    }
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"written {out}")


if __name__ == "__main__":
    main()
