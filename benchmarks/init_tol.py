"""What ``init_tol`` (k-means|| rounds that stop once one gains little) costs and saves.

For every data set and every ``--tols`` value: the rounds each k-means|| run drew, the
time of the seeding alone, and the final inertia of a default fit
(``dkmeans.KMeans(k, init_tol=tol)``, recomputed by brute force) over scikit-learn's
k-means++ fit (``n_init=1``, the same seeds), means over ``--seeds`` seeds. ``init_tol=0``
draws every round (the behaviour before ``init_tol``).

Data: the paper's Gauss mixtures (15 dimensions, R = 1, 10, 100) and one in 128
dimensions, blobs, structureless noise and unit embeddings in many dimensions, and
clusters of power-law sizes. ``--scale`` multiplies the rows (smoke runs).

Run ``python -m benchmarks.init_tol``; results go to ``benchmarks/results/init_tol.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import numpy as np
from sklearn.cluster import KMeans as SklearnKMeans
from threadpoolctl import threadpool_limits

import dkmeans
from dkmeans import estimator, oversampling
from dkmeans.sources import InMemorySource

from .measures import RESULTS, brute_force_inertia, make_data, make_embeddings, make_noise
from .seeding_quality import gauss_mixture


def power_law_clusters(n: int, n_clusters: int = 200, d: int = 10, seed: int = 3) -> np.ndarray:
    """``n_clusters`` unit-variance clusters of sizes proportional to ``i ** -1.5``."""
    rng = np.random.default_rng(seed)
    sizes = np.maximum((n * np.arange(1, n_clusters + 1) ** -1.5 / 2.612).astype(int), 5)
    centers = rng.normal(scale=5.0, size=(n_clusters, d))
    return np.concatenate(
        [c + rng.standard_normal((s, d)) for c, s in zip(centers, sizes, strict=True)]
    )


#: name -> (rows -> data, rows at scale 1, k)
DATA: dict[str, tuple[Callable[[int], np.ndarray], int, int]] = {
    "mixture 15-d R=1": (lambda n: gauss_mixture(n, 50, 1), 100_000, 50),
    "mixture 15-d R=10": (lambda n: gauss_mixture(n, 100, 10), 100_000, 100),
    "mixture 15-d R=100": (lambda n: gauss_mixture(n, 100, 100), 100_000, 100),
    "mixture 128-d R=10": (lambda n: gauss_mixture(n, 200, 10, d=128), 50_000, 200),
    "blobs 64-d": (lambda n: make_data(n, 64, 256, "float32"), 100_000, 256),
    "noise 64-d": (lambda n: make_noise(n, 64, "float32"), 100_000, 256),
    "noise 768-d": (lambda n: make_noise(n, 768, "float32"), 50_000, 64),
    "embeddings 256-d": (lambda n: make_embeddings(n, 256, 100), 50_000, 100),
    "power-law sizes": (lambda n: power_law_clusters(n), 200_000, 200),
}


@dataclass
class Row:
    """One data set at one ``init_tol``: means over the seeds."""

    data: str
    n: int
    d: int
    k: int
    init_tol: float
    rounds: float  # mean rounds a run drew
    seeding_seconds: float  # mean, seeding alone
    final_inertia: float  # mean, brute force
    sklearn_inertia: float  # mean, brute force

    @property
    def ratio(self) -> float:
        return self.final_inertia / self.sklearn_inertia


@contextmanager
def watched_seeding() -> Iterator[SimpleNamespace]:
    """Within it, every fit's k-means|| rounds (the passes of ``oversample`` over any
    in-memory source: data or seeding sample) are counted and its seeding timed."""
    record = SimpleNamespace(rounds=0, seconds=0.0)
    map_reduce, seed = InMemorySource.map_reduce, estimator.initial_centers

    def counting(source: InMemorySource, func: Any, *args: Any, **kwargs: Any) -> Any:
        record.rounds += func is oversampling.oversample
        return map_reduce(source, func, *args, **kwargs)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return seed(*args, **kwargs)
        finally:
            record.seconds += time.perf_counter() - started

    InMemorySource.map_reduce, estimator.initial_centers = counting, timed
    try:
        yield record
    finally:
        InMemorySource.map_reduce, estimator.initial_centers = map_reduce, seed


def evaluate(name: str, x: np.ndarray, k: int, tols: list[float], seeds: range) -> list[Row]:
    """One row per ``init_tol``: means over ``seeds`` of default fits of ``x``."""
    fits = [SklearnKMeans(k, n_init=1, random_state=s).fit(x) for s in seeds]
    sklearn = np.mean([brute_force_inertia(x, fit.cluster_centers_) for fit in fits])
    rows = []
    for tol in tols:
        with watched_seeding() as seeding:
            centers = [
                dkmeans.KMeans(k, init_tol=tol, random_state=s).fit(x).cluster_centers_
                for s in seeds
            ]
        finals = [brute_force_inertia(x, c) for c in centers]
        rows.append(
            Row(name, len(x), x.shape[1], k, tol, seeding.rounds / len(seeds),
                seeding.seconds / len(seeds), float(np.mean(finals)), float(sklearn))
        )  # fmt: skip
    return rows


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| data | n × d, k | init_tol | rounds | seeding (s) | final inertia / scikit-learn's |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.data} | {r.n:,} × {r.d}, {r.k} | {r.init_tol:g} | {r.rounds:.1f} "
            f"| {r.seeding_seconds:.3g} | {r.ratio:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    parser.add_argument("--tols", default="0,0.05,0.1", help="init_tol values, comma-separated")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the rows")
    parser.add_argument("--data", default=",".join(DATA), help="data sets, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="threads of every library")
    parser.add_argument("--out", type=Path, default=RESULTS / "init_tol.json")
    args = parser.parse_args(argv)
    tols = [float(t) for t in args.tols.split(",")]
    dask.config.set(num_workers=args.threads)
    rows: list[Row] = []
    with threadpool_limits(args.threads):
        for name in args.data.split(","):
            make, n, k = DATA[name]
            x = make(max(int(n * args.scale), 20 * k))
            found = evaluate(name, x, k, tols, range(args.seeds))
            print(markdown(found).split("\n", 2)[2], flush=True)
            rows += found
    print("\n" + markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"command": vars(args) | {"out": str(args.out)},
                    "rows": [asdict(r) | {"ratio": r.ratio} for r in rows]}, indent=2)
    )  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
