"""Lloyd passes without bounds, with Hamerly's and with Yinyang's group bounds.

For every case (rows x features, k, data kind) the data is made in memory (float32), and
Lloyd's centres from shared initial centres are computed once by full passes
(``--iterations`` of them). Then, step by step along those centres, every mode makes its
pass, the modes alternating within each step, in one process: the time per iteration of
a mode is its mean pass time over the steps after the first two (once its bounds are
made and have seen the centres move). Modes (the knobs of :mod:`dkmeans.lloyd`):

- ``none``: every pass a full pass (no bounds kept);
- ``hamerly``: Hamerly's bounds at every k;
- ``yinyang``: Yinyang's group bounds at every k (Hamerly's where a run has too few
  centres for ``MIN_GROUPS`` groups);
- ``auto``: as shipped (group bounds from ``GROUP_BOUNDS_MIN_CENTERS`` centres).

Each mode still decides per pass, from its prediction of the rows it would skip, whether
to use its bounds; the passes that did are reported, and whether every mode's statistics
equal the full pass's.

    python -m benchmarks.group_bounds                    # the issue's shapes
    python -m benchmarks.group_bounds --case 100000x64x1024:noise --iterations 6

Results go to ``benchmarks/results/group_bounds.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator

import numpy as np

from dkmeans import lloyd as lloyd_module
from dkmeans.io import numpy_row_chunks
from dkmeans.kernels import pass_statistics
from dkmeans.lloyd import updated_centers
from dkmeans.resources import limit_blas, local_threads
from dkmeans.sources import InMemorySource

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


KNOBS = {
    "none": {"BOUNDS_MIN_WORK": float("inf")},
    "hamerly": {"GROUP_BOUNDS_MIN_CENTERS": float("inf")},
    "yinyang": {"GROUP_BOUNDS_MIN_CENTERS": 0},
    "auto": {},
}


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """Set the knobs of :mod:`dkmeans.lloyd` for a mode."""
    saved = {key: getattr(lloyd_module, key) for key in KNOBS[name]}
    for key, value in KNOBS[name].items():
        setattr(lloyd_module, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(lloyd_module, key, value)


def centre_path(source: InMemorySource, centers: np.ndarray, steps: int) -> list[np.ndarray]:
    """The centres of ``steps`` Lloyd iterations from ``centers``, by full passes."""
    path, bounds = [centers], np.array([0, len(centers)])
    for _ in range(steps - 1):
        stats = source.map_reduce(pass_statistics, path[-1], bounds)
        path.append(updated_centers(path[-1], stats.sums, stats.counts, stats.far[0]))
    return path


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Time every mode's passes along the same centres."""
    shape, kind = case.split(":")
    n, d, k = (int(v) for v in shape.split("x"))
    x = make_data(n, d, k, "float32") if kind == "blobs" else make_noise(n, d, "float32")
    source = InMemorySource.of_array(
        x, chunks=numpy_row_chunks(n, d * x.itemsize), threads=local_threads()
    )
    bounds = np.array([0, k])
    with limit_blas():
        path = centre_path(source, initial_centers(x, k), args.iterations)
        row_bounds = {}
        for name in args.modes:
            with mode(name):
                row_bounds[name] = lloyd_module.RowBounds(source, [path[0]])
        seconds = {name: [] for name in args.modes}
        used = {name: [] for name in args.modes}
        same = {name: True for name in args.modes}
        for centers in path:
            full = None
            for name in args.modes:
                with mode(name):
                    distance_bounds = row_bounds[name].for_pass([0], centers, bounds)
                    started = time.perf_counter()
                    stats = source.map_reduce(
                        pass_statistics, centers, bounds, distance_bounds=distance_bounds
                    )
                    seconds[name].append(time.perf_counter() - started)
                used[name].append(distance_bounds is not None)
                full = stats if full is None else full
                same[name] &= bool(np.array_equal(stats.counts, full.counts))
    per_iteration = {name: float(np.mean(v[2:])) for name, v in seconds.items()}
    result = {
        "case": case,
        "groups": {name: row_bounds[name].groups_per_run for name in args.modes},
        "seconds_per_iteration": per_iteration,
        "ratio_to_first_mode": {
            name: v / per_iteration[args.modes[0]] for name, v in per_iteration.items()
        },
        "seconds_per_pass": seconds,
        "passes_with_bounds": used,
        "same_counts_as_first_mode": same,
    }
    print(json.dumps({key: result[key] for key in ("case", "ratio_to_first_mode")}))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="NxDxK:blobs|noise (repeatable)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS / "group_bounds.json"))
    args = parser.parse_args(argv)
    results = [run_case(case, args) for case in args.case or CASES]
    report = {
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "iterations": args.iterations,
        "results": results,
    }
    with open(args.out, "w") as out:
        json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
