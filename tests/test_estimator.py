"""KMeans against scikit-learn, exact invariants, and the scikit-learn estimator API."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from unittest import mock

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import dkmeans
import dkmeans.io
from dkmeans import KMeans

from .helpers import brute_force_inertia, count_computes


def as_container(X: np.ndarray, kind: str, tmp_path) -> object:
    if kind == "numpy":
        return X
    if kind == "dask":
        return da.from_array(X, chunks=((700, 1000, len(X) - 1701, 1), -1))  # tiny last block
    z = zarr.create_array(
        store=str(tmp_path / "x.zarr"), shape=X.shape, chunks=(333, 2), dtype=X.dtype
    )
    z[:] = X
    return str(tmp_path / "x.zarr")


def sklearn_fit(X, init, **kwargs):
    return SklearnKMeans(len(init), init=init, n_init=1, algorithm="lloyd", **kwargs).fit(X)


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_matches_sklearn_float64(overlapping, kind, tmp_path, implementation):
    X = overlapping
    init = X[[0, 1, 2]] + 0.5
    ours = KMeans(3, init=init).fit(as_container(X, kind, tmp_path))
    ref = sklearn_fit(X, init)
    assert ours.n_iter_ == ref.n_iter_ > 3
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(ours.labels_), ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-9)
    assert ours.cluster_centers_.dtype == np.float64


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_matches_sklearn_float32(blobs, kind, tmp_path, implementation):
    X = blobs[0].astype(np.float32)
    init = X[:5].copy()
    ours = KMeans(5, init=init).fit(as_container(X, kind, tmp_path))
    ref = sklearn_fit(X, init)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.cluster_centers_.dtype == np.float32
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(ours.labels_), ref.labels_)


def test_matches_sklearn_with_sample_weight(overlapping, implementation):
    X = overlapping
    weights = np.random.default_rng(0).uniform(0.1, 3.0, size=len(X))
    init = X[[5, 6, 7]]
    ours = KMeans(3, init=init).fit(X, sample_weight=weights)
    ref = sklearn_fit(X, init).fit(X, sample_weight=weights)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-9)


def test_empty_cluster_relocated_like_sklearn(blobs, implementation):
    X = blobs[0]
    init = np.vstack([X[:4], [[1e3, 1e3, 1e3, 1e3]]])  # the last centre attracts nobody
    ours = KMeans(5, init=init).fit(X)
    ref = sklearn_fit(X, init)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9)
    assert len(np.unique(ours.labels_)) == 5


def assert_same_fit(ours, ref):
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(ours.labels_), ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-12, abs=1e-12)


DUPLICATES = np.array([[0, 0], [1, 1], [1, 1], [1, 0], [0, 1]], dtype=float)
SEVERAL_DUPLICATES = np.array([[0, 0]] * 3 + [[1, 1]] * 3 + [[5, 5]], dtype=float)


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
@pytest.mark.parametrize("chunks", [None, 1, 2, 3])
@pytest.mark.parametrize(
    "X, init",
    [
        (DUPLICATES, DUPLICATES),  # centre 2 duplicates centre 1: empty, nothing to move
        (SEVERAL_DUPLICATES, SEVERAL_DUPLICATES[[0, 1, 3, 4, 6]]),  # two such clusters
    ],
)
def test_empty_clusters_of_duplicates_like_sklearn(X, init, chunks, implementation):
    # every point sits on its centre: no point moves, and the empty clusters go to the
    # centre of the heaviest cluster, as scikit-learn places them
    data = X if chunks is None else da.from_array(X, chunks=(chunks, -1))
    assert_same_fit(KMeans(len(init), init=init).fit(data), sklearn_fit(X, init))


@pytest.mark.parametrize("chunks", [None, 7, 50])
@pytest.mark.parametrize("seed", range(4))
def test_several_empty_clusters_relocated_like_sklearn(seed, chunks, implementation):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(120, 2))
    n_empty = 2 + seed
    init = np.vstack([X[:3], rng.normal(size=(n_empty, 2)) + 100])  # far from every point
    data = X if chunks is None else da.from_array(X, chunks=(chunks, -1))
    assert_same_fit(KMeans(len(init), init=init).fit(data), sklearn_fit(X, init))


@pytest.mark.parametrize("chunks", [None, 50])
@pytest.mark.parametrize("occupied", [4, 60])
def test_more_empty_clusters_than_far_points_kept_relocated_like_sklearn(
    chunks, occupied, implementation
):
    """A pass keeps FAR_POINTS_PER_RUN far points per run; when more clusters turn empty,
    it is made again keeping that many more than turned empty (with 60 occupied
    clusters, fewer than k; with 4, all k): the relocation is scikit-learn's."""
    from dkmeans.lloyd import FAR_POINTS_PER_RUN

    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 2))
    init = np.vstack([X[:occupied], rng.normal(size=(FAR_POINTS_PER_RUN + 8, 2)) + 100])
    data = X if chunks is None else da.from_array(X, chunks=(chunks, -1))
    assert_same_fit(KMeans(len(init), init=init).fit(data), sklearn_fit(X, init))


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_empty_cluster_goes_to_the_mean_of_the_heaviest_cluster():
    # scikit-learn 1.9 copies the heaviest cluster's weighted sum (its centre times its
    # weight, in its mean-centred frame) when that cluster comes after the empty one;
    # dkmeans places the empty cluster on the heaviest cluster's centre, as scikit-learn's
    # comment says it means to
    X = np.array([[1, 1], [1, 1], [1, 1], [0, 0]], dtype=float)
    km = KMeans(3, init=np.array([[0, 0], [5, 5], [1, 1]], dtype=float), max_iter=1).fit(X)
    np.testing.assert_array_equal(km.cluster_centers_, [[0, 0], [1, 1], [1, 1]])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_inertia_is_brute_force_sum(blobs, init, weighted):
    X = blobs[0]
    weights = np.random.default_rng(1).uniform(0, 2, size=len(X)) if weighted else None
    km = KMeans(5, init=init, random_state=0).fit(
        da.from_array(X, chunks=(512, 4)), sample_weight=weights
    )
    assert km.inertia_ == pytest.approx(
        brute_force_inertia(X, km.cluster_centers_, weights), rel=1e-12
    )
    assert km.score(X, sample_weight=weights) == pytest.approx(-km.inertia_, rel=1e-12)


def test_result_does_not_depend_on_chunking(overlapping):
    X = overlapping
    init = X[[10, 20, 30]]
    results = [
        KMeans(3, init=init, tol=0).fit(da.from_array(X, chunks=(chunks, -1)))
        for chunks in [2000, 1000, 333, (1999, 1), 64]
    ]
    for km in results[1:]:
        np.testing.assert_allclose(km.cluster_centers_, results[0].cluster_centers_, rtol=1e-12)
        assert km.n_iter_ == results[0].n_iter_
        assert km.inertia_ == pytest.approx(results[0].inertia_, rel=1e-12)


@pytest.mark.parametrize("init", ["k-means||", "random"])
def test_numpy_input_on_threads_equals_dask_input_with_the_same_blocks(
    overlapping, init, monkeypatch
):
    # NumPy input runs on a pool of threads without a task graph; with the same blocks
    # and the same combining tree it must give a Dask array's result to the last bit
    X = np.tile(overlapping, (40, 1))  # 80,000 rows: 8 blocks of 10,000 (MIN_NUMPY_BLOCKS)
    weights = np.random.default_rng(3).uniform(0.5, 2, len(X))
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0)  # the Dask array's blocks are kept
    params = dict(init=init, n_init=2, max_iter=15, random_state=4)
    on_threads = KMeans(3, **params).fit(X, sample_weight=weights)
    lazy = da.from_array(X, chunks=(10_000, -1))
    on_dask = KMeans(3, **params).fit(lazy, sample_weight=da.from_array(weights, chunks=10_000))
    np.testing.assert_array_equal(on_threads.cluster_centers_, on_dask.cluster_centers_)
    assert on_threads.inertia_ == on_dask.inertia_
    assert on_threads.n_iter_ == on_dask.n_iter_
    np.testing.assert_array_equal(on_threads.labels_, on_dask.labels_.compute())


def test_persisted_dask_input_runs_on_threads_with_the_result_of_a_streamed_fit(
    overlapping, monkeypatch
):
    # a Dask array persisted in this process is fitted like NumPy input: one compute (the
    # persist) in all, then passes on the pool of threads; same blocks, same tree, same bits
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0)  # the 8 blocks are kept
    X = da.from_array(np.tile(overlapping, (40, 1)), chunks=(10_000, -1))
    params = dict(n_init=2, max_iter=15, random_state=4, tol=0)
    with count_computes() as counter:
        persisted = KMeans(3, persist=True, **params).fit(X)
    assert counter.computes == 1
    streamed = KMeans(3, persist=False, **params).fit(X)
    np.testing.assert_array_equal(persisted.cluster_centers_, streamed.cluster_centers_)
    assert persisted.inertia_ == streamed.inertia_
    assert persisted.n_iter_ == streamed.n_iter_
    bad = X.copy()
    bad[45_000, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity in block 4 .*first at row 45000"):
        KMeans(3, persist=True, **params).fit(bad)


def test_small_numpy_input_is_cut_into_blocks_for_every_thread():
    X = np.zeros((80_000, 2))
    assert dkmeans.io.check_data(dkmeans.io.to_dask_array(X), merge_rows=False).numblocks[0] == 8
    assert dkmeans.io.check_data(dkmeans.io.to_dask_array(X)).numblocks[0] == 1  # lazy: merged


def test_numpy_input_is_not_copied():
    # da.from_array copies NumPy arrays, and merged blocks would be concatenated: a fit
    # must hold neither a copy of X nor one of its blocks merged
    import tracemalloc

    X = np.random.default_rng(0).standard_normal((200_000, 40)).astype(np.float32)  # 32 MB
    # the compiled kernels loaded (k-means||: more than SMALL_DATA_VALUES values)
    KMeans(4, n_init=1, max_iter=3, random_state=0).fit(X[:30_000])
    tracemalloc.start()
    try:
        km = KMeans(4, n_init=1, max_iter=3, random_state=0).fit(X)
        km.predict(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 2, f"peak {peak / 2**20:.1f} MiB for a {X.nbytes / 2**20:.0f} MiB X"


def test_columns_chunks_are_merged(blobs):
    X = blobs[0]
    init = X[:5]
    split = KMeans(5, init=init).fit(da.from_array(X, chunks=(500, 1)))
    whole = KMeans(5, init=init).fit(X)
    np.testing.assert_allclose(split.cluster_centers_, whole.cluster_centers_, rtol=1e-12)


def test_one_compute_per_iteration(overlapping):
    X = da.from_array(overlapping, chunks=(250, -1))
    with count_computes() as counter:
        km = KMeans(3, init=overlapping[:3], tol=0, max_iter=7, persist=False).fit(X)
    assert km.n_iter_ == 7
    # one read of the first rows (they choose the frame: dkmeans.frame), seven
    # iterations, then one pass for the inertia of the final centres
    assert counter.computes == 1 + 7 + 1
    assert isinstance(km.labels_, da.Array)


def test_max_iter_and_strict_convergence(blobs):
    X = blobs[0]
    km = KMeans(5, init=X[:5], tol=0).fit(X)
    ref = sklearn_fit(X, X[:5], tol=0)
    assert km.n_iter_ == ref.n_iter_ < 300
    km1 = KMeans(5, init=X[:5], max_iter=1).fit(X)
    assert km1.n_iter_ == 1


def test_containers_in_and_out(blobs):
    X = blobs[0]
    km = KMeans(5, random_state=0).fit(X)
    assert isinstance(km.labels_, np.ndarray) and km.labels_.dtype == np.int32
    lazy = da.from_array(X, chunks=(1000, -1))
    assert isinstance(km.predict(lazy), da.Array)
    np.testing.assert_array_equal(km.predict(lazy).compute(), km.predict(X))
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    distances = km.transform(X)
    assert distances.shape == (len(X), 5)
    expected = np.sqrt(((X[:, None] - km.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(distances, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(km.transform(lazy).compute(), distances)
    np.testing.assert_array_equal(distances.argmin(axis=1), km.labels_)
    np.testing.assert_array_equal(KMeans(5, random_state=0).fit_predict(X), km.labels_)
    np.testing.assert_allclose(KMeans(5, random_state=0).fit_transform(X), distances)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_rows=st.integers(60, 25_000),
    n_features=st.integers(1, 5),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    far_from_origin=st.booleans(),
    metric=st.sampled_from(["euclidean", "cosine"]),
    n_init=st.integers(1, 3),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_labels_of_the_final_pass_are_what_predict_gives(
    n_rows, n_features, dtype, far_from_origin, metric, n_init, weighted, seed
):
    # NumPy input keeps its labels from Lloyd's final pass, which measures the centres
    # as stored (rounded to X's dtype, moved back from the fit's frame): on a grid, where
    # ties are everywhere, labels_ must be predict's to the bit, inertia_ score's
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 4, size=(n_rows, n_features)) + (1e3 if far_from_origin else 0.0)
    X = X.astype(dtype)
    weights = rng.uniform(0.5, 2, n_rows) if weighted else None
    km = KMeans(5, init="random", n_init=n_init, max_iter=2, tol=0, metric=metric, random_state=0)
    with mock.patch.object(KMeans, "_labels", autospec=True, side_effect=KMeans._labels) as own:
        km.fit(X, sample_weight=weights)
    assert km.labels_.dtype == np.int32
    np.testing.assert_array_equal(km.labels_, km.predict(X))
    if not own.called:  # the best run made a final pass (it did not stop unchanged)
        assert km.inertia_ == -km.score(X, sample_weight=weights)


def test_a_fit_of_numpy_input_reads_x_for_its_labels_in_its_final_pass(monkeypatch):
    X = np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32)
    labels_passes = []
    monkeypatch.setattr(
        KMeans, "_labels", lambda self, X: labels_passes.append(X) or pytest.fail("a pass")
    )
    km = KMeans(6, max_iter=3, random_state=0).fit(X)
    assert km.n_iter_ == 3 and not labels_passes
    monkeypatch.undo()
    np.testing.assert_array_equal(km.labels_, km.predict(X))
    assert km.inertia_ == -km.score(X)
    assert km.inertia_ == pytest.approx(brute_force_inertia(X, km.cluster_centers_), rel=1e-6)


def test_lazy_labels_for_dask_input(blobs):
    X = da.from_array(blobs[0], chunks=(700, -1))
    km = KMeans(5, random_state=0).fit(X)
    assert isinstance(km.labels_, da.Array)
    labels = km.labels_.compute()
    assert labels.shape == (len(blobs[0]),)
    np.testing.assert_array_equal(labels, km.predict(blobs[0]))


def test_integer_and_boolean_data_are_float64():
    X = np.random.default_rng(0).integers(0, 10, size=(200, 3))
    km = KMeans(3, random_state=0).fit(X)
    assert km.cluster_centers_.dtype == np.float64
    km = KMeans(2, random_state=0).fit(da.from_array(X > 5, chunks=(50, 3)))
    assert km.cluster_centers_.dtype == np.float64


def test_verbose_prints_one_line_per_iteration(blobs, capsys):
    km = KMeans(5, init=blobs[0][:5], verbose=True).fit(blobs[0])
    lines = [line for line in capsys.readouterr().err.splitlines() if "iteration" in line]
    assert len(lines) == km.n_iter_
    assert "inertia" in lines[0] and "shift" in lines[0]


def test_scikit_learn_estimator_checks():
    # scikit-learn's own KMeans fails this check too: weights are not equivalent to
    # repeated samples for a randomly initialised k-means
    expected = {
        "check_sample_weight_equivalence_on_dense_data": "random init depends on sample count",
    }
    check_estimator(KMeans(), expected_failed_checks=expected)


def test_clone_params_pipeline_repr(blobs):
    km = KMeans(4, init="random", random_state=3, persist=False)
    params = km.get_params()
    assert params["n_clusters"] == 4 and params["init"] == "random" and params["persist"] is False
    copy = clone(km).set_params(n_clusters=5)
    assert copy.n_clusters == 5 and km.n_clusters == 4
    pipe = make_pipeline(StandardScaler(), KMeans(5, random_state=0)).fit(blobs[0])
    assert pipe.predict(blobs[0]).shape == (len(blobs[0]),)
    assert "KMeans" in km._repr_html_()


def test_demo_writes_its_picture(tmp_path):
    png = tmp_path / "demo.png"
    done = subprocess.run(
        [sys.executable, "-m", "dkmeans.cli", "demo", "--n-samples", "3000", "--output", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "n=3,000" in done.stdout and "inertia=" in done.stdout and "iterations=" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fit_in_child(queue) -> None:
    X = np.random.default_rng(0).standard_normal((20_000, 4))
    fitted = [
        KMeans(3, n_init=1, random_state=0).fit(data).inertia_
        for data in (X, da.from_array(X, chunks=5000))
    ]
    queue.put(fitted)


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the default start method on Linux")
def test_fit_in_a_forked_child_after_fits_in_the_parent():
    # the child inherits thread pools (ours, Dask's) whose threads it does not have
    import multiprocessing

    X = np.random.default_rng(0).standard_normal((20_000, 4))
    expected = [
        KMeans(3, n_init=1, random_state=0).fit(data).inertia_
        for data in (X, da.from_array(X, chunks=5000))
    ]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fit_in_child, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the fit in the forked child hung")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == expected


def test_fits_leave_dasks_pools_alone():
    # dkmeans runs on its own threads: Dask's threaded scheduler starts no pool of its own
    script = """
import dask.array as da, dask.threaded, numpy as np
from dkmeans import KMeans
X = np.random.default_rng(0).standard_normal((20_000, 4))
for data in (X, da.from_array(X, chunks=5000)):
    KMeans(3, n_init=2, random_state=0).fit(data).predict(data)
assert dask.threaded.default_pool is None and not dask.threaded.pools
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_feature_names_out_and_pandas_output(blobs):
    pd = pytest.importorskip("pandas")
    X = blobs[0]
    ours = KMeans(5, random_state=0).fit(X)
    ref = SklearnKMeans(5, random_state=0, n_init=1).fit(X)
    np.testing.assert_array_equal(ours.get_feature_names_out(), ref.get_feature_names_out())
    assert list(ours.get_feature_names_out()) == [f"kmeans{i}" for i in range(5)]
    distances = clone(ours).set_output(transform="pandas").fit(X).transform(X)
    assert isinstance(distances, pd.DataFrame)
    assert list(distances.columns) == [f"kmeans{i}" for i in range(5)]
    np.testing.assert_allclose(distances.to_numpy(), ours.transform(X))
    with pytest.raises(NotFittedError):
        KMeans(5).get_feature_names_out()


def test_pandas_output_in_a_pipeline(blobs):
    pd = pytest.importorskip("pandas")
    X = blobs[0]

    def pipeline(kmeans):
        return make_pipeline(StandardScaler(), kmeans).set_output(transform="pandas")

    ours = pipeline(KMeans(5, init=StandardScaler().fit_transform(X)[:5]))
    ref = pipeline(SklearnKMeans(5, init=StandardScaler().fit_transform(X)[:5], n_init=1))
    out, expected = ours.fit_transform(X), ref.fit_transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(expected.columns) == [f"kmeans{i}" for i in range(5)]
    np.testing.assert_allclose(out.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-9)
    assert list(ours.get_feature_names_out()) == list(out.columns)


class CountingInit:
    """A callable init as scikit-learn calls it; records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[type, int, np.random.RandomState]] = []

    def __call__(self, X, n_clusters, random_state):
        self.calls.append((type(X), n_clusters, random_state))
        rows = random_state.choice(X.shape[0], n_clusters, replace=False)
        return np.asarray(X[np.sort(rows)]).copy()


@pytest.mark.parametrize("init, runs", [("k-means++", 1), ("k-means||", 1), ("random", 10)])
def test_n_init_auto_means_what_it_means_in_sklearn(overlapping, init, runs):
    X = overlapping
    if init != "k-means||":  # scikit-learn has no k-means||: a k-means++, one run
        assert SklearnKMeans(3, init=init, n_init="auto").fit(X)._n_init == runs
    auto = KMeans(3, init=init, n_init="auto", random_state=2).fit(X)
    explicit = KMeans(3, init=init, n_init=runs, random_state=2).fit(X)
    np.testing.assert_array_equal(auto.cluster_centers_, explicit.cluster_centers_)
    assert auto.inertia_ == explicit.inertia_


def test_n_init_auto_with_explicit_centres_or_a_callable(overlapping):
    X = overlapping
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one run, and no warning about it
        km = KMeans(3, init=X[:3], n_init="auto").fit(X)
    np.testing.assert_allclose(km.cluster_centers_, sklearn_fit(X, X[:3]).cluster_centers_)
    ours, ref = CountingInit(), CountingInit()
    KMeans(3, init=ours, n_init="auto", random_state=0).fit(X)
    SklearnKMeans(3, init=ref, n_init="auto", random_state=0).fit(X)
    assert len(ours.calls) == len(ref.calls) == 10


def first_rows(X, n_clusters, random_state):
    return np.asarray(X[:n_clusters]).copy()


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_callable_init_as_in_sklearn(overlapping, kind, tmp_path):
    X = overlapping
    ours = KMeans(3, init=first_rows).fit(as_container(X, kind, tmp_path))
    ref = SklearnKMeans(3, init=first_rows, n_init=1, algorithm="lloyd").fit(X)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(ours.labels_), ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-9)


@pytest.mark.parametrize("lazy", [False, True])
def test_callable_init_receives_x_a_run_seed_and_every_k(overlapping, lazy):
    X = da.from_array(overlapping, chunks=(500, -1)) if lazy else overlapping
    init = CountingInit()
    km = KMeans(3, init=init, n_init=3, random_state=7).fit(X)
    # lazy input: the validated Dask array, not loaded for the callable
    assert [c[0] for c in init.calls] == [da.Array if lazy else np.ndarray] * 3
    assert [c[1] for c in init.calls] == [3, 3, 3]
    assert all(isinstance(c[2], np.random.RandomState) for c in init.calls)
    # one seed per run, all from random_state: the same fit twice
    draws = [c[2].randint(2**31) for c in init.calls]
    assert len(set(draws)) == 3
    again = KMeans(3, init=CountingInit(), n_init=3, random_state=7).fit(overlapping)
    np.testing.assert_array_equal(again.cluster_centers_, km.cluster_centers_)
    curve_init = CountingInit()
    curve = dkmeans.elbow(X, k_values=[2, 4], init=curve_init, random_state=7)
    assert sorted(c[1] for c in curve_init.calls) == [2, 4]
    assert curve[4] < curve[2]


def test_transform_of_float32_after_a_float64_fit_stays_float32(blobs):
    # a documented difference: scikit-learn returns float64 here (its pairwise distances
    # upcast mixed dtypes); dkmeans keeps the input's float32, half the memory of an
    # (n, k) result, within float32 rounding of scikit-learn's values
    X = blobs[0]
    ours = KMeans(5, init=X[:5]).fit(X)
    ref = sklearn_fit(X, X[:5])
    X32 = X.astype(np.float32)
    distances = ours.transform(X32)
    assert distances.dtype == np.float32 and ref.transform(X32).dtype == np.float64
    np.testing.assert_allclose(distances, ref.transform(X32), rtol=1e-5, atol=1e-5)
    fitted32 = KMeans(5, init=X32[:5]).fit(X32)
    assert fitted32.transform(X).dtype == np.float64 == sklearn_fit(X32, X32[:5]).transform(X).dtype


def blas_threads_seen() -> int:
    """The most threads a BLAS library of this process would use for a call now."""
    from threadpoolctl import threadpool_info

    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: BLAS has one thread anyway")
def test_threads_that_work_on_blocks_call_blas_without_nested_threads(monkeypatch) -> None:
    """predict, transform and score hand blocks to threads of their own with BLAS
    limited so that threads times BLAS threads stay within the cores (nested BLAS
    threads made a predict 20-40x slower on a busy 2-core machine)."""
    import dkmeans.estimator
    import dkmeans.kernels

    seen: list[int] = []

    def seeing(kernel):
        def spy(*args, **kwargs):
            seen.append(blas_threads_seen())
            return kernel(*args, **kwargs)

        return spy

    x = np.random.default_rng(0).normal(size=(4_000, 3))
    model = KMeans(4, init="random", n_init=1, max_iter=2, random_state=0).fit(x)
    chunks = [400] * 10
    monkeypatch.setattr(dkmeans.estimator, "numpy_row_chunks", lambda n, row_bytes: tuple(chunks))
    monkeypatch.setattr(dkmeans.estimator, "_rows_kernel", seeing(dkmeans.estimator._rows_kernel))
    monkeypatch.setattr(
        dkmeans.estimator, "pass_statistics", seeing(dkmeans.estimator.pass_statistics)
    )
    assert blas_threads_seen() >= 2
    model.predict(x), model.transform(x), model.score(x), model.score(da.from_array(x, 500))
    per_thread = max(1, os.cpu_count() // dkmeans.resources.local_threads())
    assert len(seen) >= 3 * len(chunks) + 1 and set(seen) == {per_thread}
    assert blas_threads_seen() >= 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: BLAS has one thread anyway")
def test_blas_limits_nest(monkeypatch) -> None:
    """A pass's BLAS limit inside a fit's is the same limit: nothing is set (setting and
    restoring cost up to 0.17 ms a pass); inside another limit it is set, then restored.
    Either way the libraries run the threads of the limit around it afterwards."""
    from threadpoolctl import threadpool_limits

    from dkmeans.resources import _blas_controller, limit_blas

    controller, limits_set = _blas_controller(), []
    limit = controller.limit
    monkeypatch.setattr(controller, "limit", lambda **kw: limits_set.append(kw) or limit(**kw))
    cores = os.cpu_count()
    for around in (1, cores):
        with threadpool_limits(around, user_api="blas"):
            with limit_blas(cores):  # one BLAS thread for each of `cores` threads
                assert blas_threads_seen() == 1
            assert blas_threads_seen() == around
    assert limits_set == [{"limits": 1, "user_api": "blas"}]  # only inside `cores`
