"""Initial centres: ``"random"``, greedy ``"k-means++"`` and scalable ``"k-means||"``.

All three run over a :class:`~dkmeans.sources.Source`, so the same code seeds a
terabyte Dask array and the few thousand weighted candidates of k-means||.

Passes over the data (each one ``compute``):

- ``random``: 1 (the rows with the smallest keys ``Exp(1)/w``).
- ``k-means++``: ``k + 1``: the first centre, then one pass per further centre
  that scores the current trial centres and draws the next ones.
- ``k-means||``: ``init_rounds + 2`` at most: the first centre, one pass per round
  (the round's cost and its draws share the pass), one pass weighting the candidates.
  A run draws no further round once its last one lowered the potential by less than
  ``init_tol`` (:data:`INIT_TOL`).
  Runs of ``n_init`` share all of them, and a pass measures each row only against
  the candidates drawn since the last one when the rows can remember their nearest.
  Data with many rows per centre takes 1 pass instead: it gathers a uniform sample
  of ``rows_per_center`` rows per centre (:data:`SEEDING_ROWS_PER_CENTRE` by
  default; KMeans's ``init_rows_per_center``), and k-means|| runs on the sample in
  memory (:func:`sample_fractions`).

Small data (at most :data:`SMALL_DATA_VALUES` values) takes 1 pass for ``k-means++``
and ``k-means||`` alike: its rows are gathered and seeded by the greedy weighted
k-means++ that reclusters k-means||'s candidates, applied to every row instead of a
sample of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

import numpy as np

from .cosine import Metric, unit_centers
from .frame import computing_dtype
from .io import ZERO_WEIGHTS, numpy_row_chunks
from .lloyd import lloyd, stack_centers
from .oversampling import (
    BYTES_PER_ROW_AND_RUN,
    Candidates,
    nearest_candidates,
    oversample,
    weigh_candidates,
)
from .plusplus import padded, weighted_plusplus, weighted_plusplus_restarts
from .resources import local_threads, may_remember
from .row_memory import RowMemory
from .sampling import KeySample, plusplus_trials, smallest_keys, uniform_rows, weighted_rows
from .sources import InMemorySource, Source
from .streams import Purpose, stream_key

#: A k-means|| run draws no further round once its last round lowered the potential (the
#: data's cost under the candidates) by less than this fraction. The pass that measures
#: the small gain has drawn its own candidates in proportion to that potential, and they
#: are kept: a region holding a sizeable share of it still gets its candidates, and the
#: rounds skipped would only refine the regions covered (in many dimensions, by a few
#: percent a round). Gains per round on the seeding samples of ``benchmarks/shapes.py``'s
#: data: structureless rows 13.6%, 2.6% (200k x 768, k = 256: 3 rounds) and 34%, 7.2%
#: (250k x 128, k = 1,024: 3 rounds; at 1M x 128, k = 4,096 the seeding took 28 s instead
#: of 45 at 5%, for a lower seeding inertia); blobs 81%, 71%, 3.2% (768 features: 4
#: rounds) and 87%, 66%, 9.7% (128: 4). The paper's Gauss mixtures in 15 dimensions gain
#: 8% or more a round and draw 4 or 5. Final inertias against scikit-learn's k-means++
#: stayed within 0.25% of those with every round (mixtures, blobs, noise, embeddings).
INIT_TOL = 0.1
#: Extra k-means|| rounds allowed when the candidates are fewer than k distinct points.
MAX_EXTRA_ROUNDS = 20
#: Most independent k-means++ seedings of the (few, weighted) candidates; the best
#: after Lloyd wins. They run on the client and cost no pass over the data, but each
#: costs about ``m (2 + ln k)`` distance rows of k centres for m candidates, each worth
#: :data:`PLUSPLUS_ROW_COST` rows of a Lloyd pass: fewer run where that exceeds a pass
#: over the data (:func:`recluster_restarts`).
RECLUSTER_RESTARTS = 8
#: What a row of distances to k centres costs in a greedy k-means++ step, in rows of a
#: Lloyd pass: a step's product has a few rows and is bound by reading all the points
#: (41,000 candidates of 128 features, k = 4,096: 17 s a restart for 422,000 rows,
#: against 9.5 s for a Lloyd pass over 1,000,000; 10,000 candidates, k = 1,024: 2.8).
PLUSPLUS_ROW_COST = 4.0
#: Fewest Lloyd iterations of the reclustering (:func:`recluster_iterations`).
RECLUSTER_MIN_ITER = 5
#: Distances (row x centre) every part of the reclustering may compute whatever the
#: size of the data (:func:`recluster_budget`).
RECLUSTER_FREE_DISTANCES = 2**24
#: Data of at most this many values (rows x features, 8 MiB in float64) is seeded for
#: ``"k-means++"`` and ``"k-means||"`` by greedy k-means++ on all its rows, in memory:
#: k-means|| exists to seed in few passes, and its seven passes and reclustering (or
#: k-means++'s pass per centre) cost a small fit most of its time for no better centres.
SMALL_DATA_VALUES = 2**20
#: k-means|| of data with many rows per centre runs on a uniform sample of about this
#: many rows per centre (every row kept independently, with probability
#: ``SEEDING_ROWS_PER_CENTRE * k / n``), gathered in one pass, then Lloyd runs on all
#: rows. Each round measures every row against about ``oversampling_factor * k`` new
#: candidates: on all rows the rounds and the weighing cost ``oversampling_factor *
#: init_rounds`` (10) Lloyd passes, more than the 20 iterations of a fit often take.
SEEDING_ROWS_PER_CENTRE = 128
#: ... or fewer, down to this many, where the rounds on the sample would cost more than
MIN_ROWS_PER_CENTRE = 32
#: ... this many Lloyd passes over the data (:func:`sample_fractions`),
SEEDING_PASSES = 2.0
#: ... when the sample is at most this fraction of the rows (above it the sample saves
#: little and costs its copy),
MAX_SAMPLE_FRACTION = 0.5
#: ... and takes at most this many bytes (it is gathered in this process).
MAX_SAMPLE_BYTES = 2**28


def weighted_draws(source: Source, size: int, seeds: Sequence[int]) -> list[KeySample]:
    """The first pass of every initialisation: ``size`` distinct rows per seed, drawn
    with probability proportional to their weight.

    Raises
    ------
    ValueError
        When no row has weight (lazy weights are known to be zero everywhere only once
        they have been read).
    """
    samples = source.map_reduce(smallest_keys, size, np.asarray(seeds))
    if len(samples[0].rows) == 0:
        raise ValueError(ZERO_WEIGHTS)
    return samples


def random_centers(
    source: Source, n_clusters: Sequence[int], seeds: Sequence[int]
) -> list[np.ndarray]:
    """``n_clusters[r]`` distinct rows for run ``r``, drawn without replacement with
    probability proportional to their weight, all runs in one shared pass."""
    samples = weighted_draws(source, max(n_clusters), seeds)
    # the k smallest keys of a sample are themselves a sample of size k
    return [padded(sample.rows[:k], k) for sample, k in zip(samples, n_clusters, strict=True)]


def kmeans_plusplus(
    source: Source, n_clusters: int, seed: int, n_local_trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ (scikit-learn's variant) with weights, one pass per centre.

    Each centre is the best of ``2 + ln(k)`` trials drawn with probability
    proportional to ``w * d²`` (the best is the one that lowers the potential most).

    Returns
    -------
    ndarray of shape (n_clusters, d), float64
    """
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    (first,) = weighted_draws(source, 1, [seed])
    centers = np.empty((0, source.n_features))
    trials = first.rows
    for step in range(n_clusters):
        n_draws = n_local_trials if step < n_clusters - 1 else 0
        stats = source.map_reduce(plusplus_trials, centers, trials, n_draws, seed, step)
        best = int(np.argmin(stats.potentials))
        centers = np.vstack([centers, trials[best]])
        drawn = np.isfinite(stats.keys[best])
        if step < n_clusters - 1 and not drawn.any():
            break  # every point coincides with a centre: no distinct point is left
        trials = stats.rows[best][drawn]
    return padded(centers, n_clusters)


def kmeans_parallel(
    source: Source,
    n_clusters: Sequence[int],
    seeds: Sequence[int],
    *,
    oversampling_factor: float = 2.0,
    init_rounds: int = 5,
    metric: Metric = "euclidean",
    data_rows: int | None = None,
    init_tol: float = INIT_TOL,
) -> list[np.ndarray]:
    """Scalable k-means|| (Bahmani et al., VLDB 2012) for several runs at once.

    Run ``r`` seeds ``n_clusters[r]`` centres from ``seeds[r]``. Every round keeps
    each point independently with probability ``min(1, l * w * d² / cost)`` with
    ``l = oversampling_factor * n_clusters[r]``, up to ``init_rounds`` rounds: a run
    stops drawing once a round lowered its cost by less than the fraction ``init_tol``
    (0: every round);
    each candidate is then replaced by the mean of the points nearest to it (its
    cell), weighted by their total weight, and these are reclustered to
    ``n_clusters`` on the client with weighted greedy k-means++ followed by weighted
    Lloyd. Where the passes run in this process and
    the rows' nearest candidates fit in memory (:func:`remembered_nearest`), each pass
    measures only the candidates drawn since the last one; the result is the same.
    With ``metric="cosine"`` the source shows unit rows and the reclustering's Lloyd is
    spherical, so the centres are unit vectors. ``data_rows``: the rows of the data
    Lloyd will run on, where the source is a seeding sample of them: whether greedy
    k-means++ reclusters the candidates is weighed against a pass over those
    (:func:`recluster_plan`).

    Returns
    -------
    list of ndarray of shape (n_clusters[r], d), float64
    """
    seeds = np.asarray(seeds)
    oversampling = oversampling_factor * np.asarray(n_clusters, dtype=np.float64)
    candidates = [sample.rows for sample in weighted_draws(source, 1, seeds)]
    memory = remembered_nearest(source, len(seeds))
    measured = np.zeros(len(seeds), dtype=np.int64)  # candidates of every run in memory

    def not_measured(runs: list[int]) -> Candidates:
        first = measured[runs]
        new = [candidates[r][start:] for r, start in zip(runs, first, strict=True)]
        stacked, bounds = stack_centers(new)
        if memory is not None:
            measured[runs] = [len(candidates[r]) for r in runs]
        return Candidates(stacked, bounds, first, np.asarray(runs), memory)

    def sample_round(runs: list[int], round_index: int) -> np.ndarray:
        drawn = source.map_reduce(
            oversample, not_measured(runs), oversampling[runs], seeds[runs], round_index
        )
        for r, draws in zip(runs, drawn, strict=True):
            candidates[r] = np.vstack([candidates[r], draws.kept().rows])
        return np.array([draws.cost for draws in drawn])

    all_runs = list(range(len(seeds)))
    drawing, potentials = all_runs, np.full(len(seeds), np.inf)
    for round_index in range(init_rounds):
        if not drawing:
            break
        # a round measures the potential of the candidates drawn before it: a run whose
        # last draws lowered it by less than `init_tol` draws no further round
        measured_potentials = sample_round(drawing, round_index)
        with np.errstate(invalid="ignore"):  # 0 / 0: every row is a candidate
            gains = 1.0 - measured_potentials / potentials[drawing]
        potentials[drawing] = measured_potentials
        drawing = [r for r, gain in zip(drawing, gains, strict=True) if not gain < init_tol]
    for extra in range(MAX_EXTRA_ROUNDS + 1):
        sizes = np.array([len(c) for c in candidates])
        stats = source.map_reduce(weigh_candidates, not_measured(all_runs), sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        totals = stats.totals()
        cells = [
            cells_of(totals[lo:hi], candidates[r], metric)
            for r, (lo, hi) in enumerate(pairwise(offsets))
        ]
        # too few distinct candidates while some point is still away from all of
        # them: draw another round for those runs
        short = [r for r in all_runs if len(cells[r][0]) < n_clusters[r] and stats.costs[r] > 0]
        if not short or extra == MAX_EXTRA_ROUNDS:
            break
        sample_round(short, init_rounds + extra)
    # each candidate stands for the rows nearest to it: their mean, not the candidate
    # (in many dimensions a candidate lies far out from its rows, and Lloyd on the
    # candidates themselves can let one centre near the middle take every candidate)
    return [
        recluster(
            means,
            cell_weights,
            n_clusters[r],
            int(seed),
            metric,
            **recluster_plan(
                source.n_rows, len(means), n_clusters[r], data_rows=data_rows
            )._asdict(),
        )
        for r, ((cell_weights, means), seed) in enumerate(zip(cells, seeds, strict=True))
    ]


def sample_fractions(
    source: Source,
    n_clusters: Sequence[int],
    rows_per_center: int | None = SEEDING_ROWS_PER_CENTRE,
    *,
    oversampling_factor: float = 2.0,
    init_rounds: int = 5,
) -> np.ndarray:
    """The fraction of the rows every run's k-means|| seeds from:
    ``rows_per_center * k / n``, or 1 (all rows) where that is more than
    :data:`MAX_SAMPLE_FRACTION`, the sample would take more than
    :data:`MAX_SAMPLE_BYTES`, or ``rows_per_center`` is None.

    Fewer rows where k is large against n: the rounds and the weighing measure the
    sample against about ``oversampling_factor * k`` candidates each, so on a fraction
    f of the rows they cost ``(init_rounds + 1) * oversampling_factor * f`` Lloyd
    passes over the data. The fraction is cut to what costs :data:`SEEDING_PASSES`
    passes, but never below :data:`MIN_ROWS_PER_CENTRE` rows per centre (at 1,000,000
    rows and k = 4,096: 41 rows per centre, and the seeding costs 2 passes instead of
    12 on all rows).

    It depends on the shape and dtype of the data only, so that the seeding is the same
    on any scheduler and for any kind of pass.
    """
    if rows_per_center is None:
        return np.ones(len(n_clusters))
    n_rows = max(source.n_rows, 1)
    n_clusters = np.asarray(n_clusters, dtype=np.float64)
    affordable = SEEDING_PASSES / ((init_rounds + 1) * oversampling_factor)
    fewest = MIN_ROWS_PER_CENTRE * n_clusters / n_rows
    fractions = np.minimum(rows_per_center * n_clusters / n_rows, np.maximum(affordable, fewest))
    row_bytes = source.n_features * computing_dtype(source.dtype).itemsize
    sample_bytes = fractions * source.n_rows * row_bytes
    fine = (fractions <= MAX_SAMPLE_FRACTION) & (sample_bytes <= MAX_SAMPLE_BYTES)
    return np.where(fine, fractions, 1.0)


def sampled_kmeans_parallel(
    source: Source,
    n_clusters: Sequence[int],
    seeds: Sequence[int],
    rows_per_center: int | None = SEEDING_ROWS_PER_CENTRE,
    *,
    oversampling_factor: float = 2.0,
    init_rounds: int = 5,
    init_tol: float = INIT_TOL,
    metric: Metric = "euclidean",
) -> list[np.ndarray]:
    """:func:`kmeans_parallel` of every run on a uniform sample of about
    ``rows_per_center`` rows per centre where :func:`sample_fractions` says so, on all
    rows otherwise.

    Run ``r``'s sample keeps each row (of positive weight) independently with
    probability ``fractions[r]``, drawn from a stream of ``seeds[r]``: it depends on
    neither the blocks nor the other runs, so a run seeds alike alone, among the runs
    of ``n_init`` or among the k of :func:`~dkmeans.elbow`. The samples of all runs are
    gathered in one pass, and each run's k-means|| runs on its sample in memory, with
    the sample's weights.
    """
    n_clusters, seeds = np.asarray(n_clusters), np.asarray(seeds)
    fractions = sample_fractions(
        source,
        n_clusters,
        rows_per_center,
        oversampling_factor=oversampling_factor,
        init_rounds=init_rounds,
    )
    options = {
        "oversampling_factor": oversampling_factor,
        "init_rounds": init_rounds,
        "init_tol": init_tol,
        "metric": metric,
    }
    centers: list[np.ndarray] = [np.empty(0)] * len(seeds)
    sampled = np.flatnonzero(fractions < 1)
    whole = np.flatnonzero(fractions >= 1)
    if len(sampled):
        streams = [stream_key(int(seeds[r]), Purpose.SEEDING_SAMPLE) for r in sampled]
        sample = source.map_reduce(
            uniform_rows, fractions[sampled], np.array(streams, dtype=np.uint64)
        )
        for j, r in enumerate(sampled):
            rows, weights = sample.of_run(j)
            if j == len(sampled) - 1:
                del sample  # every run's rows are copied out: free the blocks' rows
            if len(rows) < n_clusters[r]:
                # nearly every row without weight: seed from all of them
                whole = np.union1d(whole, [r]).astype(int)
                continue
            (centers[r],) = kmeans_parallel(
                sample_source(rows, weights),
                [n_clusters[r]],
                [seeds[r]],
                data_rows=source.n_rows,
                **options,
            )
    if len(whole):
        found = kmeans_parallel(source, n_clusters[whole], seeds[whole], **options)
        for r, run_centers in zip(whole, found, strict=True):
            centers[r] = run_centers
    return centers


def sample_source(rows: np.ndarray, weights: np.ndarray) -> InMemorySource:
    """The rows of a seeding sample as a source on this process's threads, cut into
    blocks by their number only (not by the machine's)."""
    chunks = numpy_row_chunks(len(rows), rows.shape[1] * rows.itemsize)
    return InMemorySource.of_array(
        rows,
        None if (weights == 1).all() else weights,
        chunks=chunks,
        threads=local_threads(),
    )


def cells_of(
    totals: np.ndarray, candidates: np.ndarray, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    """The weights of one run's candidates that are nearest to some row, and the points
    that stand for them in the reclustering: the mean of those rows (with
    ``metric="cosine"``, its direction; the candidate's where it has none). ``totals``
    holds the run's rows of :meth:`~dkmeans.oversampling.CandidateWeights.totals`."""
    nearest_to_some = totals[:, -1] > 0
    weights = totals[nearest_to_some, -1]
    means = totals[nearest_to_some, :-1] / weights[:, None]
    if metric == "cosine":
        means = unit_centers(means, fallback=candidates[nearest_to_some])
    return weights, means


class ReclusterPlan(NamedTuple):
    """How the candidates of one run are reclustered (:func:`recluster`'s keywords)."""

    restarts: int
    max_iter: int
    greedy: bool


def recluster_plan(
    n_rows: int, n_candidates: int, n_clusters: int, *, data_rows: int | None = None
) -> ReclusterPlan:
    """Restarts, Lloyd iterations and start of the reclustering of m candidates into k
    for a source of n rows: each part costs about one Lloyd pass over the source.

    Where the source is a seeding sample of ``data_rows`` rows, greedy k-means++ is
    weighed against a pass over all of them: without it the reclustering loses clusters
    (1,024 blobs, 32 sampled rows per centre: 3.8 times the final inertia), and Lloyd on
    all the rows pays for it many times over.
    """
    restarts = recluster_restarts(n_rows, n_candidates, n_clusters)
    return ReclusterPlan(
        restarts,
        recluster_iterations(n_rows, n_candidates, n_clusters, restarts),
        greedy_reclustering_pays(data_rows or n_rows, n_candidates, n_clusters),
    )


def recluster_restarts(n_rows: int, n_candidates: int, n_clusters: int) -> int:
    """Restarts of the reclustering that together cost about one Lloyd pass over the
    data, between 1 and :data:`RECLUSTER_RESTARTS`.

    One restart (greedy k-means++ with ``2 + ln k`` trials per centre, then Lloyd's
    first iterations) computes about ``m (2 + ln k)`` rows of distances to k centres
    for m candidates, each costing :data:`PLUSPLUS_ROW_COST` rows of a pass over the
    data, which computes ``n``. With few clusters the candidates are few and every
    restart is cheap; at k = 1,024 on 200,000 rows they number about 10,000 and one
    restart costs nearly two passes, where the spread between restarts is a fraction
    of a percent of the final inertia.
    """
    per_restart = PLUSPLUS_ROW_COST * plusplus_cost(n_candidates, n_clusters)
    budget = recluster_budget(n_rows, n_clusters)
    return int(np.clip(budget // max(per_restart, 1.0), 1, RECLUSTER_RESTARTS))


def plusplus_cost(n_candidates: int, n_clusters: int) -> float:
    """Rows of distances to k centres that greedy k-means++ on m candidates computes:
    ``m (2 + ln k)`` (k steps of ``2 + ln k`` trials, each against all candidates)."""
    return n_candidates * (2 + np.log(max(n_clusters, 1)))


def recluster_budget(n_rows: int, n_clusters: int) -> float:
    """Rows of distances to k centres that each part of the reclustering may compute:
    a Lloyd pass over the data (``n``), and never less than
    :data:`RECLUSTER_FREE_DISTANCES` distances, which cost milliseconds."""
    return max(float(n_rows), RECLUSTER_FREE_DISTANCES / max(n_clusters, 1))


def greedy_reclustering_pays(n_rows: int, n_candidates: int, n_clusters: int) -> bool:
    """Whether greedy k-means++ on the candidates costs at most a Lloyd pass over the
    data (see :func:`recluster_restarts`). Its k steps run one after another, each over
    all m candidates, and m grows with k: at k = 16,384 on a million rows it would cost
    two passes, at k = 65,536 more than six. Beyond that the reclustering starts from k
    candidates drawn in proportion to their weight instead (the candidates are already
    a D²-sample of the data) and leaves the rest to Lloyd, on the candidates and then on
    the data: its cost stays that of Lloyd's iterations, m k d each."""
    return plusplus_cost(n_candidates, n_clusters) <= recluster_budget(n_rows, n_clusters)


def recluster_iterations(n_rows: int, n_candidates: int, n_clusters: int, restarts: int = 1) -> int:
    """Most Lloyd iterations of the reclustering: together about one Lloyd pass over
    the data (each iteration of every restart costs ``m / n`` of one;
    :func:`recluster_budget`), between :data:`RECLUSTER_MIN_ITER` and Lloyd's default
    of 300. Large k gets fewer than 300: at k = 16,384 on a million rows the candidates
    number about 160,000, and Lloyd on them would otherwise run for as long as on the
    data; at k = 256 on 200,000 rows of 768 features, 8 restarts of Lloyd on 2,560
    candidates had up to 78 iterations each (4.6 s, seven passes' worth). Lloyd on the data
    then finishes the job."""
    budget = recluster_budget(n_rows, n_clusters)
    per_iteration = max(n_candidates, 1) * max(restarts, 1)
    return int(np.clip(budget // per_iteration, RECLUSTER_MIN_ITER, 300))


def remembered_nearest(source: Source, n_runs: int) -> RowMemory | None:
    """Memory for every row's nearest candidate, when the kernels run in this process
    and it fits (:func:`~dkmeans.resources.may_remember`); else None: every pass then
    measures all candidates."""
    if may_remember(source.in_process, source.n_rows * n_runs * BYTES_PER_ROW_AND_RUN):
        return nearest_candidates(n_runs)
    return None


def weighted_sample(
    points: np.ndarray, weights: np.ndarray, n_clusters: int, seed: int
) -> np.ndarray:
    """``n_clusters`` distinct rows of ``points`` drawn without replacement with
    probability proportional to their (positive) weight: the smallest keys
    ``Exp(1) / w`` (Efraimidis & Spirakis), as float64."""
    keys = np.random.default_rng(seed).exponential(size=len(points)) / weights
    return np.asarray(points[np.argsort(keys, kind="stable")[:n_clusters]], dtype=np.float64)


def recluster(
    candidates: np.ndarray,
    weights: np.ndarray,
    n_clusters: int,
    seed: int,
    metric: Metric = "euclidean",
    *,
    restarts: int = RECLUSTER_RESTARTS,
    max_iter: int = 300,
    greedy: bool = True,
) -> np.ndarray:
    """Weighted k-means++ (or, unless ``greedy``, a weighted sample of k candidates:
    :func:`greedy_reclustering_pays`) then weighted Lloyd (at most ``max_iter``
    iterations) on the candidates, on the client's threads; the best of ``restarts``
    restarts (lowest weighted candidate cost)."""
    if len(candidates) <= n_clusters:
        return padded(candidates, n_clusters)
    # many candidates (very large k) are cut into blocks as in-memory data is, so that
    # Lloyd on them uses every core; their number does not depend on the machine
    chunks = numpy_row_chunks(len(candidates), candidates.shape[1] * candidates.itemsize)
    small = InMemorySource.of_array(candidates, weights, chunks=chunks, threads=local_threads())
    restart_seeds = np.random.default_rng(seed).integers(np.iinfo(np.int32).max, size=restarts)
    if greedy:
        initial = weighted_plusplus_restarts(candidates, weights, n_clusters, restart_seeds)
    else:
        initial = [weighted_sample(candidates, weights, n_clusters, int(s)) for s in restart_seeds]
    results = lloyd(small, initial, max_iter=max_iter, metric=metric)
    return min(results, key=lambda result: result.inertia).centers


def plusplus_on_all_rows(
    source: Source, n_clusters: Sequence[int], seeds: Sequence[int]
) -> list[np.ndarray]:
    """Greedy weighted k-means++ of every run on all rows of small data, gathered in
    one pass (:data:`SMALL_DATA_VALUES`); the result does not depend on the blocks."""
    gathered = source.map_reduce(weighted_rows)
    if len(gathered.rows) == 0:
        raise ValueError(ZERO_WEIGHTS)
    return [
        weighted_plusplus(gathered.rows, gathered.weights, k, int(seed))
        for k, seed in zip(n_clusters, seeds, strict=True)
    ]


def initial_centers(
    source: Source,
    init: str,
    n_clusters: Sequence[int],
    seeds: Sequence[int],
    *,
    oversampling_factor: float = 2.0,
    init_rounds: int = 5,
    init_tol: float = INIT_TOL,
    rows_per_center: int | None = SEEDING_ROWS_PER_CENTRE,
    metric: Metric = "euclidean",
) -> list[np.ndarray]:
    """Initial centres of every run by the named method (see the module docstring); for
    ``metric="cosine"`` the source shows unit rows and the centres are unit vectors.
    k-means|| runs on a sample of about ``rows_per_center`` rows per centre
    (:func:`sampled_kmeans_parallel`; None: on all rows)."""
    if init == "random":
        return random_centers(source, n_clusters, seeds)
    if source.n_rows * source.n_features <= SMALL_DATA_VALUES:
        return plusplus_on_all_rows(source, n_clusters, seeds)
    if init == "k-means++":
        return [
            kmeans_plusplus(source, k, int(seed)) for k, seed in zip(n_clusters, seeds, strict=True)
        ]
    return sampled_kmeans_parallel(
        source,
        n_clusters,
        seeds,
        rows_per_center,
        oversampling_factor=oversampling_factor,
        init_rounds=init_rounds,
        init_tol=init_tol,
        metric=metric,
    )
