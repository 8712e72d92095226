"""Out-of-core k-means on a Zarr store bigger than a few GB: memory and speed.

Measures, on a float32 store written by ``dkmeans make-blobs``:

- the peak resident memory of a streaming ``dkmeans fit --persist false`` (the whole
  command, labels written to a result store included), in a subprocess;
- the time of one Lloyd iteration (one pass of the block kernel over the store, as
  ``dkmeans.lloyd`` runs it) against a plain read-and-sum pass
  (``da.from_zarr(store).sum(axis=0).compute()``). The two alternate, and medians
  are reported, because the machine may be shared.

    python -m benchmarks.out_of_core --codec none   # 4.1 GB, 32e6 x 32 float32
    python -m benchmarks.out_of_core --codec zstd   # Zarr's default codec

The store is made (with ``dkmeans make-blobs --codec``) if it does not exist. An
uncompressed store in the page cache is read at memory speed, so the ratio is then set by
the kernel's compute; a compressed one is read at decompression speed. Results go to
``benchmarks/results/out_of_core-CODEC[-TAG].json``. The passes are timed with glibc told to
reuse freed blocks, as the ``dkmeans`` command does (:func:`dkmeans.cli.reuse_freed_memory`);
``--default-malloc`` times them with glibc's defaults instead (fresh 32 MiB blocks are
then page-faulted in on every read).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from dkmeans.blobs import CODECS
from dkmeans.cli import count, reuse_freed_memory
from dkmeans.io import check_data, to_dask_array
from dkmeans.kernels import pass_statistics
from dkmeans.resources import blas_threads
from dkmeans.sources import DaskSource

from .measures import RESULTS

DKMEANS = [sys.executable, "-m", "dkmeans.cli"]


def make_store(args: argparse.Namespace, codec: str = "none") -> None:
    subprocess.run(
        [*DKMEANS, "make-blobs", args.store, "--n-samples", str(args.n_samples),
         "--n-features", str(args.n_features), "--centers", str(args.n_clusters), "--seed", "0",
         "--codec", codec],
        check=True,
    )  # fmt: skip


def streaming_fit(args: argparse.Namespace) -> dict:
    """Run ``dkmeans fit --persist false`` in a subprocess; its JSON and peak RSS."""
    with tempfile.TemporaryDirectory(dir=Path(args.store).parent) as tmp:
        command = [
            *DKMEANS, "fit", args.store, "--n-clusters", str(args.n_clusters),
            "--init", "random", "--max-iter", str(args.fit_iterations), "--seed", "0",
            "--persist", "false", "--json", "--quiet", "--out", f"{tmp}/result.zarr",
        ]  # fmt: skip
        run = subprocess.run(command, check=True, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return {"command": " ".join(command), "peak_rss_bytes": peak, **json.loads(run.stdout)}


def timed(function) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of ``function()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def read_pass(store: str) -> None:
    da.from_zarr(store).sum(axis=0).compute()


def lloyd_pass(store: str, centers: np.ndarray) -> None:
    """One Lloyd iteration's pass, exactly as ``dkmeans.lloyd`` runs it on streamed data."""
    source = DaskSource(check_data(to_dask_array(store)))
    with threadpool_limits(limits=blas_threads(), user_api="blas"):
        source.map_reduce(pass_statistics, centers, np.array([0, len(centers)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="default: a store per codec in /tmp")
    parser.add_argument("--codec", choices=list(CODECS), default="none")
    parser.add_argument("--n-samples", type=count, default=32_000_000)
    parser.add_argument("--n-features", type=count, default=32)
    parser.add_argument("--n-clusters", type=count, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-iterations", type=int, default=3)
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--default-malloc", action="store_true", help="time with glibc defaults")
    args = parser.parse_args()
    args.store = args.store or f"/tmp/dkmeans-bench/blobs-32M-{args.codec}.zarr"
    malloc_tuned = not args.default_malloc and reuse_freed_memory()
    if not Path(args.store).exists():
        make_store(args, args.codec)
    array = zarr.open_array(args.store, mode="r")
    store_bytes = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file())

    fit = streaming_fit(args)
    centers = np.random.default_rng(0).uniform(-10, 10, (args.n_clusters, array.shape[1]))
    read_pass(args.store)  # warm the page cache alike for both
    reads, iterations = [], []
    for _ in range(args.repeats):
        reads.append(timed(lambda: read_pass(args.store)))
        iterations.append(timed(lambda: lloyd_pass(args.store, centers)))

    def median(pairs, i):
        return statistics.median(p[i] for p in pairs)

    result = {
        "store": args.store,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "chunks": list(array.chunks),
        "compressors": [str(c) for c in array.compressors],
        "store_bytes": store_bytes,
        "n_clusters": args.n_clusters,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "malloc_tuned": malloc_tuned,
        "streaming_fit": fit,
        "read_pass_s": [r[0] for r in reads],
        "read_pass_cpu_s": [r[1] for r in reads],
        "lloyd_iteration_s": [r[0] for r in iterations],
        "lloyd_iteration_cpu_s": [r[1] for r in iterations],
        "read_pass_median_s": median(reads, 0),
        "lloyd_iteration_median_s": median(iterations, 0),
        "ratio": median(iterations, 0) / median(reads, 0),
        "cpu_ratio": median(iterations, 1) / median(reads, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"out_of_core-{args.codec}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=2))

    rows = [
        ("peak RSS of streaming fit (GB)", fit["peak_rss_bytes"] / 1e9, "<= 1.5"),
        ("read-and-sum pass, median (s)", result["read_pass_median_s"], ""),
        ("Lloyd iteration, median (s)", result["lloyd_iteration_median_s"], ""),
        ("Lloyd iteration / read pass", result["ratio"], "<= 1.2"),
        ("same, in CPU seconds", result["cpu_ratio"], ""),
        (f"streaming fit, {fit['n_iter']} iterations (s)", fit["seconds"], ""),
    ]
    print(f"store {args.store}: {array.shape} {array.dtype}, {store_bytes / 1e9:.2f} GB on disk")
    print(f"{'measure':<40} {'value':>10} {'goal':>8}")
    for name, value, goal in rows:
        print(f"{name:<40} {value:10.2f} {goal:>8}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
