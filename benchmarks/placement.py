"""Where a fit's persisted blocks live on a cluster, and what crosses the network.

On a LocalCluster of ``--workers`` single-thread worker processes, an uncompressed Zarr
store of ``--rows`` x ``--features`` float32 standard normal rows (chunks of
``--chunk-rows``) is fitted by ``KMeans(--clusters, max_iter=--iterations, tol=0)``
twice per placement, each fit timed (the first of each pair also compiles nothing: a
warm-up fit runs before):

- *dkmeans*: the store's path is passed and the fit persists it (``persist=True``), one
  contiguous run of blocks per worker (:mod:`dkmeans.placement`);
- *user*: the user persists ``dask.array.from_zarr(store)`` with ``Client.persist`` (the
  scheduler places the blocks) and fits that array;
- *persist_in_runs*: the user persists it with :func:`dkmeans.persist_in_runs` (one run of
  blocks per worker, kept across the fits).

Reported per fit: wall seconds, bytes the workers fetched from one another (their
``transfer_incoming_log``), and the runs of consecutive blocks per worker of the
persisted array (one per worker is the best a pass can use without moving a block)::

    python -m benchmarks.placement                       # 8M x 32 (1 GB), 4 workers
    python -m benchmarks.placement --rows 400000 --workers 2 --iterations 3

Results: a table on stdout and ``benchmarks/results/placement.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.core import flatten
from distributed import Client, LocalCluster, wait

import dkmeans.inputs
from dkmeans import KMeans, persist_in_runs

RESULTS = Path(__file__).parent / "results"


def write_store(path: Path, rows: int, features: int, chunk_rows: int) -> str:
    """An uncompressed Zarr store of standard normal float32 rows, written in chunks."""
    store = zarr.create_array(
        store=str(path),
        shape=(rows, features),
        chunks=(chunk_rows, features),
        dtype="float32",
        compressors=None,
    )
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        store[start:stop] = rng.standard_normal((stop - start, features), dtype=np.float32)
    return str(path)


def bytes_received(dask_worker) -> int:
    """Bytes a worker has fetched from other workers (run on the worker)."""
    return sum(transfer.get("total", 0) for transfer in dask_worker.transfer_incoming_log)


def runs(client: Client, array: da.Array) -> int:
    """Runs of consecutive blocks held by one worker (the first holder of each block)."""
    graph = array.__dask_graph__()
    futures = [graph[key] for key in flatten(array.__dask_keys__())]
    wait(futures)
    who = {str(key): workers for key, workers in client.who_has(futures).items()}
    owners = [who[str(future.key)][0] for future in futures]
    return 1 + sum(a != b for a, b in zip(owners, owners[1:], strict=False))


@contextmanager
def persisted_runs(client: Client, record: dict[str, Any]) -> Iterator[None]:
    """Record the runs of the array each fit persists (its source's ``x``)."""
    original = dkmeans.inputs.DaskSource

    class Recorded(original):
        def __init__(self, x, *args, **kwargs) -> None:
            super().__init__(x, *args, **kwargs)
            record["runs"] = runs(client, x)

    dkmeans.inputs.DaskSource = Recorded
    try:
        yield
    finally:
        dkmeans.inputs.DaskSource = original


def timed_fit(client: Client, X: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One fit of ``X``: seconds, bytes moved between workers, runs of its blocks."""
    record: dict[str, Any] = {}
    before = sum(client.run(bytes_received).values())
    start = time.perf_counter()
    with persisted_runs(client, record):
        model = KMeans(
            args.clusters, max_iter=args.iterations, tol=0, persist=True, random_state=0
        ).fit(X)
    seconds = time.perf_counter() - start
    moved = sum(client.run(bytes_received).values()) - before
    return {"seconds": seconds, "moved_bytes": moved, "runs": record.get("runs"),
            "n_iter": int(model.n_iter_), "inertia": float(model.inertia_)}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "placement.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.scratch) as folder:
        path = write_store(Path(folder) / "x.zarr", args.rows, args.features, args.chunk_rows)
        with (
            LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            KMeans(args.clusters, max_iter=1, random_state=0).fit(path)  # compiles, warms up
            fits = []
            persisted = {
                "dkmeans": lambda: path,
                "user": lambda: client.persist(da.from_zarr(path)),
                "persist_in_runs": lambda: persist_in_runs(da.from_zarr(path), client),
            }
            for placement, persist in persisted.items():
                X = persist()
                for repeat in range(2):
                    fit = {"placement": placement, "repeat": repeat, **timed_fit(client, X, args)}
                    fits.append(fit)
                    print(
                        f"{placement:8} fit {repeat}: {fit['seconds']:6.2f} s, "
                        f"{fit['moved_bytes'] / 2**20:7.1f} MiB between workers, "
                        f"{fit['runs']} runs of blocks on {args.workers} workers",
                        flush=True,
                    )
                del X
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"command": vars(args) | {"out": str(args.out), "scratch": str(args.scratch)},
             "machine": platform.machine(), "data_bytes": args.rows * args.features * 4,
             "fits": fits},
            indent=1,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
