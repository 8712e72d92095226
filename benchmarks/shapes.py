"""dkmeans at every shape, against scikit-learn, scikit-learn-intelex and faiss-cpu.

The grid (issue 20): n x d float32 rows and k centres, (1M, 2, 8), (2M, 32, 16),
(4M, 32, 64), (500k, 64, 1024), (200k, 768, 256) and (1M, 128, 4096), each on Gaussian
blobs (k unit-variance clusters, :func:`benchmarks.measures.make_data`) and on
structureless standard Gaussian noise, where distance bounds prune little (``--data
embeddings``: unit rows like embeddings, clustered with ``metric="cosine"`` by dkmeans and
with ``spherical=True`` by faiss, the inertia then being ``sum(1 - cos)``; see
:mod:`benchmarks.cosine_faiss`). The peers:

- ``dkmeans``: NumPy X in memory; ``dkmeans streamed``: the same X as an uncompressed Zarr
  store read at every pass (``persist=False``), the only one that never holds X;
- ``scikit-learn``: ``KMeans(algorithm="lloyd", n_init=1)``;
- ``scikit-learn-intelex``: ``sklearnex.cluster.KMeans`` (the notes say whether it ran
  oneDAL's code or fell back to scikit-learn's);
- ``faiss-cpu``: ``faiss.Kmeans`` with ``max_points_per_centroid`` above n / k, so that
  every row takes part (by default faiss trains on 256 rows per centre).

Every fit runs in a fresh process (:mod:`benchmarks.fit_process`) with every thread pool
(Dask, BLAS, OpenMP, oneDAL's TBB) limited to ``--threads`` (2), so that its peak resident
set (Linux's ``VmHWM``; X in memory included, except for the streamed column) is its own. The
processes take turns: repeat after repeat, every library once, so that load from other
processes on the machine spreads over all of them; medians are reported. Measured:

1. **Time per iteration** from the same initial centres (k distinct random rows), with
   ``tol=0``: each library fits with ``a = 2`` and ``b`` iterations (after a one-iteration
   warm-up in the same process) and ``(t_b - t_a) / (n_b - n_a)``, where ``n_a`` and
   ``n_b`` are the iterations it says it ran: this removes what a fit costs once. ``b``
   grows as the shape shrinks (``2 + clip(4e11 / (n d k), 2, 18)``) to keep the fits short
   at large k. Each library but faiss stops early on its own rule, even at ``tol=0``:
   scikit-learn and scikit-learn-intelex when no label changes (measured: both honour
   ``tol=0`` otherwise), dkmeans when the centres stop moving; so ``n_b`` can be below ``b``
   on blobs. faiss runs with ``early_stop_threshold=-1`` (no early stop) from the shared
   centres.
2. **Whole default fits**: each library's own initialisation (dkmeans k-means||,
   scikit-learn k-means++ with ``n_init=1``, scikit-learn-intelex's default, faiss's random
   rows), at most 20 iterations, its default tolerance, seed = the repeat's number;
   wall time after a warm-up whole fit on the first rows (enough of them for dkmeans to
   seed by k-means||, :func:`benchmarks.fit_process.warm_up_rows`: a process's first
   k-means|| loads its compiled loops from numba's cache), and the final inertia
   recomputed here by brute force in float64 from the centres (never a library's figure).
3. **Peak RSS** of the whole-fit processes (the largest over the repeats).
4. **Ratios** of dkmeans to the best peer (fastest; lowest inertia for the inertia), and
   of the streamed column to dkmeans in memory.

Before a shape is timed, dkmeans fits a tenth of its rows once in both modes, untimed,
so that numba's cache holds every loop the timed fits compile (a stale cache after an
edit of ``dkmeans/loops.py`` once put 2 s of compiling into a marginal measurement).

    python -m benchmarks.shapes                                  # the whole grid
    python -m benchmarks.shapes --shapes 1M-2-8,2M-32-16 --scale 0.01 --repeats 1

``--shapes`` takes any n-d-k (``k`` and ``M`` suffixes for n); ``--scale`` multiplies n
(a smoke run); ``--libraries dkmeans,"dkmeans streamed"`` and ``--modes marginal`` skip
the rest (the peers' whole fits at large k take hours on 2 cores). The data lives in a
scratch folder (``--scratch``, default the system's temporary folder) as ``.npy`` and Zarr
while its shape runs. Results:
``benchmarks/results/shapes.json`` (rewritten after every shape, every fit's record in it),
``shapes.png`` and Markdown tables on stdout, ready for the README.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from dkmeans.blobs import CHUNK_BYTES, CODECS

from .fit_process import COSINE, LIBRARIES, MODULES, Mode, Spec, run_in_process
from .measures import (
    RESULTS,
    brute_force_cosine_objective,
    brute_force_inertia,
    initial_centers,
    make_data,
    make_embeddings,
    make_noise,
    versions,
)

#: The data kinds of the grid.
DATA = ("blobs", "noise")
#: The metric of each data kind that is not Euclidean (``embeddings``: issue 21's cosine
#: benchmark, :mod:`benchmarks.cosine_faiss`, run by the libraries in ``COSINE``).
METRICS = {"embeddings": "cosine"}
#: What a run measures: time per iteration from a shared start, or whole default fits.
MODES = get_args(Mode)
#: Iterations of a whole default fit.
DEFAULT_MAX_ITER = 20
#: First iteration count of the marginal time, and the bounds of the span after it.
FIRST_ITERATIONS, SPAN = 2, (2, 18)
#: Flops-like work (n * d * k) that the span of the marginal time should cover.
SPAN_WORK = 4e11
SUFFIXES = {"k": 1_000, "M": 1_000_000}
PEERS = ("scikit-learn", "scikit-learn-intelex", "faiss-cpu")
#: The share of a shape's rows on which dkmeans fills numba's cache before it is timed.
WARM_CACHE_SCALE = 0.1
#: Packages whose versions the results record.
PACKAGES = ("dkmeans", "numpy", "scikit-learn", "scikit-learn-intelex", "faiss-cpu", "numba",
            "dask", "zarr")  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """n rows of d float32 features, clustered into k."""

    n: int
    d: int
    k: int

    @property
    def name(self) -> str:
        return f"{short(self.n)}-{self.d}-{self.k}"

    @property
    def title(self) -> str:
        return f"{short(self.n)} × {self.d}, k = {self.k:,}"

    def marginal_iterations(self) -> tuple[int, int]:
        """(a, b): fewer iterations apart at large n d k (one iteration costs 2 n d k flops)."""
        span = int(np.clip(SPAN_WORK / (self.n * self.d * self.k), *SPAN))
        return FIRST_ITERATIONS, FIRST_ITERATIONS + span

    def scaled(self, scale: float) -> Shape:
        return Shape(max(1, round(self.n * scale)), self.d, self.k)


GRID = (
    Shape(1_000_000, 2, 8),
    Shape(2_000_000, 32, 16),
    Shape(4_000_000, 32, 64),
    Shape(500_000, 64, 1024),
    Shape(200_000, 768, 256),
    Shape(1_000_000, 128, 4096),
)


def short(n: int) -> str:
    """1000000 -> "1M", 500000 -> "500k"."""
    for suffix, size in reversed(SUFFIXES.items()):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def parse_shape(text: str) -> Shape:
    """``"500k-64-1024"`` -> Shape(500000, 64, 1024)."""
    parts = text.strip().split("-")
    try:
        n, d, k = (int(p[:-1]) * SUFFIXES[p[-1]] if p[-1] in SUFFIXES else int(p) for p in parts)
    except (ValueError, IndexError):
        message = f"not a shape n-d-k such as 500k-64-1024: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if min(n, d, k) < 1:
        raise argparse.ArgumentTypeError(f"n, d and k must be positive: {text!r}")
    return Shape(n, d, k)


@dataclass
class Run:
    """One process: one library's fits of one shape and data kind."""

    shape: str
    n: int
    d: int
    k: int
    data: str
    library: str
    mode: Mode
    repeat: int
    iterations: list[int]
    seconds: list[float] = field(default_factory=list)
    n_iter: list[int] = field(default_factory=list)
    rss_after_load_mib: float | None = None
    peak_rss_mib: float | None = None
    inertia: float | None = None  # brute force from the last fit's centres (marginal: repeat 0)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def seconds_per_iter(self) -> float | None:
        """Marginal: (t_b - t_a) / (n_b - n_a), None when the library ran no more iterations."""
        extra = self.n_iter[1] - self.n_iter[0] if len(self.n_iter) == 2 else 0
        return (self.seconds[1] - self.seconds[0]) / extra if extra > 0 else None


@dataclass(frozen=True)
class Files:
    """One data set on disk, as every fit process reads it."""

    data: Path
    store: Path
    centers: Path
    out: Path


#: How each data kind is made, float32.
MAKERS: dict[str, Callable[[Shape], np.ndarray]] = {
    "blobs": lambda shape: make_data(shape.n, shape.d, shape.k, "float32"),
    "noise": lambda shape: make_noise(shape.n, shape.d, "float32"),
    "embeddings": lambda shape: make_embeddings(shape.n, shape.d, shape.k),
}


def write_data(shape: Shape, kind: str, folder: Path) -> Files:
    """X (``.npy`` and an uncompressed Zarr store, ~32 MiB chunks) and its initial centres."""
    x = MAKERS[kind](shape)
    files = Files(folder / "x.npy", folder / "x.zarr", folder / "centers.npy", folder / "out.npy")
    np.save(files.data, x)
    rows = max(1, CHUNK_BYTES // (4 * shape.d))
    store = zarr.create_array(
        store=str(files.store), shape=x.shape, chunks=(rows, shape.d), dtype=x.dtype,
        compressors=CODECS["none"], overwrite=True,
    )  # fmt: skip
    store[:] = x
    np.save(files.centers, initial_centers(x, shape.k))
    return files


def run_fit(run: Run, files: Files, threads: int, timeout: float | None) -> None:
    """Run one fit process and fill ``run`` with what it reports (or its error); a process
    still running after ``timeout`` seconds is killed."""
    spec = Spec(
        library=run.library, mode=run.mode, data=str(files.data), store=str(files.store),
        centers=str(files.centers), out=str(files.out), iterations=tuple(run.iterations),
        seed=run.repeat, threads=threads, metric=METRICS.get(run.data, "euclidean"),
    )  # fmt: skip
    report, run.error = run_in_process(spec, timeout)
    if report is None:
        return
    for name, value in report.items():
        setattr(run, name, value)
    if run.mode == "marginal" and run.repeat > 0:
        return  # the first repeat's inertia checks that the peers ran the same iterations
    objective = brute_force_cosine_objective if spec.metric == "cosine" else brute_force_inertia
    with threadpool_limits(threads):
        run.inertia = objective(np.load(files.data, mmap_mode="r"), np.load(files.out))


def run_case(
    shape: Shape, kind: str, libraries: list[str], args: argparse.Namespace, folder: Path
) -> list[Run]:
    """Every mode, repeat and library on one shape and data kind (only the libraries with a
    cosine k-means where the kind's metric is cosine)."""
    if kind in METRICS:
        libraries = [library for library in libraries if library in COSINE]
    iterations = {"marginal": list(shape.marginal_iterations()), "default": [DEFAULT_MAX_ITER]}
    plan: list[tuple[Mode, list[int]]] = [(mode, iterations[mode]) for mode in args.modes]
    warm_cache(shape, kind, plan, args, folder)
    files = write_data(shape, kind, folder)
    runs = []
    for mode, iterations in plan:
        for repeat in range(args.repeats):
            for library in libraries:
                run = Run(shape.name, shape.n, shape.d, shape.k, kind, library, mode, repeat,
                          iterations)  # fmt: skip
                run_fit(run, files, args.threads, args.timeout)
                print(describe(run), flush=True)
                runs.append(run)
    return runs


def warm_cache(
    shape: Shape,
    kind: str,
    plan: list[tuple[Mode, list[int]]],
    args: argparse.Namespace,
    folder: Path,
) -> None:
    """Fit dkmeans (in memory and streamed) once in every mode on a tenth of the rows,
    untimed: numba compiles a loop's specialisations into its on-disk cache when a fit
    first needs them (bounded passes only from the second iteration on, after the fit
    processes' one-iteration warm-up), and seconds of compiling must not count as
    iterations."""
    files = write_data(shape.scaled(WARM_CACHE_SCALE), kind, folder)
    for mode, iterations in plan:
        for library in ("dkmeans", "dkmeans streamed"):
            run = Run(shape.name, shape.n, shape.d, shape.k, kind, library, mode, 0, iterations)
            run_fit(run, files, args.threads, args.timeout)


def describe(run: Run) -> str:
    """One line of progress."""
    head = f"  {run.shape} {run.data} {run.library} {run.mode} #{run.repeat}:"
    if run.error:
        return f"{head} failed: {run.error}"
    if run.mode == "marginal":
        per_iter = run.seconds_per_iter
        timing = "no extra iteration" if per_iter is None else f"{1e3 * per_iter:.1f} ms/iter"
    else:
        timing = f"{run.seconds[0]:.2f} s"
    return (
        f"{head} {timing}, n_iter {run.n_iter}, peak RSS {run.peak_rss_mib:.0f} MiB, "
        f"inertia {cell(run.inertia, '{:.7g}')}"
    )


@dataclass
class Summary:
    """Medians of one library on one shape and data kind (None: no successful run)."""

    shape: str
    data: str
    library: str
    ms_per_iter: float | None
    marginal_n_iter: int | None  # n_b of the last marginal run
    fit_seconds: float | None
    fit_n_iter: int | None
    fit_inertia: float | None
    peak_rss_mib: float | None  # largest over the whole-fit processes
    data_mib: float
    errors: list[str]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[Run]) -> list[Summary]:
    """One summary per (shape, data kind, library), in the order they ran."""
    keys = list(dict.fromkeys((r.shape, r.data, r.library) for r in runs))
    summaries = []
    for key in keys:
        tried = [r for r in runs if (r.shape, r.data, r.library) == key]
        mine = [r for r in tried if r.error is None]
        marginal = [r for r in mine if r.mode == "marginal"]
        default = [r for r in mine if r.mode == "default"]
        per_iter = [r.seconds_per_iter for r in marginal if r.seconds_per_iter is not None]
        summaries.append(
            Summary(
                *key,
                ms_per_iter=None if not per_iter else 1e3 * statistics.median(per_iter),
                marginal_n_iter=marginal[-1].n_iter[-1] if marginal else None,
                fit_seconds=median([r.seconds[0] for r in default]),
                fit_n_iter=median([r.n_iter[0] for r in default]),
                fit_inertia=median([r.inertia for r in default]),
                peak_rss_mib=max((r.peak_rss_mib for r in default), default=None),
                data_mib=tried[0].n * tried[0].d * 4 / 2**20,
                errors=sorted({r.error for r in tried if r.error}),
            )
        )
    return summaries


def ratio(mine: float | None, others: list[float | None]) -> float | None:
    """``mine`` over the least of ``others`` (None where either is missing)."""
    known = [o for o in others if o is not None]
    return None if mine is None or not known else mine / min(known)


def cell(value: float | None, form: str = "{:.3g}") -> str:
    return "–" if value is None else form.format(value)


Case = tuple[str, str]  # (shape name, data kind)


def markdown_tables(summaries: list[Summary], libraries: list[str]) -> str:
    """Three tables, a row per shape and data kind: time per iteration, whole default fits
    (with the inertia ratio), peak RSS."""
    table = {(s.shape, s.data, s.library): s for s in summaries}
    cases = list(dict.fromkeys((s.shape, s.data) for s in summaries))
    peers = [p for p in libraries if p in PEERS]

    def value(case: Case, library: str, name: str) -> float | None:
        summary = table.get((*case, library))
        return None if summary is None else getattr(summary, name)

    def versus_peers(name: str, form: str) -> Callable[[Case], str]:
        return lambda case: cell(
            ratio(value(case, "dkmeans", name), [value(case, p, name) for p in peers]), form
        )

    def streamed(case: Case) -> str:
        in_memory = value(case, "dkmeans", "ms_per_iter")
        return cell(ratio(value(case, "dkmeans streamed", "ms_per_iter"), [in_memory]), "{:.2f}")

    def data_mib(case: Case) -> str:
        return f"{next(s.data_mib for s in summaries if (s.shape, s.data) == case):,.0f}"

    sections: list[tuple[str, str, str, dict[str, Callable[[Case], str]]]] = [
        ("Time per iteration (ms), same initial centres", "ms_per_iter", "{:.3g}",
         {"dkmeans / best peer": versus_peers("ms_per_iter", "{:.2f}"),
          "streamed / in memory": streamed}),
        (f"Whole default fit (s), at most {DEFAULT_MAX_ITER} iterations", "fit_seconds", "{:.3g}",
         {"dkmeans / best peer": versus_peers("fit_seconds", "{:.2f}"),
          "inertia: dkmeans / best peer": versus_peers("fit_inertia", "{:.4f}")}),
        ("Peak resident set of a whole fit (MiB, X in memory included)", "peak_rss_mib",
         "{:,.0f}", {"X (MiB)": data_mib}),
    ]  # fmt: skip
    lines = []
    for title, name, form, extra in sections:
        lines += [
            f"{title}:",
            "| shape | data | " + " | ".join([*libraries, *extra]) + " |",
            "|---|---|" + "---:|" * (len(libraries) + len(extra)),
        ]
        for case in cases:
            cells = [cell(value(case, lib, name), form) for lib in libraries]
            cells += [show(case) for show in extra.values()]
            lines.append(f"| {parse_shape(case[0]).title} | {case[1]} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def plot(summaries: list[Summary], libraries: list[str], path: Path) -> None:
    """Grouped bars per case: ms per iteration, whole-fit seconds, peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((s.shape, s.data) for s in summaries))
    table = {(s.shape, s.data, s.library): s for s in summaries}
    panels = [("ms_per_iter", "ms per iteration (same start)"),
              ("fit_seconds", f"whole default fit, s (≤ {DEFAULT_MAX_ITER} iterations)"),
              ("peak_rss_mib", "peak RSS of a whole fit, MiB")]  # fmt: skip
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.4 * len(cases)), 12), sharex=True)
    width = 0.8 / len(libraries)
    positions = np.arange(len(cases))
    for ax, (name, label) in zip(axes, panels, strict=True):
        for j, library in enumerate(libraries):
            values = [
                getattr(table[case + (library,)], name) or np.nan
                if case + (library,) in table else np.nan
                for case in cases
            ]  # fmt: skip
            ax.bar(positions + j * width, values, width, label=library)
        ax.set_yscale("log")
        ax.set_ylabel(label)
    axes[0].legend(fontsize="small")
    axes[-1].set_xticks(positions + 0.4 - width / 2, [f"{s}\n{d}" for s, d in cases])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def installed_libraries() -> tuple[list[str], list[str]]:
    """The libraries that can run here, and a note for each that cannot."""
    present, notes = [], []
    for library in LIBRARIES:
        module = MODULES.get(library)
        if module is None or importlib.util.find_spec(module) is not None:
            present.append(library)
        else:
            notes.append(f"{library} skipped: not installed (pip install '.[bench]')")
    return present, notes


def choices(
    parser: argparse.ArgumentParser, flag: str, text: str, allowed: Sequence[str]
) -> list[str]:
    """The comma-separated names of ``text``, each one of ``allowed`` (else a usage error)."""
    names = [name.strip() for name in text.split(",")]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Shapes of the grid: " + ", ".join(s.name for s in GRID),
    )  # fmt: skip
    parser.add_argument("--shapes", default=",".join(s.name for s in GRID),
                        help="comma-separated n-d-k (default: the grid)")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of n (smoke runs)")
    parser.add_argument("--data", default=",".join(DATA),
                        help=f"comma-separated kinds of {', '.join(MAKERS)}")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads of every library")
    parser.add_argument("--out", type=Path, default=RESULTS / "shapes.json",
                        help="JSON file; the chart goes beside it (.png)")  # fmt: skip
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the data")
    parser.add_argument("--libraries", default=None,
                        help=f"comma-separated subset of {', '.join(LIBRARIES)}")  # fmt: skip
    parser.add_argument("--modes", default=",".join(MODES),
                        help="marginal (time per iteration), default (whole fits)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=None,
                        help="kill a fit process after this many seconds")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        args.shapes = [parse_shape(s).scaled(args.scale) for s in args.shapes.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    args.data = choices(parser, "--data", args.data, MAKERS)
    args.modes = choices(parser, "--modes", args.modes, MODES)
    if args.libraries is not None:
        args.libraries = choices(parser, "--libraries", args.libraries, LIBRARIES)
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], not {args.scale}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be positive, not {args.timeout}")
    too_small = [s for s in args.shapes if s.n < 2 * s.k]
    if too_small:
        parser.error(
            "fewer than 2 rows per centre: " + ", ".join(f"{s.n:,} rows for k = {s.k}"
                                                          for s in too_small)
            + " (raise --scale)"
        )  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    libraries, notes = installed_libraries()
    if args.libraries is not None:
        libraries = [library for library in libraries if library in args.libraries]
    for note in notes:
        print(note)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.shapes", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(PACKAGES),
        "threads": args.threads,
        "scale": args.scale,
        "repeats": args.repeats,
        "notes": notes,
    }
    runs: list[Run] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for shape in args.shapes:
        for kind in args.data:
            with tempfile.TemporaryDirectory(prefix="dkmeans-shapes-", dir=args.scratch) as tmp:
                runs += run_case(shape, kind, libraries, args, Path(tmp))
            summaries = summarise(runs)
            record |= {"seconds": time.perf_counter() - started,
                       "summaries": [asdict(s) for s in summaries],
                       "runs": [asdict(r) for r in runs]}  # fmt: skip
            args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("\n" + markdown_tables(summaries, libraries))
    plot(summaries, libraries, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')} "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
