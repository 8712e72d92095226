"""The initialisers: passes over the data, determinism, weights, awkward data, quality."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.exceptions import ConvergenceWarning

from dkmeans import KMeans, oversampling, seeding
from dkmeans.seeding import kmeans_parallel, kmeans_plusplus, random_centers, weighted_plusplus
from dkmeans.sources import DaskSource, InMemorySource
from dkmeans.streams import Purpose, row_uniforms, stream_key

from .helpers import brute_force_inertia, counting_store

#: The initialisers themselves, not the small-data path every small fit takes.
pytestmark = pytest.mark.usefixtures("kmeans_parallel_on_small_data")


def gauss_mixture(n: int, k: int, d: int = 15, spread: float = 10.0, seed: int = 0) -> np.ndarray:
    """The paper's GaussMixture: k centres from N(0, R I), unit-variance clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=np.sqrt(spread), size=(k, d))
    return centers[rng.integers(k, size=n)] + rng.normal(size=(n, d))


@pytest.fixture
def store_path(tmp_path):
    X = gauss_mixture(4000, 10, d=5)
    z = zarr.create_array(
        store=str(tmp_path / "x.zarr"), shape=X.shape, chunks=(500, 5), dtype="f8"
    )
    z[:] = X
    return tmp_path / "x.zarr", X


@pytest.mark.parametrize("rounds", [1, 5])
def test_kmeans_parallel_reads_the_store_at_most_rounds_plus_two_times(store_path, rounds):
    path, _ = store_path
    store = counting_store(path)
    X = da.from_zarr(zarr.open_array(store=store, mode="r"))
    centers = kmeans_parallel(DaskSource(X), [10], [0], init_rounds=rounds)[0]
    assert centers.shape == (10, 5)
    assert len(store.reads) == 8  # every chunk was read ...
    assert max(store.reads.values()) <= rounds + 2  # ... at most rounds + 2 times


@pytest.mark.parametrize("n_clusters", [10, 70])  # 10: seeded from a sample; 70: from all rows
def test_streaming_fit_reads_init_passes_plus_one_per_iteration(store_path, n_clusters):
    path, X = store_path
    store = counting_store(path)
    km = KMeans(n_clusters, random_state=0, persist=False, init_rounds=3)
    km.fit(zarr.open_array(store=store, mode="r"))
    fractions = seeding.sample_fractions(InMemorySource.of_array(X), [n_clusters], init_rounds=3)
    sampled = fractions[0] < 1
    assert sampled == (n_clusters == 10)
    # the first rows choose the frame (dkmeans.frame); init: one pass gathers the
    # sample, or 3 rounds + 2 over all rows; Lloyd: one pass per iteration and one for
    # the final inertia
    assert max(store.reads.values()) <= 1 + (1 if sampled else 3 + 2) + km.n_iter_ + 1


def test_kmeans_plusplus_takes_k_plus_one_passes(blobs):
    source = DaskSource(da.from_array(blobs[0], chunks=(600, -1)))
    centers = kmeans_plusplus(source, 5, seed=0)
    assert source.passes == 6
    assert len(np.unique(centers, axis=0)) == 5
    # each true blob gets one centre
    nearest_blob = ((centers[:, None] - blobs[1][None]) ** 2).sum(-1).argmin(1)
    assert sorted(nearest_blob) == [0, 1, 2, 3, 4]


def fit_on(scheduler: str, X, init: str, **config) -> KMeans:
    with dask.config.set(scheduler=scheduler, **config):
        return KMeans(5, init=init, random_state=11, n_init=2, persist=False).fit(X)


def assert_same_fit(a: KMeans, b: KMeans) -> None:
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_same_result_on_threads_and_sync(blobs, init):
    X = da.from_array(blobs[0], chunks=(400, -1))
    assert_same_fit(fit_on("threads", X, init), fit_on("sync", X, init))


def test_random_state_kinds(blobs):
    X = blobs[0]
    a = KMeans(5, random_state=3).fit(X)
    b = KMeans(5, random_state=3).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    KMeans(5, random_state=np.random.RandomState(0)).fit(X)
    KMeans(5, random_state=np.random.default_rng(0)).fit(X)


def test_weighted_sampling_frequency():
    # row 1 has three times the weight of row 0: drawn first about 3/4 of the time
    x = np.array([[0.0], [1.0]])
    source = InMemorySource.of_array(x, np.array([1.0, 3.0]))
    firsts = [random_centers(source, [1], [seed])[0][0, 0] for seed in range(2000)]
    assert np.mean(firsts) == pytest.approx(0.75, abs=0.035)


def test_weight_behaves_like_copies(blobs):
    X, _ = blobs
    counts = np.random.default_rng(0).integers(1, 4, size=len(X))
    weighted = KMeans(5, random_state=0).fit(X, sample_weight=counts)
    repeated = KMeans(5, random_state=0).fit(np.repeat(X, counts, axis=0))
    order = np.lexsort(weighted.cluster_centers_.T)
    other = np.lexsort(repeated.cluster_centers_.T)
    np.testing.assert_allclose(
        weighted.cluster_centers_[order], repeated.cluster_centers_[other], rtol=1e-9
    )
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-9)


def test_zero_weight_points_are_never_centres():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 100])
    weights = np.r_[np.ones(200), np.zeros(200)]
    for init in ["k-means||", "k-means++", "random"]:
        km = KMeans(3, init=init, random_state=0).fit(X, sample_weight=weights)
        assert (np.abs(km.cluster_centers_) < 50).all(), init


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_exactly_k_distinct_points_give_k_distinct_centres(init):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(6, 3))
    X = points[rng.integers(6, size=3000)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        km = KMeans(6, init=init, random_state=0).fit(da.from_array(X, chunks=(500, -1)))
    assert len(np.unique(km.cluster_centers_, axis=0)) == 6
    assert km.inertia_ == pytest.approx(0, abs=1e-18)


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_fewer_distinct_points_than_k_warns_and_stays_finite(init):
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), 50, axis=0)
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(3\)"):
        km = KMeans(5, init=init, random_state=0).fit(X)
    assert np.isfinite(km.cluster_centers_).all()
    assert len(np.unique(km.cluster_centers_, axis=0)) == 3
    assert km.inertia_ == 0


@pytest.mark.parametrize("n, k", [(1, 1), (2, 2), (5, 5), (7, 3)])
def test_tiny_arrays(n, k):
    X = np.arange(n * 2, dtype=float).reshape(n, 2)
    km = KMeans(k, random_state=0).fit(X)
    assert km.cluster_centers_.shape == (k, 2)
    assert len(np.unique(km.cluster_centers_, axis=0)) == k
    assert km.inertia_ == pytest.approx(brute_force_inertia(X, km.cluster_centers_))


def test_rounds_that_sample_nothing_still_give_k_centres(blobs):
    # l = 1e-6 * k: the rounds almost surely keep no point; extra rounds make up for it
    km = KMeans(5, oversampling_factor=1e-6, random_state=0).fit(blobs[0])
    assert len(np.unique(km.cluster_centers_, axis=0)) == 5


def test_huge_oversampling_keeps_every_point(blobs):
    X = blobs[0][:300]
    km = KMeans(5, oversampling_factor=1e6, init_rounds=2, random_state=0).fit(X)
    ref = SklearnKMeans(5, n_init=10, random_state=0).fit(X)
    assert km.inertia_ <= ref.inertia_ * 1.01


@pytest.mark.parametrize("k", [10, 50])
def test_kmeans_parallel_is_as_good_as_kmeans_plusplus(k):
    X = gauss_mixture(6000, k, spread=10.0, seed=k)
    ours = [KMeans(k, random_state=seed).fit(X).inertia_ for seed in range(5)]
    theirs = [SklearnKMeans(k, n_init=1, random_state=seed).fit(X).inertia_ for seed in range(5)]
    assert np.mean(ours) <= 1.02 * np.mean(theirs)


def recorded_rounds(source: InMemorySource, monkeypatch) -> dict[int, list[float]]:
    """Every run's potentials as its k-means|| rounds measure them, in round order (the
    first: under the first centre alone), recorded from the passes over ``source``."""
    potentials: dict[int, list[float]] = {}
    map_reduce = source.map_reduce

    def recording(func, *args, **kwargs):
        result = map_reduce(func, *args, **kwargs)
        if func is oversampling.oversample:
            for run, drawn in zip(args[0].runs, result, strict=True):
                potentials.setdefault(int(run), []).append(drawn.cost)
        return result

    monkeypatch.setattr(source, "map_reduce", recording)
    return potentials


@pytest.mark.parametrize("init_tol", [0.0, 0.05, 0.5])
def test_a_run_stops_drawing_once_a_round_gains_less_than_init_tol(init_tol, monkeypatch):
    """A run draws round i + 1 only while round i lowered the potential by at least
    ``init_tol`` (0: every round); runs sharing the passes stop each at its own round
    and seed exactly as alone."""
    X = np.random.default_rng(4).normal(size=(3000, 96))  # structureless, many dimensions
    n_clusters, seeds, rounds = [2, 30, 30], [5, 6, 7], 6
    source = InMemorySource.of_array(X, chunks=(700, 96))
    potentials = recorded_rounds(source, monkeypatch)
    together = kmeans_parallel(source, n_clusters, seeds, init_rounds=rounds, init_tol=init_tol)
    for run, measured in potentials.items():
        gains = 1 - np.array(measured[1:]) / measured[:-1]
        kept_on = np.flatnonzero(gains < init_tol)
        expected = rounds if len(kept_on) == 0 else kept_on[0] + 2
        assert len(measured) == expected, (run, measured)
    drawn = [len(potentials[r]) for r in range(3)]
    if init_tol == 0:
        assert drawn == [rounds] * 3
    else:
        assert min(drawn) < rounds  # the rule is put to the test
    for k, seed, centers in zip(n_clusters, seeds, together, strict=True):
        alone = kmeans_parallel(
            InMemorySource.of_array(X, chunks=(700, 96)), [k], [seed],
            init_rounds=rounds, init_tol=init_tol,
        )  # fmt: skip
        np.testing.assert_array_equal(alone[0], centers)


def test_rounds_stop_early_on_structureless_rows_in_many_dimensions_only(monkeypatch):
    """The default ``init_tol``: a Gaussian mixture in few dimensions gains at every
    round and draws all of them; structureless rows in many dimensions stop early, and
    their final inertia is as good as with every round."""
    mixture = InMemorySource.of_array(gauss_mixture(6000, 20, d=8))
    potentials = recorded_rounds(mixture, monkeypatch)
    kmeans_parallel(mixture, [20], [0])
    assert len(potentials[0]) == 5
    X = np.random.default_rng(2).normal(size=(6000, 256)).astype(np.float32)
    noise = InMemorySource.of_array(X)
    potentials = recorded_rounds(noise, monkeypatch)
    kmeans_parallel(noise, [20], [0])
    assert len(potentials[0]) < 5
    early, every = (
        [KMeans(20, init_tol=tol, random_state=seed).fit(X).inertia_ for seed in range(3)]
        for tol in (seeding.INIT_TOL, 0.0)
    )
    assert np.mean(early) <= 1.005 * np.mean(every)


def test_runs_share_passes(blobs):
    source = DaskSource(da.from_array(blobs[0], chunks=(600, -1)))
    together = kmeans_parallel(source, [5, 5, 3], [1, 2, 3], init_rounds=4)
    assert source.passes == 4 + 2
    alone = kmeans_parallel(InMemorySource.of_array(blobs[0]), [3], [3], init_rounds=4)
    assert together[2].shape == alone[0].shape == (3, 4)


@pytest.mark.parametrize("init", ["k-means||", "k-means++"])
def test_small_data_is_seeded_by_kmeans_plusplus_on_all_rows_in_one_pass(init, monkeypatch):
    """At most SMALL_DATA_VALUES values: the greedy weighted k-means++ of k-means||'s
    reclustering runs on every row, after one pass that gathers them; rows of weight 0
    are never chosen; the blocks and the container do not matter."""
    X = gauss_mixture(3000, 6, d=4, seed=3)
    monkeypatch.setattr(seeding, "SMALL_DATA_VALUES", X.size)
    w = np.random.default_rng(0).integers(0, 3, size=len(X)).astype(float)
    sources = [
        InMemorySource.of_array(X, w),
        InMemorySource.of_array(X, w, chunks=(1000, 700, 1300), threads=2),
        DaskSource(da.from_array(X, chunks=(450, -1)), da.from_array(w, chunks=450)),
    ]
    expected = weighted_plusplus(X[w > 0], w[w > 0], 6, 11)
    for source in sources:
        (centers,) = seeding.initial_centers(source, init, [6], [11])
        np.testing.assert_array_equal(centers, expected)
        assert source.passes == 1
    chosen = (X[:, None, :] == expected[None]).all(axis=2).any(axis=1)
    assert chosen.sum() == 6 and (w[chosen] > 0).all()


def test_kmeans_parallel_does_not_collapse_structureless_data_in_many_dimensions():
    """Every candidate stands for the mean of the rows nearest to it. In 512 dimensions
    of noise a candidate lies far out from those rows: reclustered as themselves, one
    centre near the middle took 99.75% of the rows, and Lloyd stayed there (inertia
    1.0103 times scikit-learn's after 20 iterations; now 1.0021, on a sample of 83 rows
    per centre)."""
    x = np.random.default_rng(0).standard_normal((8000, 512)).astype(np.float32)
    ours = KMeans(16, max_iter=20, random_state=0).fit(x)
    theirs = SklearnKMeans(16, n_init=1, max_iter=20, random_state=0).fit(x)
    assert np.bincount(ours.labels_, minlength=16).max() < 0.2 * len(x)
    assert ours.inertia_ <= 1.005 * theirs.inertia_


def test_kmeans_parallel_runs_on_a_sample_of_the_rows_where_there_are_many_per_centre():
    # SEEDING_ROWS_PER_CENTRE * k rows, when that is at most MAX_SAMPLE_FRACTION of the
    # rows and MAX_SAMPLE_BYTES; the dtype counts as the kernels compute in it
    def fractions(n, d, k, dtype=np.float32):
        return seeding.sample_fractions(DaskSource(da.zeros((n, d), dtype=dtype)), k)

    per_centre = seeding.SEEDING_ROWS_PER_CENTRE
    np.testing.assert_allclose(fractions(200_000, 768, [256]), [per_centre * 256 / 200_000])
    # large k against n: the rounds and the weighing (6 passes over the sample, each
    # against 2k candidates) cost SEEDING_PASSES passes over the data, 1/6 of the rows...
    affordable = seeding.SEEDING_PASSES / 12
    np.testing.assert_allclose(
        fractions(500_000, 64, [1024, 16]), [affordable, per_centre * 16 / 500_000]
    )
    np.testing.assert_allclose(fractions(1_000_000, 128, [4096]), [affordable])
    # ... but at least MIN_ROWS_PER_CENTRE rows per centre
    fewest = seeding.MIN_ROWS_PER_CENTRE
    np.testing.assert_allclose(fractions(100_000, 64, [1024]), [fewest * 1024 / 100_000])
    # fewer rounds and candidates: a larger sample for the same passes
    np.testing.assert_allclose(
        seeding.sample_fractions(
            DaskSource(da.zeros((1_000_000, 8))), [4096], oversampling_factor=1, init_rounds=3
        ),
        [seeding.SEEDING_PASSES / 4],
    )
    assert fractions(100_000, 64, [4096])[0] == 1  # too few rows per centre
    assert fractions(10**9, 1024, [8192])[0] == 1  # a sample of 4 GB
    assert fractions(10**9, 1024, [8192], np.float16)[0] == 1  # computed in float32
    assert fractions(10**9, 16, [8192])[0] < 1
    # the user's rows per centre, and None: all rows
    np.testing.assert_allclose(
        seeding.sample_fractions(DaskSource(da.zeros((200_000, 8))), [100, 50], 40),
        [40 * 100 / 200_000, 40 * 50 / 200_000],
    )
    assert (seeding.sample_fractions(DaskSource(da.zeros((10**9, 8))), [4], None) == 1).all()


def test_a_sample_of_few_rows_per_centre_still_finds_every_cluster():
    """500 well-apart clusters of 160 rows: the sample keeps 32 rows per centre
    (MIN_ROWS_PER_CENTRE), whose k-means|| candidates number ten per centre. Reclustering
    them greedily finds nearly every cluster; a weighted draw of k of them (what a budget
    of one pass over the sample allowed) left 22% of the clusters without a centre, and
    Lloyd ended at 8 to 10 times the inertia."""
    rng = np.random.default_rng(0)
    means = rng.normal(scale=10.0, size=(500, 16))
    X = means[np.repeat(np.arange(500), 160)] + rng.standard_normal((80_000, 16))
    source = InMemorySource.of_array(X)
    fraction = seeding.sample_fractions(source, [500])[0]
    assert fraction == pytest.approx(seeding.MIN_ROWS_PER_CENTRE * 500 / len(X))
    (centers,) = seeding.initial_centers(source, "k-means||", [500], [7])
    labels = np.argmin(((means[:, None] - centers[None]) ** 2).sum(-1), axis=0)
    assert len(np.unique(labels)) > 0.97 * 500  # almost every cluster has its own centre
    fitted = KMeans(500, random_state=7, max_iter=20).fit(X)
    assert fitted.inertia_ < 1.1 * X.size  # unit variance in every cluster


def test_init_rows_per_center_none_seeds_kmeans_parallel_from_all_rows():
    X = np.random.default_rng(5).standard_normal((70_000, 16))  # not small data
    source = InMemorySource.of_array(X)
    assert seeding.sample_fractions(source, [3])[0] < 1  # sampled by default
    seed = int(KMeans(3, random_state=4)._seeds(1)[0])
    (on_all_rows,) = kmeans_parallel(source, [3], [seed])
    (sampled,) = seeding.initial_centers(source, "k-means||", [3], [seed])
    assert not np.allclose(on_all_rows, sampled)
    ours = KMeans(3, init_rows_per_center=None, max_iter=2, tol=0, random_state=4).fit(X)
    given = KMeans(3, init=on_all_rows, max_iter=2, tol=0).fit(X)
    np.testing.assert_array_equal(ours.cluster_centers_, given.cluster_centers_)


@pytest.mark.parametrize("weighted", [False, True])
def test_sampled_seeding_is_kmeans_parallel_on_the_rows_of_its_stream(blobs, weighted):
    """Run r's sample keeps each row of positive weight with probability fractions[r],
    by the row's own uniform number of a stream of seeds[r], in one pass; every run
    seeds alike alone and among others (n_init, the k of an elbow)."""
    X = blobs[0]
    w = np.random.default_rng(2).integers(0, 3, size=len(X)).astype(float) if weighted else None
    source = DaskSource(
        da.from_array(X, chunks=(700, -1)), None if w is None else da.from_array(w, chunks=700)
    )
    n_clusters, seeds = [5, 3, 5], [8, 8, 9]
    fractions = seeding.sample_fractions(source, n_clusters, init_rounds=3)
    assert (fractions < 1).all()
    together = seeding.sampled_kmeans_parallel(source, n_clusters, seeds, init_rounds=3)
    assert source.passes == 1
    for k, seed, fraction, centers in zip(n_clusters, seeds, fractions, together, strict=True):
        kept = row_uniforms(stream_key(seed, Purpose.SEEDING_SAMPLE), 0, len(X)) <= fraction
        if w is not None:
            kept &= w > 0
        on_rows = InMemorySource.of_array(X[kept], None if w is None else w[kept])
        (expected,) = kmeans_parallel(on_rows, [k], [seed], init_rounds=3, data_rows=len(X))
        np.testing.assert_allclose(centers, expected, rtol=1e-12)
        (alone,) = seeding.sampled_kmeans_parallel(source, [k], [seed], init_rounds=3)
        np.testing.assert_array_equal(centers, alone)
