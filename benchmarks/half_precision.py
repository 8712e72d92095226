"""A float16 Zarr store streamed against the same values stored as float32.

Makes (once) a float16 store with ``dkmeans make-blobs --dtype float16`` and a float32
copy of the very same values with the same chunk rows, both uncompressed, then times
Lloyd passes over each as ``dkmeans.lloyd`` runs them on streamed data, alternating, and
reports medians with the bytes on disk and the bytes every pass reads (``rchar`` of
``/proc/self/io``: what the process reads through ``read``, page cache included). Both
stores give the same statistics: the kernels widen float16 to float32 for the GEMM.

    python -m benchmarks.half_precision                       # 1M x 768, k = 256
    python -m benchmarks.half_precision --n-clusters 16
    python -m benchmarks.half_precision --n-clusters 16 --cold   # from the disk

``--cold`` drops the stores' files from the page cache before every pass (their pages
only). Results go to ``benchmarks/results/half_precision-kK[-cold].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from dkmeans.cli import count, reuse_freed_memory
from dkmeans.io import check_data, to_dask_array
from dkmeans.kernels import pass_statistics
from dkmeans.resources import blas_threads
from dkmeans.sources import DaskSource

from .measures import RESULTS, initial_centers


def bytes_read() -> int:
    """Bytes this process has read through ``read`` so far (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no rchar")


def make_stores(half: Path, single: Path, args: argparse.Namespace) -> None:
    """The float16 store, and a float32 store of the same values and chunk rows."""
    if not half.exists():
        subprocess.run(
            [sys.executable, "-m", "dkmeans.cli", "make-blobs", str(half),
             "--n-samples", str(args.n_samples), "--n-features", str(args.n_features),
             "--centers", str(args.n_clusters), "--chunk-rows", str(args.chunk_rows),
             "--dtype", "float16", "--seed", "0"],
            check=True,
        )  # fmt: skip
    if not single.exists():
        source = zarr.open_array(str(half), mode="r")
        target = zarr.create_array(
            str(single), shape=source.shape, chunks=source.chunks, dtype="float32", compressors=()
        )
        da.store(da.from_zarr(source).astype(np.float32), target, lock=False)


def evict(store: str) -> None:
    """Drop the store's files from the page cache (``POSIX_FADV_DONTNEED``, these files
    only): the next pass reads them from the disk."""
    for path in Path(store).rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def lloyd_pass(store: str, centers: np.ndarray, cold: bool = False) -> tuple[float, int]:
    """Seconds and bytes read of one Lloyd pass over ``store`` (streamed; ``cold``: its
    files first dropped from the page cache)."""
    if cold:
        evict(store)
    source = DaskSource(check_data(to_dask_array(store)))
    read, started = bytes_read(), time.perf_counter()
    with threadpool_limits(limits=blas_threads(), user_api="blas"):
        source.map_reduce(pass_statistics, centers, np.array([0, len(centers)]))
    return time.perf_counter() - started, bytes_read() - read


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=count, default=1_000_000)
    parser.add_argument("--n-features", type=count, default=768)
    parser.add_argument("--n-clusters", type=count, default=256)
    parser.add_argument("--chunk-rows", type=count, default=10_922)  # 32 MiB of float32
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default="/tmp/dkmeans-bench")
    parser.add_argument("--cold", action="store_true", help="read every pass from the disk")
    args = parser.parse_args()
    reuse_freed_memory()
    name = f"half-{args.n_samples}x{args.n_features}"
    half, single = (Path(args.folder) / f"{name}-{dtype}.zarr" for dtype in ("f16", "f32"))
    make_stores(half, single, args)
    centers = initial_centers(zarr.open_array(str(half), mode="r"), args.n_clusters)
    stores = {"float16": str(half), "float32": str(single)}
    for store in stores.values():
        lloyd_pass(store, centers)  # page cache and compiled loops warm alike for both
    passes: dict[str, list[tuple[float, int]]] = {dtype: [] for dtype in stores}
    loads = [os.getloadavg()]
    for _ in range(args.repeats):
        for dtype, store in stores.items():
            passes[dtype].append(lloyd_pass(store, centers, args.cold))
        loads.append(os.getloadavg())
    seconds = {dtype: statistics.median(s for s, _ in runs) for dtype, runs in passes.items()}
    read = {dtype: statistics.median(b for _, b in runs) for dtype, runs in passes.items()}
    on_disk = {"float16": store_bytes(half), "float32": store_bytes(single)}
    result = {
        "shape": [args.n_samples, args.n_features],
        "n_clusters": args.n_clusters,
        "chunk_rows": args.chunk_rows,
        "page_cache": "evicted before every pass" if args.cold else "warm",
        "cpus": os.cpu_count(),
        "load_average": loads,
        "store_bytes": on_disk,
        "pass_bytes_read": read,
        "pass_s": {dtype: [s for s, _ in runs] for dtype, runs in passes.items()},
        "pass_median_s": seconds,
        "bytes_read_ratio": read["float16"] / read["float32"],
        "store_bytes_ratio": on_disk["float16"] / on_disk["float32"],
        "time_ratio": seconds["float16"] / seconds["float32"],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"half_precision-k{args.n_clusters}{'-cold' if args.cold else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.n_samples:,} x {args.n_features}, k={args.n_clusters}, load {loads}")
    print(f"{'':<10} {'on disk GB':>11} {'read/pass GB':>13} {'s/pass':>8}")
    for dtype in stores:
        gb_disk, gb_read = on_disk[dtype] / 1e9, read[dtype] / 1e9
        print(f"{dtype:<10} {gb_disk:11.3f} {gb_read:13.3f} {seconds[dtype]:8.2f}")
    print(
        f"float16 / float32: bytes on disk {result['store_bytes_ratio']:.3f}, read "
        f"{result['bytes_read_ratio']:.3f}, time {result['time_ratio']:.3f}; wrote {out}"
    )


if __name__ == "__main__":
    main()
