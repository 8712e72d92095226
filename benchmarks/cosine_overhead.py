"""What ``metric="cosine"`` costs per Lloyd pass against ``"euclidean"``.

Cosine k-means runs the Euclidean engine on rows divided by their norms, block by block
as they are read: the extra cost is one NumPy pass over every block (float64 squared
norms, one division into a new block). Fits the same data from the same explicit start
with both metrics, alternating, ``--max-iter`` iterations and ``tol=0``, and reports the
best time per pass (iterations plus the final pass) and the ratio, for NumPy input and for
a Dask array streamed block by block (``persist=False``).

    python -m benchmarks.cosine_overhead --n-samples 500000 --n-features 32 --n-clusters 16
"""

from __future__ import annotations

import argparse
import time

import dask.array as da
import numpy as np

from dkmeans import KMeans

METRICS = ("euclidean", "cosine")


def seconds_per_pass(data, init: np.ndarray, metric: str, max_iter: int, persist) -> float:
    km = KMeans(len(init), init=init, metric=metric, max_iter=max_iter, tol=0, persist=persist)
    started = time.perf_counter()
    km.fit(data)
    return (time.perf_counter() - started) / (km.n_iter_ + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=500_000)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--n-clusters", type=int, default=16)
    parser.add_argument("--chunk-rows", type=int, default=62_500)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, d, k = args.n_samples, args.n_features, args.n_clusters
    directions = rng.normal(size=(k, d)).astype(np.float32)
    X = rng.normal(size=(n, d)).astype(np.float32) + 3 * directions[rng.integers(k, size=n)]
    init = X[:k].copy()
    inputs = {
        "numpy": (X, "auto"),
        "dask, streamed": (da.from_array(X, chunks=(args.chunk_rows, d)), False),
    }
    for name, (data, persist) in inputs.items():
        best = {metric: np.inf for metric in METRICS}
        for _ in range(args.repeats):
            for metric in METRICS:
                timed = seconds_per_pass(data, init, metric, args.max_iter, persist)
                best[metric] = min(best[metric], timed)
        print(
            f"{name}: euclidean {best['euclidean'] * 1e3:.1f} ms/pass, "
            f"cosine {best['cosine'] * 1e3:.1f} ms/pass, "
            f"ratio {best['cosine'] / best['euclidean']:.2f}"
        )


if __name__ == "__main__":
    main()
