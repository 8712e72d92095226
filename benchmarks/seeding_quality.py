"""Seeding quality of dkmeans's k-means|| and k-means++ against scikit-learn's k-means++.

Data: the GaussMixture of Bahmani et al. (VLDB 2012): ``k`` centres drawn from
``N(0, R I)`` in 15 dimensions, unit-variance clusters around them, and small real
data sets that ship inside scikit-learn (no download).

For every row, the mean over ``--seeds`` seeds of

- the *seeding cost*: the inertia of the initial centres, before Lloyd (dkmeans's
  ``kmeans_parallel`` and ``kmeans_plusplus`` on a :class:`~dkmeans.sources.DaskSource`,
  scikit-learn's ``kmeans_plusplus``);
- the *final inertia* after Lloyd with ``n_init=1`` (``tol=1e-4``, ``max_iter=300``).

Every inertia is recomputed here by brute force from the centres. The goal is a final
inertia ratio dkmeans k-means|| / scikit-learn k-means++ of at most 1.01 on every row.

Run ``python -m benchmarks.seeding_quality``; results go to
``benchmarks/results/seeding_quality.json`` (``--out``: elsewhere).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import dask.array as da
import numpy as np
from sklearn import datasets
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.cluster import kmeans_plusplus as sklearn_plusplus

import dkmeans
from dkmeans.seeding import kmeans_parallel, kmeans_plusplus
from dkmeans.sources import DaskSource

from .measures import RESULTS, brute_force_inertia

#: Rows per Dask block: several blocks even for the mixtures, as in real use.
BLOCK_ROWS = 20_000
#: The goal on every row: dkmeans k-means|| final inertia / scikit-learn k-means++.
GOAL = 1.01


def gauss_mixture(n: int, k: int, radius: float, seed: int = 0, d: int = 15) -> np.ndarray:
    """``n`` points around ``k`` centres drawn from ``N(0, radius * I)``, unit variance."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=np.sqrt(radius), size=(k, d))
    return centers[rng.integers(k, size=n)] + rng.standard_normal((n, d))


def real_datasets() -> dict[str, np.ndarray]:
    """Data sets bundled with scikit-learn (read from its package, never downloaded)."""
    return {
        "digits": datasets.load_digits().data,
        "breast_cancer": datasets.load_breast_cancer().data,
        "wine": datasets.load_wine().data,
        "iris": datasets.load_iris().data,
    }


@dataclass(frozen=True)
class Row:
    """Mean seeding cost and final inertia of the three methods on one data set and k."""

    data: str
    n: int
    d: int
    k: int
    seeds: int
    seed_cost_parallel: float
    seed_cost_plusplus: float
    seed_cost_sklearn: float
    final_parallel: float
    final_plusplus: float
    final_sklearn: float
    seconds: float

    @property
    def ratio_parallel(self) -> float:
        return self.final_parallel / self.final_sklearn

    @property
    def ratio_plusplus(self) -> float:
        return self.final_plusplus / self.final_sklearn


def evaluate(name: str, x: np.ndarray, k: int, seeds: range) -> Row:
    """Seeding costs and final inertias of the three methods, means over ``seeds``."""
    started = time.perf_counter()
    chunked = da.from_array(x, chunks=(BLOCK_ROWS, -1))
    source = DaskSource(chunked)

    def mean(inertia_of_seed: Callable[[int], float]) -> float:
        return float(np.mean([inertia_of_seed(seed) for seed in seeds]))

    def dkmeans_final(init: str) -> Callable[[int], float]:
        def final(seed: int) -> float:
            fitted = dkmeans.KMeans(k, init=init, n_init=1, random_state=seed).fit(chunked)
            return brute_force_inertia(x, fitted.cluster_centers_)

        return final

    def sklearn_final(seed: int) -> float:
        fitted = SklearnKMeans(k, init="k-means++", n_init=1, random_state=seed).fit(x)
        return brute_force_inertia(x, fitted.cluster_centers_)

    row = Row(
        name,
        len(x),
        x.shape[1],
        k,
        len(seeds),
        mean(lambda s: brute_force_inertia(x, kmeans_parallel(source, [k], [s])[0])),
        mean(lambda s: brute_force_inertia(x, kmeans_plusplus(source, k, s))),
        mean(lambda s: brute_force_inertia(x, sklearn_plusplus(x, k, random_state=s)[0])),
        mean(dkmeans_final("k-means||")),
        mean(dkmeans_final("k-means++")),
        mean(sklearn_final),
        0.0,
    )
    return Row(**{**asdict(row), "seconds": time.perf_counter() - started})


def markdown(rows: list[Row]) -> str:
    lines = [
        "| data | n | d | k | seed cost k-means\\|\\| / sk | seed cost dk++ / sk "
        "| final k-means\\|\\| / sk | final dk++ / sk | goal <= 1.01 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.data} | {r.n:,} | {r.d} | {r.k} "
            f"| {r.seed_cost_parallel / r.seed_cost_sklearn:.3f} "
            f"| {r.seed_cost_plusplus / r.seed_cost_sklearn:.3f} "
            f"| {r.ratio_parallel:.4f} | {r.ratio_plusplus:.4f} "
            f"| {'yes' if r.ratio_parallel <= GOAL else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per row (default 5)")
    parser.add_argument("--n", type=int, default=100_000, help="points per Gauss mixture")
    parser.add_argument(
        "--out", default=str(RESULTS / "seeding_quality.json"), help="JSON file of the rows"
    )
    args = parser.parse_args(argv)
    seeds = range(args.seeds)
    rows = []
    for radius in (1, 10, 100):
        for k in (10, 50, 100):
            x = gauss_mixture(args.n, k, radius)
            rows.append(evaluate(f"GaussMixture R={radius}", x, k, seeds))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    for name, x in real_datasets().items():
        for k in (10, 20):
            rows.append(evaluate(name, x, k, seeds))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + markdown(rows))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
