"""Many fits, one read: ``n_init=10`` and the elbow over k = 1..10 on a store streamed from disk.

Times, on a float32 store written by ``dkmeans make-blobs`` (512 MB by default) and
read with ``persist=False`` at every pass, with the same ``max_iter`` and ``tol=0`` so
that every run does the same number of iterations:

* one fit, k = 10, ``n_init=1``;
* one fit, k = 10, ``n_init=10`` (goal: at most 2.5x the single fit);
* ``dkmeans.elbow`` over k = 1..10 (goal: at most 3x the single fit with k = 10);
* a plain read-and-sum pass over the store, the floor of any pass.

    python -m benchmarks.many_fits --codec none
    python -m benchmarks.many_fits --codec zstd

The sharing pays off where reading is the cost: with ``--codec zstd`` (Zarr's default)
every pass decompresses the store once for all runs. An uncompressed store in the page
cache is read in a fraction of the compute time, and then ten runs cost nearly ten times
the compute of one.

The fits alternate over ``--repeats`` rounds and the medians are compared. Results: a
table on stdout and ``benchmarks/results/many_fits-<codec>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from dkmeans import KMeans, elbow
from dkmeans.blobs import CODECS
from dkmeans.cli import count, reuse_freed_memory

from .measures import RESULTS
from .out_of_core import make_store, read_pass


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="default: a store per codec in /tmp")
    parser.add_argument("--codec", choices=list(CODECS), default="none")
    parser.add_argument("--n-samples", type=count, default=4_000_000)
    parser.add_argument("--n-features", type=count, default=32)
    parser.add_argument("--n-clusters", type=count, default=10, help="clusters of the data")
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--init", default="k-means||")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.store = args.store or f"/tmp/dkmeans-bench/blobs-4M-{args.codec}.zarr"
    reuse_freed_memory()  # as the dkmeans command does
    if not Path(args.store).exists():
        make_store(args, args.codec)
    store_bytes = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file())
    params = dict(init=args.init, max_iter=args.max_iter, tol=0, persist=False, random_state=0)
    iterations: dict[str, object] = {}

    def fit(n_init: int) -> None:
        km = KMeans(10, n_init=n_init, **params).fit(args.store)
        iterations[f"n_init={n_init}"] = km.n_iter_

    cases: dict[str, Callable[[], object]] = {
        "read pass": lambda: read_pass(args.store),
        "fit k=10, n_init=1": lambda: fit(1),
        "fit k=10, n_init=10": lambda: fit(10),
        "elbow k=1..10": lambda: elbow(args.store, k_values=range(1, 11), **params),
    }
    read_pass(args.store)  # warm the page cache alike for all
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(args.repeats):
        for name, action in cases.items():
            times[name].append(seconds(action))
            print(f"round {round_index + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    single = median["fit k=10, n_init=1"]
    result = {
        "store": args.store,
        "store_bytes": store_bytes,
        "codec": args.codec,
        "params": params,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "n_iter": iterations,
        "seconds": times,
        "median_seconds": median,
        "n_init_10_over_1": median["fit k=10, n_init=10"] / single,
        "elbow_over_single_fit": median["elbow k=1..10"] / single,
        "single_fit_over_read_pass": single / median["read pass"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"many_fits-{args.codec}.json").write_text(json.dumps(result, indent=2))
    print(f"\nstore {args.store}: {store_bytes / 1e6:.0f} MB on disk, max_iter={args.max_iter}")
    print(f"{'case':<24}{'median s':>10}{'/ single fit':>14}")
    for name, value in median.items():
        print(f"{name:<24}{value:>10.2f}{value / single:>14.2f}")
    print("goals: n_init=10 <= 2.5x, elbow <= 3x the single fit")


if __name__ == "__main__":
    main()
