"""MiniBatchKMeans: quality against KMeans, partial_fit against fit, weights, bad input,
the scikit-learn API, bounded memory on a streamed store, the same bits on every scheduler."""

from __future__ import annotations

import json
import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.cluster import MiniBatchKMeans as ScikitLearnMiniBatchKMeans
from sklearn.cluster import kmeans_plusplus
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import dkmeans.io
from dkmeans import InvalidParameterError, KMeans, MiniBatchKMeans, engine
from dkmeans.batches import Rows, batch_spans, run_order, source_blocks
from dkmeans.cli import main
from dkmeans.minibatch import MiniBatchState, minibatch_step, run_batches
from dkmeans.sources import InMemorySource

from .helpers import brute_force_inertia

#: The bound the tests hold mini-batch inertia to: at most this much above KMeans's.
INERTIA_BOUND = 1.01


@pytest.fixture(scope="module")
def mixture() -> np.ndarray:
    """12,000 float32 points around 10 overlapping centres in 8 dimensions."""
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=3.0, size=(10, 8))
    return (centers[rng.integers(10, size=12_000)] + rng.normal(size=(12_000, 8))).astype(
        np.float32
    )


def write_store(path, X: np.ndarray, chunk_rows: int) -> str:
    z = zarr.create_array(
        store=str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype
    )
    z[:] = X
    return str(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inertia_within_one_percent_of_kmeans_from_the_same_start(mixture, seed):
    start, _ = kmeans_plusplus(mixture, 10, random_state=seed)
    km = KMeans(10, init=start).fit(mixture)
    mb = MiniBatchKMeans(10, init=start, random_state=seed).fit(mixture)
    assert mb.inertia_ == pytest.approx(brute_force_inertia(mixture, mb.cluster_centers_), rel=1e-5)
    assert mb.inertia_ <= INERTIA_BOUND * km.inertia_
    assert isinstance(mb.labels_, np.ndarray)
    np.testing.assert_array_equal(mb.labels_, mb.predict(mixture))
    assert mb.cluster_centers_.dtype == np.float32
    assert 1 <= mb.n_iter_ <= 100 and mb.n_steps_ >= 12


def test_cosine_is_spherical_and_close_to_kmeans(mixture):
    X = mixture + 1.0  # directions that differ
    best = KMeans(10, n_init=3, metric="cosine", random_state=0).fit(X).inertia_
    mb = MiniBatchKMeans(10, metric="cosine", random_state=0).fit(X)
    np.testing.assert_allclose(np.linalg.norm(mb.cluster_centers_, axis=1), 1, rtol=1e-6)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    cosines = unit.astype(np.float64) @ mb.cluster_centers_.T.astype(np.float64)
    assert mb.inertia_ == pytest.approx(float((1 - cosines.max(axis=1)).sum()), rel=1e-4)
    assert mb.inertia_ <= INERTIA_BOUND * best
    # the rows are divided by their norms as they are read: scaling them by powers of two
    # changes no bit of the fit
    scales = 2.0 ** np.random.default_rng(0).integers(-6, 7, size=(len(X), 1))
    scaled = MiniBatchKMeans(10, metric="cosine", random_state=0).fit(X * scales.astype(X.dtype))
    np.testing.assert_array_equal(scaled.cluster_centers_, mb.cluster_centers_)
    assert scaled.inertia_ == mb.inertia_


def test_default_start_is_as_good_as_kmeans_best_of_three(mixture):
    best = KMeans(10, n_init=3, random_state=0).fit(mixture).inertia_
    for seed in (0, 1):
        assert MiniBatchKMeans(10, random_state=seed).fit(mixture).inertia_ <= INERTIA_BOUND * best


def test_batches_are_consecutive_rows_across_blocks(implementation):
    x = np.arange(23.0)[:, None]
    blocks = [Rows(x[a:b], np.arange(a, b, dtype=float)) for a, b in [(0, 5), (5, 6), (6, 23)]]
    batches = [
        rows.take(slice(first, min(first + 4, stop)))
        for rows, start, stop in batch_spans(blocks, 4)
        for first in range(start, stop, 4)
    ]
    assert [len(b) for b in batches] == [4] * 5 + [3]
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b.weights for b in batches]), x[:, 0])
    # shuffled: the rows of every block copied in a run order, one seed drawn per block
    source = InMemorySource.of_array(x, 2 * x[:, 0], chunks=(5, 1, 17))
    shuffled = list(source_blocks(source, [2, 0, 1], np.random.default_rng(0)))
    seeds = np.random.default_rng(0).integers(2**63, size=3)
    expected = [6 + run_order(17, seeds[0]), run_order(5, seeds[1]), 5 + run_order(1, seeds[2])]
    for block, rows in zip(shuffled, expected, strict=True):
        np.testing.assert_array_equal(block.x[:, 0], rows)
        np.testing.assert_array_equal(block.weights, 2 * rows)
        np.testing.assert_array_equal(block.take(slice(2, None)).x[:, 0], rows[2:])


@settings(max_examples=30, deadline=None)
@given(n_rows=st.integers(1, 300), run_rows=st.integers(1, 40), seed=st.integers(0, 2**63 - 1))
def test_run_order_takes_every_row_once_in_runs(n_rows, run_rows, seed):
    order = run_order(n_rows, seed, run_rows)
    np.testing.assert_array_equal(np.sort(order), np.arange(n_rows))
    starts = np.flatnonzero(order % run_rows == 0)  # every run whole, from its first row
    runs = np.split(order, starts[1:])
    assert starts[0] == 0 and len(runs) == -(-n_rows // run_rows)
    for run in runs:
        np.testing.assert_array_equal(run, np.arange(run[0], min(run[0] + run_rows, n_rows)))
    np.testing.assert_array_equal(order, run_order(n_rows, seed, run_rows))


@pytest.mark.parametrize("container", ["numpy", "dask"])
def test_partial_fit_over_batches_equals_one_epoch(mixture, container, implementation):
    X = mixture[:3000]
    params = dict(
        init=X[:10], batch_size=256, max_iter=1, max_no_improvement=None, shuffle=False,
        random_state=0, reassignment_ratio=0.2,
    )  # fmt: skip
    data = X if container == "numpy" else da.from_array(X, chunks=(700, -1))  # batches span blocks
    fitted = MiniBatchKMeans(10, **params).fit(data)
    streamed = MiniBatchKMeans(10, **params)
    for start in range(0, len(X), 256):
        streamed.partial_fit(X[start : start + 256])
    np.testing.assert_array_equal(fitted.cluster_centers_, streamed.cluster_centers_)
    np.testing.assert_array_equal(fitted._state.counts, streamed._state.counts)
    assert fitted.n_steps_ == streamed.n_steps_ == 12
    at_once = MiniBatchKMeans(10, **params).partial_fit(data)
    np.testing.assert_array_equal(fitted.cluster_centers_, at_once.cluster_centers_)


@pytest.mark.skipif("numba" not in engine.available(), reason="numba is not installed")
def test_engines_agree_through_reassignments_and_early_stopping(mixture):
    X = mixture[:4000]
    weights = np.random.default_rng(5).uniform(0, 2, size=len(X))
    start = np.concatenate([X[:7], np.full((3, 8), 50.0)])  # three centres get no rows
    params = dict(
        init=start, batch_size=200, max_iter=20, max_no_improvement=3, compute_labels=False,
        random_state=0,
    )  # fmt: skip
    fits = {}
    for name in engine.available():
        with dask.config.set({engine.CONFIG_KEY: name}):
            fits[name] = MiniBatchKMeans(10, **params).fit(X, sample_weight=weights)
    compiled, numpy = fits["numba"], fits["numpy"]
    assert compiled.n_steps_ == numpy.n_steps_ and compiled.n_iter_ == numpy.n_iter_ < 20
    np.testing.assert_allclose(compiled.cluster_centers_, numpy.cluster_centers_, rtol=1e-5)
    np.testing.assert_allclose(compiled._state.counts, numpy._state.counts, rtol=1e-9)
    assert np.abs(compiled.cluster_centers_).max() < 20  # the far centres were reassigned


def test_centres_too_large_for_float32_are_multiplied_in_float64(implementation):
    x = np.random.default_rng(0).normal(scale=1e19, size=(600, 4)).astype(np.float32)
    centers = {}
    for dtype in (np.float32, np.float64):  # float64 rows: a float64 GEMM anyway
        state = MiniBatchState.start(x[:3], seed=0)
        run_batches(
            state, Rows(x.astype(dtype), None), 0, len(x), rows_per_batch=100, batch_size=100,
            reassignment_ratio=0,
        )  # fmt: skip
        centers[dtype] = state.centers
    assert np.isfinite(centers[np.float32]).all()
    np.testing.assert_array_equal(centers[np.float32], centers[np.float64])


def test_step_is_the_running_mean_of_the_rows_given():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    state = MiniBatchState.start(np.array([[-1.0, 0, 0], [1.0, 0, 0]]), seed=0)
    first, second = Rows(x[:20], None), Rows(x[20:], None)
    minibatch_step(state, first, batch_size=20, reassignment_ratio=0)
    minibatch_step(state, second, batch_size=30, reassignment_ratio=0)
    # the second step assigned its rows to the centres after the first
    c0 = np.array([[-1.0, 0, 0], [1.0, 0, 0]])
    near0 = ((x[:20, None] - c0) ** 2).sum(-1).argmin(1)
    c1 = np.stack([x[:20][near0 == j].mean(0) for j in range(2)])
    near1 = ((x[20:, None] - c1) ** 2).sum(-1).argmin(1)
    expected = np.stack(
        [np.concatenate([x[:20][near0 == j], x[20:][near1 == j]]).mean(0) for j in range(2)]
    )
    np.testing.assert_allclose(state.centers, expected, rtol=1e-12)
    np.testing.assert_array_equal(
        state.counts, [np.sum(near0 == j) + np.sum(near1 == j) for j in range(2)]
    )


def test_reassignment_check_is_scheduled_before_the_update_as_in_scikit_learn(implementation):
    # a first batch of fewer than 10 k rows is checked (no centre had weight before it),
    # although every centre gets rows: the centre given 1 row of 12 is reassigned, and
    # its count becomes the other's, as scikit-learn's partial_fit does
    x = np.concatenate([np.zeros((11, 2)), np.full((1, 2), 10.0)])
    x += np.random.default_rng(0).normal(scale=0.1, size=x.shape)
    centers = np.array([[0.0, 0.0], [10.0, 10.0]])
    state = MiniBatchState.start(centers, seed=0)
    minibatch_step(state, Rows(x, None), batch_size=12, reassignment_ratio=0.1)
    reference = ScikitLearnMiniBatchKMeans(
        2, init=centers, n_init=1, batch_size=12, reassignment_ratio=0.1, random_state=0
    ).partial_fit(x)
    np.testing.assert_array_equal(state.counts, [11, 11])
    np.testing.assert_array_equal(state.counts, reference._counts)


def test_integer_weights_are_repeated_rows(mixture):
    rng = np.random.default_rng(1)
    w = rng.integers(0, 4, size=len(mixture[:400]))
    x = mixture[:400].astype(np.float64)
    start = x[:10]
    weighted = MiniBatchState.start(start, seed=0)
    repeated = MiniBatchState.start(start, seed=0)
    minibatch_step(weighted, Rows(x, w.astype(float)), batch_size=400, reassignment_ratio=0)
    minibatch_step(
        repeated, Rows(np.repeat(x, w, axis=0), None), batch_size=400, reassignment_ratio=0
    )
    np.testing.assert_allclose(weighted.centers, repeated.centers, rtol=1e-10)
    np.testing.assert_array_equal(weighted.counts, repeated.counts)
    # over whole fits: the weighted fit is as good on the repeated data
    X, weights = mixture[:6000], rng.integers(0, 4, size=6000)
    big = np.repeat(X, weights, axis=0)
    on_weights = MiniBatchKMeans(10, random_state=0).fit(X, sample_weight=weights)
    on_repeats = KMeans(10, random_state=0).fit(big)
    assert on_weights.inertia_ == pytest.approx(
        brute_force_inertia(X, on_weights.cluster_centers_, weights), rel=1e-5
    )
    assert on_weights.inertia_ <= INERTIA_BOUND * on_repeats.inertia_
    # rows of weight zero pull no centre
    zero = weights == 0
    moved = MiniBatchKMeans(10, random_state=0).fit(
        np.where(zero[:, None], 1e3, X), sample_weight=weights
    )
    assert np.abs(moved.cluster_centers_).max() < 100


@pytest.mark.parametrize(
    "params, match",
    [
        ({"batch_size": 0}, "'batch_size' parameter of MiniBatchKMeans must be an int"),
        ({"max_no_improvement": -1}, "'max_no_improvement'"),
        ({"init_size": 0}, "'init_size'"),
        ({"reassignment_ratio": -0.1}, "'reassignment_ratio'"),
        ({"compute_labels": "yes"}, "'compute_labels'"),
        ({"shuffle": 1}, "'shuffle'"),
        ({"n_clusters": 0}, "'n_clusters' parameter of MiniBatchKMeans"),
        ({"init": "kmeans"}, "'init' parameter of MiniBatchKMeans"),
        ({"metric": "manhattan"}, "'metric' parameter of MiniBatchKMeans"),
        ({"init": np.zeros((2, 3))}, "shape of the initial centers"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(params, match):
    X = da.from_array(np.zeros((100, 2)), chunks=50).map_blocks(_no_compute, dtype=float)
    with pytest.raises(InvalidParameterError, match=match):
        MiniBatchKMeans(**{"n_clusters": 3, **params}).fit(X)
    with pytest.raises(InvalidParameterError, match=match):
        MiniBatchKMeans(**{"n_clusters": 3, **params}).partial_fit(X)


def _no_compute(block):
    raise AssertionError("X was read")


def test_bad_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0)  # the store's chunks are the blocks
    X = np.random.default_rng(0).normal(size=(200, 3))
    with pytest.raises(InvalidParameterError, match="n_samples=200 should be >= n_clusters=300"):
        MiniBatchKMeans(300).fit(X)
    bad = X.copy()
    bad[150, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MiniBatchKMeans(3).fit(bad)
    lazy = write_store(tmp_path / "bad.zarr", bad, 50)
    with pytest.raises(ValueError, match="NaN or infinity in block 3 .*first at row 150"):
        MiniBatchKMeans(3, init=X[:3], persist=False).fit(lazy)
    fitted = MiniBatchKMeans(3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but MiniBatchKMeans is expecting 3"):
        fitted.predict(X[:, :2])
    with pytest.raises(ValueError, match="X has 2 features, but MiniBatchKMeans is expecting 3"):
        fitted.partial_fit(X[:, :2])
    with pytest.raises(ValueError, match="sample_weight"):
        MiniBatchKMeans(3).fit(X, sample_weight=-np.ones(200))
    good = write_store(tmp_path / "good.zarr", X, 50)
    for init in (X[:3], "k-means||"):  # known only once the epoch (or the sample) read them
        with pytest.raises(ValueError, match="sample_weight is zero everywhere"):
            MiniBatchKMeans(3, init=init).fit(good, sample_weight=da.zeros(200, chunks=50))


def test_scikit_learn_api(mixture):
    mb = MiniBatchKMeans(5, batch_size=500, random_state=0)
    assert clone(mb).get_params() == mb.get_params()
    assert mb.set_params(batch_size=200).batch_size == 200
    pipe = make_pipeline(StandardScaler(), MiniBatchKMeans(5, random_state=0)).fit(mixture)
    assert pipe.predict(mixture[:7]).shape == (7,)
    fitted = MiniBatchKMeans(5, random_state=0, compute_labels=False).fit(mixture)
    assert not hasattr(fitted, "labels_")
    assert fitted.inertia_ > 0  # the smoothed batch inertia, as scikit-learn reports it
    assert fitted.get_feature_names_out().tolist() == [f"minibatchkmeans{i}" for i in range(5)]
    assert fitted.transform(mixture[:3]).shape == (3, 5)
    assert fitted.score(mixture) == pytest.approx(
        -brute_force_inertia(mixture, fitted.cluster_centers_), rel=1e-5
    )


def test_scikit_learn_estimator_checks():
    expected = {
        # batches of repeated rows are other batches: the path differs, as in scikit-learn
        "check_sample_weight_equivalence_on_dense_data": "batches change with repeated rows",
    }
    check_estimator(MiniBatchKMeans(3, random_state=0), expected_failed_checks=expected)


def test_lazy_input_gives_lazy_labels(mixture, tmp_path):
    path = write_store(tmp_path / "x.zarr", mixture, 2000)
    mb = MiniBatchKMeans(10, random_state=0, batch_size=512).fit(path)
    assert isinstance(mb.labels_, da.Array)
    assert isinstance(mb.predict(da.from_array(mixture, chunks=3000)), da.Array)
    np.testing.assert_array_equal(mb.labels_.compute(), mb.predict(mixture))


def test_memory_is_bounded_by_blocks_on_a_streamed_store(tmp_path, monkeypatch):
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0)  # keep the store's small chunks as blocks
    X = np.random.default_rng(0).normal(size=(200_000, 32)).astype(np.float32)  # 25.6 MB
    path = write_store(tmp_path / "big.zarr", X, 5000)  # 40 blocks of 640 kB
    MiniBatchKMeans(4, random_state=0, max_iter=1).fit(X[:100])  # compiled kernels loaded
    tracemalloc.start()
    try:
        # the whole fit: the sample pass, one epoch, the inertia pass (a small sample:
        # every block's partial sample is up to init_size rows in float64)
        mb = MiniBatchKMeans(
            4, random_state=0, batch_size=2048, init_size=300, max_iter=1,
            max_no_improvement=None, persist=False,
        ).fit(path)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mb.n_steps_ == 98
    assert peak < X.nbytes / 4, f"peak {peak / 2**20:.1f} MiB for a {X.nbytes / 2**20:.0f} MiB X"


@pytest.fixture(scope="module")
def cluster_client():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def test_same_bits_on_every_scheduler(mixture, tmp_path, cluster_client):
    path = write_store(tmp_path / "x.zarr", mixture, 1500)
    params = dict(random_state=4, batch_size=300, persist=False)
    threads = MiniBatchKMeans(10, **params).fit(path)
    with dask.config.set(scheduler="sync"):
        single = MiniBatchKMeans(10, **params).fit(path)
    with cluster_client.as_current():
        distributed = MiniBatchKMeans(10, **params).fit(path)
    for other in (single, distributed):
        np.testing.assert_array_equal(threads.cluster_centers_, other.cluster_centers_)
        assert threads.inertia_ == other.inertia_
        assert threads.n_steps_ == other.n_steps_


def test_cli_fit_mini_batch_writes_the_result_store(mixture, tmp_path, capsys):
    path = write_store(tmp_path / "x.zarr", mixture, 3000)
    out = str(tmp_path / "result.zarr")
    args = ["fit", path, "--n-clusters", "10", "--mini-batch", "--batch-size", "500"]
    assert main([*args, "--seed", "0", "--json", "--quiet", "--out", out]) == 0
    summary = json.loads(capsys.readouterr().out)
    same = MiniBatchKMeans(10, batch_size=500, n_init=1, random_state=0).fit(path)
    assert summary["mini_batch"] and summary["n_steps"] == same.n_steps_
    assert summary["inertia"] == same.inertia_ and summary["n_iter"] == same.n_iter_
    result = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(result["cluster_centers"][...], same.cluster_centers_)
    np.testing.assert_array_equal(result["labels"][...], same.labels_.compute())
    assert main(["fit", path, "--n-clusters", "10", "--batch-size", "500"]) == 2
    assert "--batch-size needs --mini-batch" in capsys.readouterr().err


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_labels_come_from_the_inertia_pass_as_predict_gives_them(monkeypatch, metric, dtype):
    # one pass after the epochs gives inertia_ and labels_, from the centres as stored:
    # on a grid far from the origin (ties everywhere, the frame shifted), predict's to the bit
    rng = np.random.default_rng(5)
    X = (rng.integers(1, 4, size=(6_000, 3)) + 1e3).astype(dtype)
    own_passes = []
    monkeypatch.setattr(MiniBatchKMeans, "_labels", lambda self, X: own_passes.append(X))
    km = MiniBatchKMeans(4, batch_size=256, metric=metric, random_state=0).fit(X)
    assert not own_passes
    monkeypatch.undo()
    assert km.labels_.dtype == np.int32
    np.testing.assert_array_equal(km.labels_, km.predict(X))
    assert km.inertia_ == -km.score(X)
