"""One library's fits of one data set, in a fresh process (``benchmarks.shapes`` runs it).

    python -m benchmarks.fit_process SPEC_JSON

``SPEC_JSON`` is a :class:`Spec` as JSON. The process limits every thread pool the
library uses to ``threads``, loads X (float32, from ``.npy``; streamed dkmeans opens the
Zarr copy instead and never holds X), warms up (imports, numba's cache, first touch of
memory), runs the fits, writes the last fit's centres to ``out`` and prints one JSON
object: seconds and iterations of each fit, the resident set after loading X and its peak
over the whole process (Linux's ``VmHWM``), and notes (e.g. whether scikit-learn-intelex ran
its own code or fell back to scikit-learn's).

Modes:

- ``marginal``: a fit of one iteration (the warm-up), then fits of ``a`` and ``b``
  iterations, all from the shared initial centres with ``tol=0``;
- ``default``: a warm-up whole fit on the first rows (:func:`warm_up_rows`: enough for
  dkmeans to seed them by k-means||, as it seeds X), then one whole fit with the
  library's own initialisation and ``max_iter = iterations[0]``, seeded with ``seed``.
  A warm-up of one iteration on a few thousand rows, as before, left numba's loading of
  k-means||'s and Lloyd's bounds' compiled loops (a process's first such fit pays it
  once) in dkmeans's timed fit.

Iterations are counted as each library counts them: ``n_iter_`` of the scikit-learn-like
estimators, the length of ``iteration_stats`` for faiss. From the shared centres faiss runs
with ``early_stop_threshold=-1`` (where the installed faiss has it), its counterpart of
``tol=0``: otherwise it stops once its objective is unchanged, whatever ``niter`` says.

``metric`` is ``"euclidean"`` or ``"cosine"`` (issue 21: dkmeans's ``metric="cosine"``,
faiss's ``spherical=True``; the scikit-learn-like libraries have no cosine k-means).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

Mode = Literal["marginal", "default"]
#: Environment variables that size the thread pools of OpenMP, OpenBLAS, MKL and TBB users.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Rows of the warm-up before a whole default fit, per centre.
WARM_UP_ROWS_PER_CENTER = 4
#: ``dkmeans.seeding.SMALL_DATA_VALUES`` (not imported: peers' processes never load dkmeans).
DKMEANS_SMALL_DATA_VALUES = 2**20
#: The folder the fit processes run in (``benchmarks`` must be importable from it).
REPOSITORY = Path(__file__).parent.parent


@dataclass(frozen=True)
class Spec:
    """What one process runs."""

    library: str
    mode: Mode
    data: str  # .npy file of X
    store: str  # the same X as a Zarr array
    centers: str  # .npy file of the shared initial centres
    out: str  # .npy file that receives the last fit's centres
    iterations: tuple[int, ...]  # marginal: (a, b); default: (max_iter,)
    seed: int
    threads: int
    metric: str = "euclidean"


class Fitted(NamedTuple):
    """A fit's final centres and the iterations the library says it ran."""

    centers: np.ndarray
    n_iter: int


#: (X or store path, k, initial centres or None for the library's own, max_iter, seed)
Fit = Callable[[Any, int, "np.ndarray | None", int, int], Fitted]


def shared_start(init: np.ndarray | None) -> dict[str, Any]:
    """Parameters of a fit from given centres with no tolerance (the library's defaults
    when ``init`` is None)."""
    return {} if init is None else {"init": init, "tol": 0.0}


def fit_dkmeans(threads: int, metric: str, *, streamed: bool) -> Fit:
    import dask

    import dkmeans

    def fit(x: Any, k: int, init: np.ndarray | None, max_iter: int, seed: int) -> Fitted:
        persist = {"persist": False} if streamed else {}
        km = dkmeans.KMeans(
            k, max_iter=max_iter, random_state=seed, metric=metric, **persist,
            **shared_start(init),
        )  # fmt: skip
        km.fit(x)
        return Fitted(km.cluster_centers_, km.n_iter_)

    dask.config.set(num_workers=threads)
    return fit


def fit_sklearn(estimator: type) -> Fit:
    def fit(x: Any, k: int, init: np.ndarray | None, max_iter: int, seed: int) -> Fitted:
        km = estimator(
            k, algorithm="lloyd", n_init=1, max_iter=max_iter, random_state=seed,
            **shared_start(init),
        )  # fmt: skip
        km.fit(x)
        return Fitted(km.cluster_centers_, km.n_iter_)

    return fit


def fit_faiss(threads: int, metric: str) -> Fit:
    import faiss

    faiss.omp_set_num_threads(threads)
    never_stop = hasattr(faiss.ClusteringParameters(), "early_stop_threshold")

    def fit(x: Any, k: int, init: np.ndarray | None, max_iter: int, seed: int) -> Fitted:
        # every row takes part: faiss otherwise trains on a sample of 256 rows per centre
        shared = {"early_stop_threshold": -1.0} if init is not None and never_stop else {}
        km = faiss.Kmeans(
            x.shape[1], k, niter=max_iter, seed=seed, max_points_per_centroid=len(x) // k + 1,
            spherical=metric == "cosine", **shared,
        )  # fmt: skip
        km.train(x, init_centroids=None if init is None else init.astype(np.float32))
        return Fitted(km.centroids, len(km.iteration_stats))

    return fit


def fit_sklearnex(threads: int, metric: str) -> Fit:
    import daal4py
    from sklearnex.cluster import KMeans

    daal4py.daalinit(threads)  # oneDAL's threads (TBB); OpenMP and BLAS follow the environment
    return fit_sklearn(KMeans)


def fit_scikit_learn(threads: int, metric: str) -> Fit:
    from sklearn.cluster import KMeans

    return fit_sklearn(KMeans)


#: The libraries, and how each is set up (imports, thread pools) for a number of threads
#: and a metric.
LIBRARIES: dict[str, Callable[[int, str], Fit]] = {
    "dkmeans": lambda threads, metric: fit_dkmeans(threads, metric, streamed=False),
    "dkmeans streamed": lambda threads, metric: fit_dkmeans(threads, metric, streamed=True),
    "scikit-learn": fit_scikit_learn,
    "scikit-learn-intelex": fit_sklearnex,
    "faiss-cpu": fit_faiss,
}
#: The module each library beyond the core dependencies is imported as.
MODULES = {"scikit-learn-intelex": "sklearnex", "faiss-cpu": "faiss"}
#: The libraries with a cosine (spherical) k-means.
COSINE = ("dkmeans", "dkmeans streamed", "faiss-cpu")


class Notes(logging.Handler):
    """Collects what scikit-learn-intelex logs about the code it ran."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.add(record.getMessage().strip())


def memory_mib(field: Literal["VmRSS", "VmHWM"]) -> float:
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``), MiB, from Linux's
    ``/proc/self/status``: ``getrusage``'s peak would count the parent's before ``exec``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def warm_up_rows(n_clusters: int, n_features: int) -> int:
    """Rows of the warm-up before a whole default fit: at least 1,000 and 4 per centre, and
    more values than dkmeans seeds by k-means++ on all rows, so that its warm-up runs the
    code of the timed fit."""
    small_data_rows = DKMEANS_SMALL_DATA_VALUES // n_features + 1
    return max(WARM_UP_ROWS_PER_CENTER * n_clusters, 1_000, small_data_rows)


def timed(fit: Fit, *args: Any) -> tuple[float, Fitted]:
    started = time.perf_counter()
    fitted = fit(*args)
    return time.perf_counter() - started, fitted


def run(spec: Spec) -> dict[str, Any]:
    """Run the spec's fits; what :func:`main` prints."""
    import zarr
    from threadpoolctl import threadpool_limits

    if spec.metric == "cosine" and spec.library not in COSINE:
        raise ValueError(f"{spec.library} has no cosine k-means; choose from {COSINE}")
    notes = Notes()
    logging.getLogger("sklearnex").addHandler(notes)
    logging.getLogger("sklearnex").setLevel(logging.INFO)
    fit = LIBRARIES[spec.library](spec.threads, spec.metric)
    streamed = spec.library == "dkmeans streamed"
    data = spec.store if streamed else np.load(spec.data)
    centers = np.load(spec.centers)
    after_load = memory_mib("VmRSS")
    k = len(centers)
    with threadpool_limits(spec.threads):
        if spec.mode == "marginal":
            timed(fit, data, k, centers, 1, spec.seed)
            fits = [timed(fit, data, k, centers, m, spec.seed) for m in spec.iterations]
        else:
            rows = warm_up_rows(k, centers.shape[1])
            head = zarr.open_array(spec.store, mode="r")[:rows] if streamed else data[:rows]
            timed(fit, head, k, None, spec.iterations[0], spec.seed)
            fits = [timed(fit, data, k, None, spec.iterations[0], spec.seed)]
    np.save(spec.out, np.asarray(fits[-1][1].centers, dtype=np.float64))
    return {
        "seconds": [seconds for seconds, _ in fits],
        "n_iter": [int(fitted.n_iter) for _, fitted in fits],
        "rss_after_load_mib": after_load,
        "peak_rss_mib": memory_mib("VmHWM"),
        "notes": sorted(notes.messages),
    }


def main() -> None:
    fields = json.loads(sys.argv[1])
    spec = Spec(**{**fields, "iterations": tuple(fields["iterations"])})
    print(json.dumps(run(spec)))


def environment(threads: int) -> dict[str, str]:
    """The environment of a fit process: every thread pool sized ``threads`` from the start."""
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}


def run_in_process(spec: Spec, timeout: float | None) -> tuple[dict[str, Any] | None, str | None]:
    """Run ``spec`` in a fresh process (every thread pool sized ``spec.threads``):
    ``(report, None)``, or ``(None, error)`` when it failed or ran past ``timeout`` seconds
    (then it is killed)."""
    command = [sys.executable, "-m", "benchmarks.fit_process", json.dumps(asdict(spec))]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=environment(spec.threads),
            cwd=REPOSITORY, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"killed after {timeout:g} s (--timeout)"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return None, lines[-1]
    return json.loads(done.stdout.strip().splitlines()[-1]), None


if __name__ == "__main__":
    main()
