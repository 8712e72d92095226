"""Small data: a whole default fit of a few hundred to a few thousand rows, against scikit-learn.

Inside ``GridSearchCV`` or a notebook's loop over k, a fit's fixed cost is what a user
waits for. Times the whole ``fit`` (validation, seeding, Lloyd, labels) of
``dkmeans.KMeans(k, random_state=s)`` and of scikit-learn's
``KMeans(k, random_state=s, n_init=1)`` on the same NumPy data, alternating, and
reports the medians and their ratio (goal: at most 2 from 300 to 5,000 rows), with the
final inertia of each recomputed by brute force.

    python -m benchmarks.small_data --repeats 20

The shapes are those of the data sets users meet first: penguins (342 x 4, k = 3),
airports (3,376 x 2, k = 16), and Gaussian blobs and structureless Gaussian data in
between. Results: a table on stdout and ``benchmarks/results/small_data.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from sklearn.cluster import KMeans as ScikitLearnKMeans
from sklearn.datasets import make_blobs

from dkmeans import KMeans

from .measures import RESULTS, brute_force_inertia

#: (name, rows, features, k, whether the data has clusters)
SHAPES = [
    ("penguins-like", 342, 4, 3, True),
    ("blobs", 1_000, 8, 8, True),
    ("airports-like", 3_376, 2, 16, False),
    ("gaussian", 5_000, 16, 10, False),
]


def data(rows: int, features: int, k: int, clustered: bool) -> np.ndarray:
    if clustered:
        return make_blobs(rows, n_features=features, centers=k, random_state=0)[0]
    return np.random.default_rng(0).normal(size=(rows, features))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for name, n, d, k, clustered in SHAPES:
        X = data(n, d, k, clustered)
        fits = {
            "dkmeans": lambda seed, X=X, k=k: KMeans(k, random_state=seed).fit(X),
            "scikit-learn": lambda seed, X=X, k=k: ScikitLearnKMeans(
                k, random_state=seed, n_init=1
            ).fit(X),
        }
        times: dict[str, list[float]] = {peer: [] for peer in fits}
        inertia: dict[str, list[float]] = {peer: [] for peer in fits}
        for fit in fits.values():
            fit(0)  # warm-up: numba's cache, imports
        for seed in range(args.repeats):
            for peer, fit in fits.items():
                start = time.perf_counter()
                model = fit(seed)
                times[peer].append(time.perf_counter() - start)
                inertia[peer].append(brute_force_inertia(X, model.cluster_centers_))
        row = {
            "shape": name,
            "n_samples": n,
            "n_features": d,
            "n_clusters": k,
            **{f"{peer} ms": 1e3 * statistics.median(t) for peer, t in times.items()},
            **{f"{peer} inertia": statistics.median(v) for peer, v in inertia.items()},
        }
        row["dkmeans / scikit-learn"] = row["dkmeans ms"] / row["scikit-learn ms"]
        rows.append(row)
        print(
            f"{name:>14} {n:>6} x {d:<3} k={k:<3} dkmeans {row['dkmeans ms']:7.2f} ms  "
            f"scikit-learn {row['scikit-learn ms']:7.2f} ms  ratio "
            f"{row['dkmeans / scikit-learn']:.2f}  inertia ratio "
            f"{row['dkmeans inertia'] / row['scikit-learn inertia']:.3f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "small_data.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
