"""Bad input gets a clear error before any work; degenerate data works; properties."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

import dkmeans
from dkmeans import InvalidParameterError, KMeans
from dkmeans.kernels import pass_statistics
from dkmeans.lloyd import lloyd
from dkmeans.sources import DaskSource, on_threads

from .helpers import brute_force_inertia, count_computes

X_SMALL = np.random.default_rng(0).normal(size=(50, 3))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_clusters": 0}, "'n_clusters' parameter of KMeans must be an int in the range"),
        ({"n_clusters": 2.5}, "'n_clusters'"),
        ({"n_init": 0}, "'n_init' parameter of KMeans must be a str among {'auto'} or an int"),
        ({"n_init": "sometimes"}, "'n_init'"),
        ({"n_init": 2.0}, "'n_init'"),
        ({"max_iter": -1}, "'max_iter'"),
        ({"tol": -1.0}, "'tol'"),
        ({"oversampling_factor": 0}, "'oversampling_factor'"),
        ({"init_rounds": 0}, "'init_rounds'"),
        ({"init_tol": -0.1}, "'init_tol'"),
        ({"init_rows_per_center": 0}, "'init_rows_per_center' .* or None"),
        ({"init_rows_per_center": 12.5}, "'init_rows_per_center'"),
        ({"init": "kmeans"}, "'init' parameter of KMeans must be a str among"),
        ({"init": 3}, "a callable or an array-like"),
        ({"verbose": "loud"}, "'verbose'"),
        ({"init": lambda X, k, random_state: X[:k], "checkpoint": "fit.npz"}, "callable init"),
        ({"n_clusters": 51}, "n_samples=50 should be >= n_clusters=51"),
        ({"init": np.zeros((2, 2)), "n_clusters": 2}, r"initial centers \(2, 2\)"),
        ({"random_state": "seed"}, "'random_state'"),
        ({"persist": "sometimes"}, "'persist'"),
        ({"checkpoint": 3}, "'checkpoint'"),
    ],
)
def test_parameters_are_checked_before_any_work(params, message):
    # as scikit-learn's InvalidParameterError: except ValueError and except TypeError
    # both catch it
    with count_computes() as counter, pytest.raises(InvalidParameterError, match=message) as error:
        KMeans(**params).fit(da.from_array(X_SMALL, chunks=10))
    assert counter.computes == 0
    assert isinstance(error.value, ValueError) and isinstance(error.value, TypeError)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda X: dkmeans.elbow(X, k_values=[0, 2]), "k_values must be positive integers"),
        (lambda X: dkmeans.elbow(X, k_values=[2.5]), "k_values must be positive integers"),
        (lambda X: dkmeans.elbow(X, k_values=[]), "k_values must be positive integers"),
        (lambda X: dkmeans.elbow(X, n_clusters=3), "k_values, not n_clusters"),
        (lambda X: dkmeans.elbow(X, n_clusterz=3), r"does not have: \['n_clusterz'\]"),
        (lambda X: dkmeans.elbow(X, init=np.zeros((2, 3))), "explicit centres fix a single k"),
        (lambda X: dkmeans.elbow(X, n_init=0), "'n_init'"),
        (lambda X: dkmeans.elbow(X, k_values=[2, 51]), "n_samples=50 should be >= n_clusters=51"),
        (lambda X: dkmeans.silhouette_score(X, np.zeros(50), sample_size=1), "sample_size"),
        (lambda X: dkmeans.silhouette_score(X, np.zeros(50), sample_size="all"), "sample_size"),
    ],
)
def test_elbow_and_silhouette_parameters(call, message):
    with count_computes() as counter, pytest.raises(InvalidParameterError, match=message):
        call(da.from_array(X_SMALL, chunks=10))
    assert counter.computes == 0


def test_callable_init_giving_a_wrong_shape_is_refused():
    with pytest.raises(InvalidParameterError, match=r"initial centers \(3, 3\).*\(2, 3\)"):
        KMeans(2, init=lambda X, k, random_state: X[:3]).fit(X_SMALL)


def test_sparse_input_is_refused_with_a_clear_type_error():
    sparse = pytest.importorskip("scipy.sparse")
    X = sparse.random(50, 3, density=0.5, format="csr", random_state=0)
    with pytest.raises(TypeError, match="dense data is required"):
        KMeans(2).fit(X)
    with pytest.raises(TypeError, match="must be dense NumPy arrays, got csr_matrix"):
        KMeans(2).fit(da.from_array(X, chunks=(10, 3), asarray=False))
    fitted = KMeans(2, random_state=0).fit(X.toarray())
    for method in (fitted.predict, fitted.transform, fitted.score):
        with pytest.raises(TypeError, match="dense data is required"):
            method(X)


@pytest.mark.parametrize(
    "X, error, message",
    [
        (np.zeros(5), ValueError, "Expected 2D array"),
        (np.zeros((0, 3)), ValueError, "0 sample"),
        (np.zeros((5, 0)), ValueError, "0 feature"),
        (np.ones((5, 2), dtype=complex), ValueError, "Complex data not supported"),
        (np.array([["a", "b"]] * 5), ValueError, "could not convert|string"),
        (da.zeros(5, chunks=2), ValueError, "Expected a 2D array"),
        (da.zeros((0, 3), chunks=2), ValueError, "0 sample"),
        (da.ones((5, 2), chunks=2, dtype=complex), ValueError, "Complex data not supported"),
        (da.from_array(np.array([["a"]] * 5)), TypeError, "must hold numbers"),
    ],
)
def test_bad_data_is_refused(X, error, message):
    with pytest.raises(error, match=message):
        KMeans(2).fit(X)


def test_more_clusters_than_samples():
    with pytest.raises(ValueError, match="n_samples=50 should be >= n_clusters=51"):
        KMeans(51).fit(da.from_array(X_SMALL))


@pytest.mark.parametrize(
    "weights, message",
    [
        (np.ones(49), r"sample_weight.shape == \(49,\), expected \(50,\)"),
        (-np.ones(50), "non-negative"),
        (np.zeros(50), "zero everywhere"),
        (np.full(50, np.nan), "NaN or infinity"),
    ],
)
def test_bad_sample_weight(weights, message):
    with pytest.raises(ValueError, match=message):
        KMeans(2).fit(da.from_array(X_SMALL, chunks=10), sample_weight=weights)


@pytest.mark.parametrize("lazy_x", [False, True])
@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random", X_SMALL[:2]])
@pytest.mark.parametrize(
    "weights, message",
    [
        # the error names the block as X is cut (here: one block) and the first bad row
        (-np.ones(50), r"non-negative in block 0 \(rows 0 to 49\); first at row 0$"),
        (np.r_[np.ones(23), np.nan, np.ones(26)], r"NaN or infinity in block 0 .*first at row 23$"),
        (np.r_[np.ones(49), np.inf], r"NaN or infinity in block 0 .*first at row 49$"),
        (np.r_[np.ones(31), -1e-9, np.ones(18)], r"non-negative in block 0 .*first at row 31$"),
        (np.zeros(50), "zero everywhere"),
    ],
)
def test_bad_lazy_sample_weight_is_refused_as_it_is_read(weights, message, init, lazy_x):
    X = da.from_array(X_SMALL, chunks=(10, -1)) if lazy_x else X_SMALL
    with pytest.raises(ValueError, match=message):
        KMeans(2, init=init, persist=False).fit(X, sample_weight=da.from_array(weights, chunks=7))


def test_lazy_sample_weight_of_a_wrong_length_is_refused_before_any_work():
    for weights in (da.ones(49, chunks=10), da.ones((50, 1), chunks=10)):
        with count_computes() as counter, pytest.raises(ValueError, match="one weight per sample"):
            KMeans(2).fit(da.from_array(X_SMALL, chunks=10), sample_weight=weights)
        assert counter.computes == 0
    with pytest.raises(ValueError, match=r"sample_weight contains NaN or infinity in block 0"):
        KMeans(2).fit(X_SMALL).score(X_SMALL, sample_weight=da.full(50, np.nan, chunks=25))


def test_bad_lazy_sample_weight_is_named_by_the_block_of_x(monkeypatch):
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0)  # X's blocks of 10 rows are kept
    weights = da.from_array(np.r_[np.ones(33), -2.0, np.ones(16)], chunks=7)
    with pytest.raises(
        ValueError, match=r"must be non-negative in block 3 \(rows 30 to 39\); first at row 33$"
    ):
        KMeans(2, persist=False).fit(da.from_array(X_SMALL, chunks=(10, -1)), sample_weight=weights)


def test_valid_lazy_sample_weight_gives_the_numpy_weights_result():
    weights = np.random.default_rng(2).uniform(0, 2, 50)
    lazy = KMeans(3, random_state=0).fit(X_SMALL, sample_weight=da.from_array(weights, chunks=9))
    eager = KMeans(3, random_state=0).fit(X_SMALL, sample_weight=weights)
    np.testing.assert_array_equal(lazy.cluster_centers_, eager.cluster_centers_)
    assert lazy.inertia_ == eager.inertia_


def test_bad_init_array():
    with pytest.raises(ValueError, match=r"initial centers \(2, 2\).*expected \(2, 3\)"):
        KMeans(2, init=np.zeros((2, 2))).fit(X_SMALL)
    with pytest.raises(ValueError, match="NaN or infinity"):
        KMeans(2, init=np.full((2, 3), np.nan)).fit(X_SMALL)


def test_prediction_needs_a_fit_and_the_same_width():
    with pytest.raises(NotFittedError):
        KMeans(2).predict(X_SMALL)
    km = KMeans(2, random_state=0).fit(X_SMALL)
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 3"):
            method(da.from_array(X_SMALL[:, :2]))
        with pytest.raises(ValueError, match="X has 2 features"):
            method(X_SMALL[:, :2])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_in_lazy_data_is_reported_with_its_block(bad, tmp_path):
    X = X_SMALL.copy()
    X[33, 1] = bad
    z = zarr.create_array(store=str(tmp_path / "x.zarr"), shape=X.shape, chunks=(10, 3), dtype="f8")
    z[:] = X
    # small chunks are merged into one block when read
    with pytest.raises(
        ValueError, match=r"NaN or infinity in block 0 \(rows 0 to 49\); first at row 33"
    ):
        KMeans(2, persist=False).fit(str(tmp_path / "x.zarr"))
    source = DaskSource(da.from_array(X, chunks=(10, 3)), check_finite=True)
    with pytest.raises(ValueError, match=r"in block 3 \(rows 30 to 39\); first at row 33"):
        source.map_reduce(pass_statistics, X[:2], np.array([0, 2]))


def test_nan_in_numpy_is_refused_up_front():
    X = X_SMALL.copy()
    X[3, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        KMeans(2).fit(X)


def test_degenerate_data_that_must_work():
    rng = np.random.default_rng(0)
    constant = np.c_[rng.normal(size=(100, 2)), np.full(100, 7.0)]
    km = KMeans(3, random_state=0).fit(constant)
    assert np.allclose(km.cluster_centers_[:, 2], 7.0)
    single = KMeans(1).fit(np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(single.cluster_centers_, [[1.0, 2.0]])
    assert single.inertia_ == 0
    one_row_last = da.from_array(rng.normal(size=(101, 4)), chunks=((25, 25, 25, 25, 1), (1, 3)))
    km = KMeans(3, random_state=0).fit(one_row_last)
    assert km.labels_.compute().shape == (101,)
    constant_rows = np.ones((20, 2))
    with pytest.warns(Warning, match="distinct clusters"):
        km = KMeans(2, random_state=0).fit(constant_rows)
    assert np.isfinite(km.cluster_centers_).all()


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_float32_values_whose_squares_overflow(init):
    # squares of 1e20 overflow float32 (max 3.4e38): the fit must use float64 where needed
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X64 = (centers[rng.integers(3, size=300)] + rng.normal(size=(300, 2))) * 1e20
    X32 = X64.astype(np.float32)
    assert not np.isfinite(np.einsum("ij,ij->i", X32, X32)).all()
    fitted = KMeans(3, init=init, n_init=3, random_state=0).fit(da.from_array(X32, chunks=70))
    reference = KMeans(3, init=init, n_init=3, random_state=0).fit(X32.astype(np.float64))
    order = np.lexsort(fitted.cluster_centers_.T), np.lexsort(reference.cluster_centers_.T)
    np.testing.assert_allclose(
        fitted.cluster_centers_[order[0]], reference.cluster_centers_[order[1]], rtol=1e-4
    )
    assert fitted.cluster_centers_.dtype == np.float32
    assert np.isfinite(fitted.inertia_)
    np.testing.assert_allclose(
        fitted.inertia_,
        brute_force_inertia(X32.astype(np.float64), fitted.cluster_centers_),
        rtol=1e-4,
    )
    np.testing.assert_array_equal(fitted.predict(X32), fitted.labels_.compute())


def test_input_store_is_not_modified(tmp_path):
    z = zarr.create_array(store=str(tmp_path / "x.zarr"), shape=(60, 3), chunks=(7, 3), dtype="f4")
    z[:] = np.resize(X_SMALL, (60, 3))
    before = {p: p.read_bytes() for p in (tmp_path / "x.zarr").rglob("*") if p.is_file()}
    KMeans(3, random_state=0, persist=False).fit(str(tmp_path / "x.zarr"))
    after = {p: p.read_bytes() for p in (tmp_path / "x.zarr").rglob("*") if p.is_file()}
    assert before == after


@st.composite
def problems(draw):
    n = draw(st.integers(1, 60))
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, min(n, 6)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**16))
    X = np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=4))) if n > 1 else []
    chunks = tuple(np.diff([0, *cuts, n]).tolist())
    return X, k, chunks


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_properties_over_shapes_chunkings_and_dtypes(problem):
    X, k, chunks = problem
    lazy = da.from_array(X, chunks=(chunks, -1))
    init = X[:k].astype(np.float64) + 1e-3 * np.arange(k)[:, None]
    km = KMeans(k, init=init, max_iter=20).fit(lazy)
    labels = km.labels_.compute()
    assert labels.min() >= 0 and labels.max() < k
    np.testing.assert_array_equal(km.predict(X), labels)
    assert km.inertia_ == pytest.approx(
        brute_force_inertia(X, km.cluster_centers_), rel=1e-5, abs=1e-6
    )
    whole = KMeans(k, init=init, max_iter=20).fit(X)
    tolerance = 1e-4 if X.dtype == np.float32 else 1e-9
    np.testing.assert_allclose(
        km.cluster_centers_, whole.cluster_centers_, rtol=tolerance, atol=tolerance
    )
    stats = DaskSource(lazy).map_reduce(
        pass_statistics, km.cluster_centers_.astype(np.float64), np.array([0, k])
    )
    assert stats.counts.sum() == len(X)
    reports = []
    lloyd(DaskSource(lazy), [init], max_iter=20, tol=0, on_iteration=reports.append)
    inertias = [report.inertia for report in reports]
    assert all(b <= a * (1 + 1e-6) + 1e-9 for a, b in zip(inertias, inertias[1:], strict=False))


def test_blocks_on_threads_come_back_in_order_with_the_first_failing_blocks_error():
    def block_result(i: int) -> int:
        if i in (3, 6):
            raise ValueError(f"block {i}")
        return i * i

    assert on_threads(lambda i: i * i, 9, 2) == [i * i for i in range(9)]
    for _ in range(5):  # whichever thread meets which bad block
        with pytest.raises(ValueError, match="block 3"):
            on_threads(block_result, 8, 2)
