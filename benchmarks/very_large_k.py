"""Very large k: does a default fit complete, in what time and memory, with what inertia?

Issue 20 asks for k = 16,384 and 65,536 on 1,000,000 x 32 float32 rows on a 24 GB
machine. Each run fits ``dkmeans.KMeans(k, max_iter=..., random_state=0)`` (k-means||,
then Lloyd) on Gaussian blobs in a fresh process, and reports the time of the seeding
and of the whole fit (wall clock, and the CPU time of all the process's threads, which
a loaded machine does not inflate), the peak resident set of the process (Linux's ``VmHWM``, X
included) and the final inertia recomputed by brute force in float64; with
``--faiss``, faiss-cpu's k-means from random rows, same iterations, beside it.

    python -m benchmarks.very_large_k --k 16384 65536 --max-iter 10

The fit is timed as the default fit runs it, in two steps: k-means|| seeding
(``seeding s``), then Lloyd from those centres; ``fit s`` is their sum.

Results: a table on stdout and ``benchmarks/results/very_large_k.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

from .fit_process import memory_mib
from .measures import RESULTS, brute_force_inertia, make_data


def fit_once(n: int, d: int, k: int, max_iter: int, library: str) -> dict[str, float]:
    """One fit in this process (meant to be a fresh one): times, peak RSS, inertia."""
    x = make_data(n, d, k, "float32")
    started, cpu_started = time.perf_counter(), time.process_time()
    if library == "faiss":
        import faiss

        kmeans = faiss.Kmeans(d, k, niter=max_iter, seed=0, max_points_per_centroid=n)
        kmeans.train(x)
        centers, seeding = kmeans.centroids, float("nan")
    else:
        from dkmeans import KMeans
        from dkmeans.io import numpy_row_chunks
        from dkmeans.resources import limit_blas, local_threads
        from dkmeans.seeding import initial_centers
        from dkmeans.sources import InMemorySource

        # the default fit's two steps, timed apart: k-means|| seeding over the blocks and
        # threads a fit cuts in-memory data into, then Lloyd from those centres
        chunks = numpy_row_chunks(n, d * x.itemsize)
        source = InMemorySource.of_array(x, chunks=chunks, threads=local_threads())
        with limit_blas():  # as a fit does: one BLAS thread inside each of its threads
            [start] = initial_centers(source, "k-means||", [k], [0])
        seeding = time.perf_counter() - started
        kmeans = KMeans(k, init=start, n_init=1, max_iter=max_iter, random_state=0)
        centers = kmeans.fit(x).cluster_centers_
    seconds = time.perf_counter() - started
    return {
        "cpu s": time.process_time() - cpu_started,
        "seeding s": seeding,
        "fit s": seconds,
        "peak RSS MiB": memory_mib("VmHWM"),
        "inertia": brute_force_inertia(x, centers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--k", type=int, nargs="+", default=[16_384, 65_536])
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--faiss", action="store_true", help="fit faiss-cpu beside dkmeans")
    parser.add_argument("--out", type=Path, default=RESULTS / "very_large_k.json")
    args = parser.parse_args()
    rows = []
    context = multiprocessing.get_context("spawn")
    for k in args.k:
        for library in ["dkmeans", *(["faiss"] if args.faiss else [])]:
            with context.Pool(1) as pool:
                result = pool.apply(fit_once, (args.n, args.d, k, args.max_iter, library))
            rows.append({"n": args.n, "d": args.d, "k": k, "library": library, **result})
            print(
                f"{library:8} {args.n} x {args.d} k={k:<6} seeding {result['seeding s']:8.1f} s"
                f"  fit {result['fit s']:8.1f} s (CPU {result['cpu s']:.0f} s)"
                f"  peak {result['peak RSS MiB']:8.0f} MiB"
                f"  inertia {result['inertia']:.6g}",
                flush=True,
            )
            args.out.write_text(json.dumps({"max_iter": args.max_iter, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
