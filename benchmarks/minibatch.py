"""MiniBatchKMeans: time per epoch and final inertia, in memory and out of core.

In memory (``--n-samples`` x 32 float32, k = 16, a Gaussian mixture): dkmeans's and
scikit-learn's ``MiniBatchKMeans`` with the same ``batch_size`` over ``--seeds`` seeds,
each seed giving both libraries the same initial centres (k random rows) and
``random_state``, ``--epochs`` epochs without early stopping; then both with their own
defaults (their own initialisations, early stopping) and the seed. The final inertia of
each is recomputed by brute force: per seed, the ratio dkmeans / scikit-learn, reported
for seed 0, as the median and the worst over the seeds, and as the ratios of the median
and of the mean inertias (goal: at most 1). From random rows scikit-learn ends in a local
minimum (2.3-4.0x the optimum on 200,000 rows), which one depends on the seed's early
batches; dkmeans's relocations (``dkmeans.relocation``) move its centres out of them.
``--starts defaults`` runs only the second, cheaper comparison.
Seed 0 is timed ``--repeats`` times, alternating: medians of the time per epoch (goal:
dkmeans faster).

Out of core (the store of ``benchmarks/out_of_core.py``, made if missing): one epoch of
``MiniBatchKMeans(persist=False)`` against a plain read-and-sum pass of the store,
alternating (goal: at most 1.5x; their process CPU seconds too, which say what an epoch
asks of the cores however loaded the machine is), and the inertia after
``--store-epochs`` epochs against ``KMeans`` run to convergence from the same initial
centres (goal: at most 1.02x).

Run lengths (``--only run-lengths``): a shuffled epoch takes the rows of a block in runs of
``dkmeans.batches.RUN_ROWS`` consecutive rows; for every length in ``--run-lengths``, the
process CPU seconds of an epoch in memory and the final inertia after ``--epochs`` epochs
against ``KMeans`` to convergence from the same k-means++ start, over ``--seeds`` seeds, on
a mixture stored shuffled and stored sorted by cluster (where runs could hurt).

    python -m benchmarks.minibatch                                  # the full run
    python -m benchmarks.minibatch --only out-of-core --tag out-of-core   # the 4.1 GB store
    python -m benchmarks.minibatch --only run-lengths --tag run-lengths
    python -m benchmarks.minibatch --n-samples 200000 --store-samples 1e6 --repeats 1

Results: a table on stdout and ``benchmarks/results/minibatch[-TAG].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from sklearn.cluster import MiniBatchKMeans as ScikitLearnMiniBatchKMeans
from sklearn.cluster import kmeans_plusplus

import dkmeans.batches
from dkmeans import KMeans, MiniBatchKMeans
from dkmeans.cli import count, reuse_freed_memory

from .measures import RESULTS, brute_force_inertia, initial_centers, make_data, versions
from .out_of_core import make_store, read_pass

K = 16
#: The in-memory inertia ratios reported (dkmeans / scikit-learn): label, key, goal.
INERTIA_ROWS = [
    ("seed 0", "inertia_ratio_seed0", "<= 1"),
    ("median", "inertia_ratio_median", "<= 1"),
    ("worst", "inertia_ratio_worst", ""),
    ("of medians", "median_inertia_ratio", "<= 1"),
    ("of means", "mean_inertia_ratio", "<= 1"),
]


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def alternate(fits: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list]:
    """Every fit ``repeats`` times, alternating: (seconds, fitted) of each run."""
    runs: dict[str, list] = {name: [] for name in fits}
    for _ in range(repeats):
        for name, fit in fits.items():
            runs[name].append(timed(fit))
    return runs


def in_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Both libraries over ``--seeds`` seeds: from each seed's same start (k random rows)
    for ``--epochs`` epochs, and with their own defaults; seed 0 timed ``--repeats`` times."""
    X = make_data(args.n_samples, 32, K, "float32")

    def fits(seed: int) -> dict[str, dict[str, Callable[[], Any]]]:
        fixed = dict(
            init=initial_centers(X, K, seed=seed + 1), batch_size=args.batch_size,
            max_iter=args.epochs, tol=0.0, max_no_improvement=None, compute_labels=False,
            random_state=seed,
        )  # fmt: skip
        defaults = dict(batch_size=args.batch_size, random_state=seed)
        return {
            "fixed_epochs": {
                "dkmeans": lambda: MiniBatchKMeans(K, **fixed).fit(X),
                "scikit-learn": lambda: ScikitLearnMiniBatchKMeans(K, **fixed, n_init=1).fit(X),
            },
            "defaults": {
                "dkmeans": lambda: MiniBatchKMeans(K, **defaults).fit(X),
                "scikit-learn": lambda: ScikitLearnMiniBatchKMeans(K, **defaults).fit(X),
            },
        }

    # the compiled loops loaded (or compiled) on a few rows, before any timed fit
    MiniBatchKMeans(K, batch_size=args.batch_size, random_state=0).fit(X[: 4 * args.batch_size])
    result: dict[str, Any] = {"shape": list(X.shape), "batch_size": args.batch_size}
    for label in args.starts:
        runs = {name: [] for name in ("dkmeans", "scikit-learn")}
        for seed in range(args.seeds):
            for name, measured in alternate(
                fits(seed)[label], args.repeats if seed == 0 else 1
            ).items():
                runs[name].append(measured)
        summary: dict[str, Any] = {}
        for name, by_seed in runs.items():
            seed0 = [s for s, _ in by_seed[0]]
            summary[name] = {
                "seed0_seconds": seed0,
                "median_s": statistics.median(seed0),
                "epochs": [int(m[-1][1].n_iter_) for m in by_seed],
                "steps": [int(m[-1][1].n_steps_) for m in by_seed],
                "inertia": [brute_force_inertia(X, m[-1][1].cluster_centers_) for m in by_seed],
            }
            if label == "fixed_epochs":
                summary[name]["per_epoch_s"] = summary[name]["median_s"] / args.epochs
        ours, theirs = summary["dkmeans"]["inertia"], summary["scikit-learn"]["inertia"]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        summary["time_ratio"] = summary["dkmeans"]["median_s"] / summary["scikit-learn"]["median_s"]
        summary["inertia_ratio_by_seed"] = ratios
        summary["inertia_ratio_seed0"] = ratios[0]
        summary["inertia_ratio_median"] = statistics.median(ratios)
        summary["inertia_ratio_worst"] = max(ratios)
        summary["median_inertia_ratio"] = statistics.median(ours) / statistics.median(theirs)
        summary["mean_inertia_ratio"] = statistics.fmean(ours) / statistics.fmean(theirs)
        result[label] = summary
    return result


def out_of_core(args: argparse.Namespace) -> dict[str, Any]:
    store = args.store or f"/tmp/dkmeans-bench/blobs-{args.store_samples}-none.zarr"
    if not Path(store).exists():
        make_store(
            argparse.Namespace(
                store=store, n_samples=args.store_samples, n_features=32, n_clusters=K
            )
        )
    array = zarr.open_array(store, mode="r")
    start = initial_centers(array, K)

    def one_epoch() -> MiniBatchKMeans:
        return MiniBatchKMeans(
            K, init=start, batch_size=args.batch_size, max_iter=1, max_no_improvement=None,
            persist=False, compute_labels=False, random_state=0,
        ).fit(store)  # fmt: skip

    cpu: dict[str, list[float]] = {"read_pass": [], "epoch": []}

    def cpu_timed(name: str, function: Callable[[], Any]) -> Callable[[], Any]:
        """``function`` that also records its process CPU seconds (all threads)."""

        def run() -> Any:
            started = time.process_time()
            result = function()
            cpu[name].append(time.process_time() - started)
            return result

        return run

    # the compiled loops loaded (or compiled) on a few rows, the page cache warmed alike
    MiniBatchKMeans(K, init=start, batch_size=args.batch_size, random_state=0).fit(
        array[: 4 * args.batch_size]
    )
    read_pass(store)
    runs = alternate(
        {
            "read_pass": cpu_timed("read_pass", lambda: read_pass(store)),
            "epoch": cpu_timed("epoch", one_epoch),
        },
        args.repeats,
    )
    reads = [s for s, _ in runs["read_pass"]]
    epochs = [s for s, _ in runs["epoch"]]
    seconds, fitted = timed(
        lambda: MiniBatchKMeans(
            K,
            init=start,
            batch_size=args.batch_size,
            max_iter=args.store_epochs,
            persist=False,
            random_state=0,
        ).fit(store)  # fmt: skip
    )
    lloyd_seconds, lloyd = timed(lambda: KMeans(K, init=start, persist=False).fit(store))
    return {
        "store": store,
        "shape": list(array.shape),
        "read_pass_s": reads,
        "epoch_s": epochs,
        "epoch_over_read": statistics.median(epochs) / statistics.median(reads),
        # CPU seconds say how much an epoch asks of the cores, whatever else runs
        "read_pass_cpu_s": cpu["read_pass"],
        "epoch_cpu_s": cpu["epoch"],
        "epoch_over_read_cpu": statistics.median(cpu["epoch"])
        / statistics.median(cpu["read_pass"]),
        "minibatch": {
            "seconds": seconds,
            "epochs": int(fitted.n_iter_),
            "steps": int(fitted.n_steps_),
            "inertia": fitted.inertia_,
        },
        "kmeans": {
            "seconds": lloyd_seconds,
            "n_iter": int(lloyd.n_iter_),
            "inertia": lloyd.inertia_,
        },
        "inertia_ratio": fitted.inertia_ / lloyd.inertia_,
    }


def run_lengths(args: argparse.Namespace) -> dict[str, Any]:
    X = make_data(args.sweep_samples, 32, K, "float32")
    starts = [kmeans_plusplus(X[::16], K, random_state=seed)[0] for seed in range(args.seeds)]
    lloyds = [KMeans(K, init=start).fit(X) for start in starts]
    stored = {"shuffled": [X] * args.seeds}
    stored["sorted"] = [X[np.argsort(lloyd.labels_, kind="stable")] for lloyd in lloyds]
    default = dkmeans.batches.RUN_ROWS
    result: dict[str, Any] = {"shape": list(X.shape), "epochs": args.epochs, "by_run_rows": {}}
    try:
        for run_rows in args.run_lengths:
            dkmeans.batches.RUN_ROWS = run_rows
            entry: dict[str, Any] = {"epoch_cpu_s": []}
            for order, datasets in stored.items():
                ratios = []
                for seed, (data, start, lloyd) in enumerate(
                    zip(datasets, starts, lloyds, strict=True)
                ):
                    fit = MiniBatchKMeans(
                        K, init=start, batch_size=args.batch_size, max_iter=args.epochs,
                        max_no_improvement=None, compute_labels=False, random_state=seed,
                    )  # fmt: skip
                    started = time.process_time()
                    fit.fit(data)
                    if order == "shuffled":
                        entry["epoch_cpu_s"].append((time.process_time() - started) / args.epochs)
                    inertia = brute_force_inertia(data, fit.cluster_centers_)
                    ratios.append(inertia / lloyd.inertia_)
                entry[f"inertia_over_kmeans_{order}"] = ratios
            result["by_run_rows"][str(run_rows)] = entry
    finally:
        dkmeans.batches.RUN_ROWS = default
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=count, default=2_000_000)
    parser.add_argument("--batch-size", type=count, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", default=None, help="default: the out-of-core benchmark's")
    parser.add_argument("--store-samples", type=count, default=32_000_000)
    parser.add_argument("--store-epochs", type=int, default=2)
    parser.add_argument("--sweep-samples", type=count, default=500_000)
    parser.add_argument("--run-lengths", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seeds", type=int, default=5, help="in memory and run lengths")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument(
        "--starts",
        nargs="+",
        choices=["fixed_epochs", "defaults"],
        default=["fixed_epochs", "defaults"],
        help="in memory: from each seed's same start, with each library's defaults, or both",
    )
    parser.add_argument(
        "--only",
        choices=["in-memory", "out-of-core", "run-lengths"],
        default=None,
        help="run one part",
    )
    args = parser.parse_args()
    if args.store is None and args.store_samples == 32_000_000:
        args.store = "/tmp/dkmeans-bench/blobs-32M-none.zarr"
    reuse_freed_memory()
    result: dict[str, Any] = {
        "command": "python -m benchmarks.minibatch " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "versions": versions(("dkmeans", "scikit-learn", "numpy", "dask", "zarr")),
        "run_rows": dkmeans.batches.RUN_ROWS,  # rows a shuffled epoch keeps together
    }
    rows = []
    if args.only in (None, "in-memory"):
        memory = result["in_memory"] = in_memory(args)
        if "fixed_epochs" in memory:
            fixed = memory["fixed_epochs"]
            rows += [
                ("in memory: dkmeans s/epoch", fixed["dkmeans"]["per_epoch_s"], ""),
                ("in memory: scikit-learn s/epoch", fixed["scikit-learn"]["per_epoch_s"], ""),
                ("in memory: time dkmeans / scikit-learn", fixed["time_ratio"], "< 1"),
            ]
        if "defaults" in memory:
            time_ratio = memory["defaults"]["time_ratio"]
            rows.append(("defaults: time dkmeans / scikit-learn, seed 0", time_ratio, ""))
        for label, name in (("fixed_epochs", "same start"), ("defaults", "defaults")):
            part = memory.get(label)
            for what, key, goal in INERTIA_ROWS if part else ():
                rows.append((f"{name}: inertia dkmeans / sklearn, {what}", part[key], goal))
    if args.only in (None, "out-of-core"):
        store = result["out_of_core"] = out_of_core(args)
        rows += [
            ("store: read pass, median (s)", statistics.median(store["read_pass_s"]), ""),
            ("store: one epoch, median (s)", statistics.median(store["epoch_s"]), ""),
            ("store: epoch / read pass", store["epoch_over_read"], "<= 1.5"),
            ("store: epoch / read pass, CPU seconds", store["epoch_over_read_cpu"], ""),
            ("store: inertia mini-batch / KMeans", store["inertia_ratio"], "<= 1.02"),
        ]
    if args.only == "run-lengths":  # not part of the full run
        sweep = result["run_lengths"] = run_lengths(args)
        for run_rows, entry in sweep["by_run_rows"].items():
            rows.append((f"runs of {run_rows}: epoch CPU s", min(entry["epoch_cpu_s"]), ""))
            for order in ("shuffled", "sorted"):
                ratios = entry[f"inertia_over_kmeans_{order}"]
                rows.append((f"runs of {run_rows}: inertia / KMeans, {order}", max(ratios), ""))
    result["load_average_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"minibatch{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{'measure':<50} {'value':>10} {'goal':>7}")
    for name, value, goal in rows:
        print(f"{name:<50} {value:10.4f} {goal:>7}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
