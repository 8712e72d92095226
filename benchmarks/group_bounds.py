"""Lloyd iterations without bounds, with Hamerly's and with Yinyang's group bounds.

For every case (rows x features, k, data kind) the data is made in memory (float32) and
``KMeans(k, init=shared centres, tol=0)`` fitted for ``a`` and for ``b`` iterations in
every mode, the modes alternating; the time per iteration is the difference over
``b - a`` (the marginal cost of an iteration once the bounds are made), the median over
the repeats. Modes (the knobs of :mod:`dkmeans.lloyd`):

- ``none``: every pass a full pass (no bounds kept);
- ``hamerly``: Hamerly's bounds at every k;
- ``yinyang``: Yinyang's group bounds at every k;
- ``auto``: as shipped (group bounds from ``GROUP_BOUNDS_MIN_CENTERS`` centres).

Each mode still decides per pass from its prediction of the rows it would skip whether
to use its bounds. Also reported: the passes that used the bounds, and whether all
modes ended with the same centres.

    python -m benchmarks.group_bounds                    # the issue's shapes
    python -m benchmarks.group_bounds --case 100000x64x1024:noise --repeats 1

Results go to ``benchmarks/results/group_bounds.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator

import numpy as np

import dkmeans
from dkmeans import lloyd as lloyd_module

from .measures import RESULTS, initial_centers, make_data, make_noise

CASES = (
    "500000x64x1024:blobs",
    "500000x64x1024:noise",
    "200000x768x256:blobs",
    "200000x768x256:noise",
    "200000x128x4096:blobs",
    "200000x128x4096:noise",
    "2000000x32x16:blobs",
    "2000000x32x16:noise",
)
MODES = ("none", "hamerly", "yinyang", "auto")


@contextlib.contextmanager
def mode(name: str) -> Iterator[list[bool]]:
    """Set the knobs of :mod:`dkmeans.lloyd` for a mode; yields a list that receives,
    per pass, whether it used bounds."""
    knobs = {
        "none": {"BOUNDS_MIN_WORK": float("inf")},
        "hamerly": {"GROUP_BOUNDS_MIN_CENTERS": float("inf")},
        "yinyang": {"GROUP_BOUNDS_MIN_CENTERS": 0},
        "auto": {},
    }[name]
    saved = {key: getattr(lloyd_module, key) for key in knobs}
    used: list[bool] = []
    for_pass = lloyd_module.RowBounds.for_pass

    def recording(self, *args, **kwargs):
        bounds = for_pass(self, *args, **kwargs)
        used.append(bounds is not None)
        return bounds

    lloyd_module.RowBounds.for_pass = recording
    for key, value in knobs.items():
        setattr(lloyd_module, key, value)
    try:
        yield used
    finally:
        lloyd_module.RowBounds.for_pass = for_pass
        for key, value in saved.items():
            setattr(lloyd_module, key, value)


def fit(x: np.ndarray, centers: np.ndarray, iterations: int) -> tuple[float, np.ndarray]:
    """Seconds of a fit of ``iterations`` iterations from ``centers``, and its centres."""
    started = time.perf_counter()
    km = dkmeans.KMeans(len(centers), init=centers, n_init=1, max_iter=iterations, tol=0)
    km.fit(x)
    return time.perf_counter() - started, km.cluster_centers_


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Time every mode on one case."""
    shape, kind = case.split(":")
    n, d, k = (int(v) for v in shape.split("x"))
    x = make_data(n, d, k, "float32") if kind == "blobs" else make_noise(n, d, "float32")
    centers = initial_centers(x, k)
    a, b = args.iterations
    per_iteration: dict[str, list[float]] = {m: [] for m in args.modes}
    used: dict[str, list[bool]] = {}
    finals: dict[str, np.ndarray] = {}
    with mode("auto"):
        fit(x, centers, 1)  # compiles, warms the caches
    for _ in range(args.repeats):
        for name in args.modes:
            with mode(name) as passes:
                short, _ = fit(x, centers, a)
                passes.clear()
                long, finals[name] = fit(x, centers, b)
            per_iteration[name].append((long - short) / (b - a))
            used[name] = list(passes)
    medians = {m: statistics.median(v) for m, v in per_iteration.items()}
    first = finals[args.modes[0]]
    result = {
        "case": case,
        "seconds_per_iteration": medians,
        "all_seconds": per_iteration,
        "passes_with_bounds": used,
        "same_centers": {m: bool(np.array_equal(c, first)) for m, c in finals.items()},
    }
    if "none" in medians:
        result["ratio_to_none"] = {m: v / medians["none"] for m, v in medians.items()}
    print(json.dumps({key: result[key] for key in ("case", "seconds_per_iteration")}))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="NxDxK:blobs|noise (repeatable)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--iterations", nargs=2, type=int, default=(4, 10), metavar=("A", "B"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "group_bounds.json"))
    args = parser.parse_args(argv)
    results = [run_case(case, args) for case in args.case or CASES]
    report = {
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "iterations": list(args.iterations),
        "results": results,
    }
    with open(args.out, "w") as out:
        json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
