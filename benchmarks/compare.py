"""dkmeans side by side with scikit-learn, dask-ml and MiniBatchKMeans.

Every peer clusters the same data from the same initial centres (``init=centers``,
``n_init=1``, ``tol=0``) in one process; the peers take turns, repeat after repeat,
so that load from other processes on the machine spreads over all of them.

The time of one iteration is *marginal*: each peer is fitted with ``low`` and with
``high`` iterations and ``(T_high - T_low) / (n_iter_high - n_iter_low)`` removes what
a fit costs once (validation, final labels, conversions). The median over repeats is
reported. The final inertia of every peer is recomputed here by brute force from its
centres (dask-ml's own ``inertia_`` is not the sum of squared distances).

Run ``python -m benchmarks.compare --suite quick`` (a few minutes), ``--suite full`` or
``--suite out-of-core``; results go to ``benchmarks/results/compare-<suite>.json`` and
``.png``. The out-of-core case clusters the 4.1 GB uncompressed store of
``benchmarks/out_of_core.py`` (made with ``dkmeans make-blobs`` if missing): dkmeans
streams it (``persist=False``), dask-ml gets ``da.from_zarr``, and a plain read-and-sum
pass is timed beside them; the peers that need X in memory are skipped there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import dask
import dask.array as da
import numpy as np
import psutil
import zarr
from threadpoolctl import threadpool_limits

import dkmeans
import dkmeans.engine
import dkmeans.resources

from .measures import RESULTS, brute_force_inertia, initial_centers, make_data, versions

#: Rows per Dask block for the "dask" container (the issue's 250k-row blocks).
DASK_BLOCK_ROWS = 250_000

#: The store of the out-of-core case (32e6 x 32 float32, uncompressed).
STORE = "/tmp/dkmeans-bench/blobs-32M-none.zarr"

Container = Literal["numpy", "dask", "zarr"]


@dataclass(frozen=True)
class Case:
    """One data set and container."""

    n: int
    d: int
    k: int
    dtype: str
    container: Container
    #: (low, high) iterations instead of the suite's
    iterations: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return f"{self.n:,} x {self.d} {self.dtype} k={self.k} {self.container}"


@dataclass(frozen=True)
class Peer:
    """A k-means implementation: how to build it and what it is fed."""

    name: str
    build: Callable[[np.ndarray, int], Any]  # (initial centres, max_iter) -> estimator
    #: what it is fed: the case's container, or always NumPy / always the Dask array
    feed: Literal["case", "numpy", "dask"] = "case"
    #: (low, high) iterations instead of the suite's (MiniBatchKMeans: epochs are slow)
    iterations: tuple[int, int] | None = None
    #: run only on cases whose container is NumPy (a peer that would repeat itself)
    numpy_cases_only: bool = False
    #: a reference pass, not a clustering: it has no inertia of its own
    reference: bool = False


@dataclass(frozen=True)
class Timing:
    """Median marginal time of one iteration of one peer on one case."""

    case: str
    peer: str
    seconds_per_iter: float
    fit_seconds: float  # of the fit with ``high`` iterations
    n_iter: int
    peak_rss_mib: float  # growth of the resident set during that fit
    inertia: float | None  # brute force, from the final centres (None: a reference pass)


class Switched:
    """dkmeans fitted with one setting changed for the fit: ``dkmeans-numpy`` runs the
    NumPy engine, ``dkmeans-full-passes`` keeps no state per row (no distance bounds:
    every Lloyd pass measures every row, as scikit-learn's does)."""

    def __init__(
        self, estimator: dkmeans.KMeans, setting: Callable[[], AbstractContextManager]
    ) -> None:
        self.estimator, self.setting = estimator, setting

    def fit(self, X: Any) -> Switched:
        with self.setting():
            self.estimator.fit(X)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.estimator, name)


class ReadPass:
    """The floor of any pass: ``max_iter`` plain read-and-sum passes over a Dask array."""

    def __init__(self, centers: np.ndarray, max_iter: int) -> None:
        self.cluster_centers_, self.n_iter_ = centers, max_iter

    def get_params(self) -> dict[str, Any]:
        return {}

    def fit(self, X: da.Array) -> ReadPass:
        for _ in range(self.n_iter_):
            X.sum(axis=0).compute()
        return self


def available_peers() -> tuple[list[Peer], list[str]]:
    """The peers installed here, and a note for every one that is not."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    peers = [
        Peer("dkmeans", lambda c, m: dkmeans.KMeans(len(c), init=c, n_init=1, max_iter=m, tol=0)),
        Peer(
            "sklearn",
            lambda c, m: KMeans(len(c), init=c, n_init=1, max_iter=m, tol=0, algorithm="lloyd"),
            feed="numpy",
        ),
    ]
    notes = []
    full_passes = Peer(
        "dkmeans-full-passes",
        lambda c, m: Switched(
            peers[0].build(c, m),
            lambda: mock.patch.object(dkmeans.resources, "ROW_MEMORY_FRACTION", 0),
        ),
    )
    peers.insert(1, full_passes)
    if dkmeans.engine.current() == "numba":
        numpy_kernel = Peer(
            "dkmeans-numpy",
            lambda c, m: Switched(
                peers[0].build(c, m),
                lambda: dask.config.set({dkmeans.engine.CONFIG_KEY: "numpy"}),
            ),
        )
        peers.insert(1, numpy_kernel)
    else:
        notes.append("dkmeans runs its NumPy kernel: numba is not installed")
    try:
        from dask_ml.cluster import KMeans as DaskMLKMeans
    except ImportError as error:
        notes.append(f"dask-ml skipped: {error}")
    else:
        peers.append(
            Peer(
                "dask-ml",
                lambda c, m: DaskMLKMeans(len(c), init=c, n_init=1, max_iter=m, tol=0),
                feed="dask",
            )
        )
    peers.append(
        Peer(
            "minibatch",
            lambda c, m: MiniBatchKMeans(
                len(c), init=c, n_init=1, max_iter=m, tol=0, max_no_improvement=None
            ),
            feed="numpy",
            iterations=(1, 2),
            numpy_cases_only=True,
        )
    )
    peers.append(Peer("read pass", ReadPass, feed="dask", reference=True))
    return peers, notes


@contextmanager
def peak_rss() -> Iterator[list[float]]:
    """Sample the resident set every 5 ms; yields a list that receives the peak growth."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: list[float] = []
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        result.append((peak[0] - baseline) / 2**20)


def fit_once(
    peer: Peer, data: Any, centers: np.ndarray, max_iter: int, *, streaming: bool = False
) -> tuple[float, Any, float]:
    """Fit one estimator; return seconds, the estimator and the peak RSS growth (MiB).

    ``streaming``: an estimator with a ``persist`` parameter reads the data at every pass
    (the out-of-core case) instead of keeping it in memory when it fits.
    """
    estimator = peer.build(centers, max_iter)
    if streaming and "persist" in estimator.get_params():
        estimator.set_params(persist=False)
    with peak_rss() as peak:
        started = time.perf_counter()
        estimator.fit(data)
        seconds = time.perf_counter() - started
    return seconds, estimator, peak[0]


def case_data(case: Case) -> tuple[Any, dict[str, Any]]:
    """The case's data (for initial centres and inertia) and what each feed gets."""
    if case.container == "zarr":
        if not Path(STORE).exists():
            subprocess.run(
                [sys.executable, "-m", "dkmeans.cli", "make-blobs", STORE, "--n-samples",
                 str(case.n), "--n-features", str(case.d), "--centers", str(case.k),
                 "--seed", "0"],
                check=True,
            )  # fmt: skip
        x = zarr.open_array(STORE, mode="r")
        return x, {"numpy": None, "dask": da.from_zarr(STORE), "case": STORE}
    x = make_data(case.n, case.d, case.k, case.dtype)
    chunked = da.from_array(x, chunks=(DASK_BLOCK_ROWS, -1))
    return x, {"numpy": x, "dask": chunked, "case": chunked if case.container == "dask" else x}


def time_case(case: Case, peers: list[Peer], *, repeats: int, low: int, high: int) -> list[Timing]:
    """Marginal per-iteration time of every peer on one case, peers alternating."""
    x, feeds = case_data(case)
    centers = initial_centers(x, case.k)
    skipped = [p.name for p in peers if feeds[p.feed] is None]
    if skipped:
        print(f"  {case.name}: skipped {', '.join(skipped)} (they need X in memory)")
    peers = [p for p in peers if feeds[p.feed] is not None]
    peers = [p for p in peers if case.container == "numpy" or not p.numpy_cases_only]
    peers = [p for p in peers if case.container == "zarr" or not p.reference]
    low, high = case.iterations or (low, high)
    samples: dict[str, list[float]] = {peer.name: [] for peer in peers}
    last: dict[str, tuple[float, Any, float]] = {}
    fit = partial(fit_once, streaming=case.container == "zarr")
    for peer in peers:  # warm-up: imports, JIT compilation
        fit(peer, feeds[peer.feed], centers, 1)
    for _ in range(repeats):
        for peer in peers:
            data = feeds[peer.feed]
            peer_low, peer_high = peer.iterations or (low, high)
            if peer.iterations is None:  # first touch of memory the previous peer freed
                fit(peer, data, centers, 1)
            t_low, fitted_low, _ = fit(peer, data, centers, peer_low)
            t_high, fitted_high, rss = fit(peer, data, centers, peer_high)
            extra = fitted_high.n_iter_ - fitted_low.n_iter_
            per_iter = (t_high - t_low) / extra if extra > 0 else t_high / fitted_high.n_iter_
            samples[peer.name].append(per_iter)
            print(f"  {case.name} {peer.name}: {1e3 * per_iter:.1f} ms/iter", flush=True)
            last[peer.name] = (t_high, fitted_high, rss)
    return [
        Timing(
            case.name,
            peer.name,
            statistics.median(samples[peer.name]),
            last[peer.name][0],
            int(last[peer.name][1].n_iter_),
            last[peer.name][2],
            None if peer.reference else brute_force_inertia(x, last[peer.name][1].cluster_centers_),
        )
        for peer in peers
    ]


@dataclass(frozen=True)
class ScalingPoint:
    """One peer's time of one iteration at one (n, d, k, threads)."""

    peer: str
    n: int
    d: int
    k: int
    threads: int
    seconds_per_iter: float


@contextmanager
def total_threads(threads: int) -> Iterator[None]:
    """Limit dkmeans to ``threads`` cores in all: Dask threads x BLAS threads."""
    scheduler = "synchronous" if threads == 1 else "threads"
    with (
        dask.config.set(scheduler=scheduler, num_workers=threads),
        threadpool_limits(limits=threads),
    ):
        yield


def scaling(
    base: tuple[int, int, int], grid: dict[str, list[int]], *, repeats: int
) -> list[ScalingPoint]:
    """Vary n, d and k one at a time around ``base`` (float32, NumPy input), 1 and 2 threads,
    for dkmeans and scikit-learn (whose OpenMP threads ``threadpool_limits`` limits too)."""
    n0, d0, k0 = base
    shapes = [(n0, d0, k0)]
    shapes += [(n, d0, k0) for n in grid["n"]] + [(n0, d, k0) for d in grid["d"]]
    shapes += [(n0, d0, k) for k in grid["k"]]
    shapes = list(dict.fromkeys(shapes))
    peers = [p for p in available_peers()[0] if p.name in ("dkmeans", "sklearn")]
    points = []
    for n, d, k in shapes:
        x = make_data(n, d, k, "float32")
        centers = initial_centers(x, k)
        for peer in peers:
            fit_once(peer, x, centers, 1)  # warm-up
            for threads in (1, 2):
                runs = []
                with total_threads(threads):
                    for _ in range(repeats):
                        t_low, low, _ = fit_once(peer, x, centers, 2)
                        t_high, high, _ = fit_once(peer, x, centers, 12)
                        runs.append((t_high - t_low) / max(1, high.n_iter_ - low.n_iter_))
                points.append(ScalingPoint(peer.name, n, d, k, threads, statistics.median(runs)))
    return points


#: The 4.1 GB store streamed from disk: one pass of dask-ml takes seconds, so few iterations.
OUT_OF_CORE = Case(32_000_000, 32, 16, "float32", "zarr", iterations=(1, 3))

SUITES: dict[str, dict[str, Any]] = {
    "quick": {
        "cases": [
            Case(2_000_000, 32, 16, "float32", "numpy"),
            Case(2_000_000, 32, 16, "float32", "dask"),
            Case(200_000, 8, 8, "float64", "numpy"),
        ],
        "repeats": 3,
        "iterations": (2, 20),
        "scaling": ((500_000, 32, 16), {"n": [250_000, 1_000_000], "d": [8], "k": [64]}),
    },
    "full": {
        "cases": [
            Case(2_000_000, d, k, dtype, container)
            for dtype in ("float32", "float64")
            for d in (2, 32, 256)
            for k in (16, 256)
            for container in ("numpy", "dask")
        ],
        "repeats": 2,
        "iterations": (2, 6),
        "scaling": (
            (1_000_000, 32, 16),
            {"n": [250_000, 500_000, 2_000_000], "d": [2, 8, 128], "k": [4, 64, 256]},
        ),
    },
    "out-of-core": {
        "cases": [OUT_OF_CORE],
        "repeats": 2,
        "iterations": (1, 3),
        "scaling": None,
    },
}
SUITES["full"]["cases"].append(OUT_OF_CORE)


def markdown_table(timings: list[Timing]) -> str:
    """One row per case and peer with the ratio of its time to dkmeans's."""
    reference = {t.case: t for t in timings if t.peer == "dkmeans"}
    lines = [
        "| case | peer | ms / iter | ratio to dkmeans | fit s | n_iter | peak RSS MiB "
        "| inertia / dkmeans |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        ref = reference[t.case]
        lines.append(
            f"| {t.case} | {t.peer} | {1e3 * t.seconds_per_iter:.1f} "
            f"| {t.seconds_per_iter / ref.seconds_per_iter:.2f} | {t.fit_seconds:.2f} "
            f"| {t.n_iter} | {t.peak_rss_mib:.0f} "
            f"| {'-' if t.inertia is None else f'{t.inertia / ref.inertia:.6f}'} |"
        )
    return "\n".join(lines)


def scaling_table(points: list[ScalingPoint]) -> str:
    """Time of one iteration per shape, 1 and 2 threads: dkmeans, its speed-up, and its
    ratio to scikit-learn at the same thread count."""
    by_shape: dict[tuple[int, int, int], dict[tuple[str, int], float]] = {}
    for p in points:
        by_shape.setdefault((p.n, p.d, p.k), {})[p.peer, p.threads] = p.seconds_per_iter
    lines = [
        "| n | d | k | 1 thread ms | 2 threads ms | speed-up | ns per row x centre (2 thr.) "
        "| / sklearn, 1 thread | / sklearn, 2 threads |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (n, d, k), t in sorted(by_shape.items()):
        one, two = t["dkmeans", 1], t["dkmeans", 2]
        versus = [
            f"{t['dkmeans', threads] / t['sklearn', threads]:.2f}"
            if ("sklearn", threads) in t
            else "-"
            for threads in (1, 2)
        ]
        lines.append(
            f"| {n:,} | {d} | {k} | {1e3 * one:.1f} | {1e3 * two:.1f} | {one / two:.2f} "
            f"| {1e9 * two / (n * k):.2f} | {versus[0]} | {versus[1]} |"
        )
    return "\n".join(lines)


def plot(timings: list[Timing], points: list[ScalingPoint], path: Path) -> None:
    """Bars of ms per iteration per case and peer; scaling curves of dkmeans."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(t.case for t in timings))
    peers = list(dict.fromkeys(t.peer for t in timings))
    ratios = [3, 1, 1, 1] if points else [1]
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.5 * len(ratios), 5), squeeze=False,
                             gridspec_kw={"width_ratios": ratios})  # fmt: skip
    axes = axes[0]
    width = 0.8 / len(peers)
    for j, peer in enumerate(peers):
        values = [
            next((1e3 * t.seconds_per_iter for t in timings if t.case == c and t.peer == peer), 0)
            for c in cases
        ]
        axes[0].bar(np.arange(len(cases)) + j * width, values, width, label=peer)
    axes[0].set_xticks(np.arange(len(cases)) + 0.4 - width / 2, cases, rotation=60, ha="right")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("ms per iteration")
    axes[0].legend()
    n0, d0, k0 = (points[0].n, points[0].d, points[0].k) if points else (0, 0, 0)
    for ax, axis in zip(axes[1:], ("n", "d", "k"), strict=False):
        for threads in (1, 2):
            chosen = sorted(
                (getattr(p, axis), 1e3 * p.seconds_per_iter)
                for p in points
                if p.peer == "dkmeans"
                and p.threads == threads
                and all(
                    getattr(p, a) == v
                    for a, v in zip("ndk", (n0, d0, k0), strict=True)
                    if a != axis
                )
            )
            ax.plot(*zip(*chosen, strict=True), marker="o", label=f"{threads} thread(s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("dkmeans ms per iteration")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling study")
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    peers, notes = available_peers()
    for note in notes:
        print(note)
    timings = []
    for case in suite["cases"]:
        low, high = suite["iterations"]
        timings += time_case(case, peers, repeats=suite["repeats"], low=low, high=high)
        print(markdown_table([t for t in timings if t.case == case.name]), flush=True)
    run_scaling = suite["scaling"] is not None and not args.no_scaling
    points = scaling(*suite["scaling"], repeats=suite["repeats"]) if run_scaling else []
    print("\n" + markdown_table(timings))
    if points:
        print("\n" + scaling_table(points))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"compare-{args.suite}"
    record = {
        "suite": args.suite,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(("dkmeans", "numpy", "dask", "scikit-learn", "dask-ml", "numba")),
        "notes": notes,
        "timings": [asdict(t) for t in timings],
        "scaling": [asdict(p) for p in points],
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    plot(timings, points, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
