"""The two GEMM layouts of the block kernels, side by side: the measurements behind
``dkmeans.kernels.gemm_by_centers``.

One Lloyd pass (``pass_statistics``) over a block of Gaussian blobs, on one thread (one
BLAS thread), with the GEMM laid out centres by rows (scanned along the rows) and rows
by centres (scanned row by row), for every dtype, number of features and of centres of
the grid; the layouts alternate and the fastest of ``--repeats`` passes is kept. Prints
``rows / centres`` (above 1: centres by rows is faster) and the layout the rule picks,
and writes ``benchmarks/results/layouts.json``.

    python -m benchmarks.layouts
    python -m benchmarks.layouts --features 2 32 --centers 8 100 --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dkmeans import kernels
from dkmeans.kernels import pass_statistics

RESULTS = Path(__file__).parent / "results"


def pass_seconds(
    x: np.ndarray, centers: np.ndarray, bounds: np.ndarray, by_centers: bool, repeats: int
) -> float:
    """Fastest of ``repeats`` passes with the layout forced."""
    chosen = kernels.gemm_by_centers
    kernels.gemm_by_centers = lambda *_: by_centers
    try:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pass_statistics(x, None, 0, 0, centers, bounds)
            times.append(time.perf_counter() - start)
    finally:
        kernels.gemm_by_centers = chosen
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--features", type=int, nargs="+", default=[2, 8, 16, 32, 64, 128])
    parser.add_argument("--centers", type=int, nargs="+", default=[3, 8, 16, 24, 32, 64])
    parser.add_argument("--runs", type=int, default=1, help="runs of that many centres each")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = []
    with threadpool_limits(1):
        for dtype in (np.float32, np.float64):
            for d in args.features:
                blobs = rng.uniform(-10, 10, (20, d))
                x = blobs[rng.integers(20, size=args.rows)] + rng.normal(size=(args.rows, d))
                x = x.astype(dtype)
                for k in args.centers:
                    n_centers = k * args.runs
                    centers = x[rng.choice(args.rows, n_centers)].astype(np.float64)
                    bounds = np.arange(0, n_centers + 1, k)
                    pass_statistics(x, None, 0, 0, centers, bounds)  # compile, warm up
                    seconds = {
                        layout: pass_seconds(x, centers, bounds, layout == "centres", args.repeats)
                        for layout in ("centres", "rows")
                    }
                    by_centres = kernels.gemm_by_centers(n_centers, d, dtype, args.runs)
                    picked = "centres" if by_centres else "rows"
                    ratio = seconds["rows"] / seconds["centres"]
                    results.append(
                        {
                            "dtype": np.dtype(dtype).name,
                            "n_features": d,
                            "centers_per_run": k,
                            "runs": args.runs,
                            "seconds": seconds,
                            "rows_over_centres": ratio,
                            "rule": picked,
                        }
                    )
                    print(
                        f"{np.dtype(dtype).name} d={d:<4} K={n_centers:<5} rows / centres "
                        f"{ratio:5.2f}  rule: {picked}",
                        flush=True,
                    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "layouts.json"
    summary = {"rows": args.rows, "cpus": os.cpu_count(), "results": results}
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
