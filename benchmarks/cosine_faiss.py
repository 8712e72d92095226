"""Cosine (spherical) k-means: dkmeans against faiss-cpu on embedding-like vectors (issue 21).

The data: n x d float32 unit rows like embeddings (a von Mises-Fisher-like mixture of k
random unit directions, :func:`benchmarks.measures.make_embeddings`), by default
200k x 768 and k = 256. dkmeans fits them with ``KMeans(metric="cosine")`` (rows normalised
as read, a centre is the normalised weighted mean of its rows), faiss with
``faiss.Kmeans(spherical=True)`` on the same (already normalised) rows, every row taking
part (``max_points_per_centroid`` above n / k). Each fit runs in a fresh process with every
thread pool (Dask, BLAS, OpenMP) limited to 2 threads, the processes taking turns, as in
:mod:`benchmarks.shapes` (whose machinery this reuses, ``--data embeddings``):

1. **Time per iteration** from the same start C (k distinct random rows, unit vectors):
   fits of ``a = 2`` and ``b`` iterations with ``tol=0`` (faiss: ``init_centroids=C`` and
   ``early_stop_threshold=-1``), ``(t_b - t_a) / (n_b - n_a)`` with the iterations each
   library says it ran (faiss: ``len(iteration_stats)``);
2. **Whole default fits**: dkmeans's k-means||, faiss's random rows, at most 20 iterations,
   the wall time and the final objective ``sum(1 - max_c cos(x, c))`` recomputed by brute
   force in float64 from the normalised centres (never a library's own figure);
3. **Ratios** dkmeans / faiss (goals: at most 1.0 per iteration, objective at most faiss's).

    python -m benchmarks.cosine_faiss                                     # 200k x 768, k = 256
    python -m benchmarks.cosine_faiss --n 20000 --d 128 --k 64 --repeats 1   # a smoke run

Results: ``--out`` (default ``benchmarks/results/cosine_faiss.json``, every fit's record in
it) and Markdown tables on stdout (medians over ``--repeats``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .measures import RESULTS, versions
from .shapes import MODES, PACKAGES, Shape, choices, markdown_tables, run_case, summarise

#: The data kind of :mod:`benchmarks.shapes` clustered with the cosine metric.
KIND = "embeddings"
#: The peers, dkmeans first.
LIBRARIES = ["dkmeans", "faiss-cpu"]
#: Threads of every library.
THREADS = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="rows")
    parser.add_argument("--d", type=int, default=768, help="features")
    parser.add_argument("--k", type=int, default=256, help="centres")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "cosine_faiss.json")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="marginal (time per iteration), default (whole fits)",
    )
    args = parser.parse_args(argv)
    args.modes = choices(parser, "--modes", args.modes, MODES)
    if min(args.d, args.k, args.repeats) < 1:
        parser.error("--d, --k and --repeats must be at least 1")
    if args.n < 2 * args.k:
        parser.error(f"fewer than 2 rows per centre: {args.n:,} rows for k = {args.k}")
    args.threads, args.timeout = THREADS, None  # what benchmarks.shapes.run_case reads
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    shape = Shape(args.n, args.d, args.k)
    with tempfile.TemporaryDirectory(prefix="dkmeans-cosine-faiss-") as tmp:
        runs = run_case(shape, KIND, LIBRARIES, args, Path(tmp))
    summaries = summarise(runs)
    record = {
        "command": " ".join(["python -m benchmarks.cosine_faiss", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(PACKAGES),
        "threads": THREADS,
        "repeats": args.repeats,
        "seconds": time.perf_counter() - started,
        "summaries": [asdict(s) for s in summaries],
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("\n" + markdown_tables(summaries, LIBRARIES))
    print("(inertia: the cosine objective sum(1 - cos), by brute force)")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
