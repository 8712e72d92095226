"""Spherical k-means, ``KMeans(metric="cosine")``: against a brute-force spherical Lloyd in
NumPy on the same data and start, for every container and every init."""

from __future__ import annotations

import json
import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.metrics import silhouette_score as sklearn_silhouette

from dkmeans import KMeans, elbow, estimator, seeding, silhouette_score
from dkmeans.checkpoint import CheckpointMismatchError
from dkmeans.cli import main
from dkmeans.cosine import unit_rows
from dkmeans.exceptions import InvalidParameterError
from dkmeans.kernels import pass_statistics
from dkmeans.sources import kernel_name, prepared_kernel

K = 4


def directions(n: int, d: int, k: int, seed: int, kappa: float = 3.0) -> np.ndarray:
    """Rows around ``k`` random directions (a von Mises-Fisher-like mixture), each row
    scaled by a random positive factor: only the directions carry the clusters."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    rows = means[rng.integers(k, size=n)] * kappa + rng.normal(size=(n, d))
    return rows * rng.uniform(0.05, 20.0, size=(n, 1))


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return directions(600, 6, K, seed=0)


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def spherical_lloyd(X, centers, weights=None, max_iter=300):
    """Brute-force spherical k-means: assign by largest cosine, centre = normalised
    weighted mean, until the labels stop changing. Returns centres, labels, inertia."""
    rows, centers = unit(X), unit(centers)
    weights = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
    labels = None
    for _ in range(max_iter):
        new_labels = np.argmax(rows @ centers.T, axis=1)
        sums = np.zeros_like(centers)
        np.add.at(sums, new_labels, weights[:, None] * rows)
        assert (np.linalg.norm(sums, axis=1) > 0).all(), "the test data leaves no cluster empty"
        centers = unit(sums)
        if labels is not None and np.array_equal(labels, new_labels):
            break
        labels = new_labels
    similarity = rows @ centers.T
    labels = np.argmax(similarity, axis=1)
    return centers, labels, float(np.sum(weights * (1 - similarity.max(axis=1))))


def container(kind: str, X: np.ndarray, tmp_path):
    if kind == "numpy":
        return X
    if kind == "dask":
        return da.from_array(X, chunks=(150, X.shape[1]))
    path = str(tmp_path / "x.zarr")
    zarr.create_array(store=path, data=X, chunks=(170, X.shape[1]))
    return path


def computed(labels) -> np.ndarray:
    return labels.compute() if isinstance(labels, da.Array) else labels


def assert_same_fit(km: KMeans, centers, labels, inertia) -> None:
    np.testing.assert_allclose(km.cluster_centers_, centers, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(computed(km.labels_), labels)
    assert km.inertia_ == pytest.approx(inertia, rel=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_explicit_init_matches_brute_force(X, kind, tmp_path, implementation):
    init = X[[0, 1, 2, 5]] * 7.0  # the centres' lengths do not matter either
    weights = np.random.default_rng(1).uniform(0.5, 2.0, size=len(X))
    expected = spherical_lloyd(X, init, weights)
    km = KMeans(K, init=init, metric="cosine", tol=0).fit(
        container(kind, X, tmp_path), sample_weight=weights
    )
    assert_same_fit(km, *expected)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1, atol=1e-15)


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_seeded_fit_matches_brute_force_from_its_own_start(X, kind, init, tmp_path, starts):
    km = KMeans(K, init=init, metric="cosine", tol=0, random_state=3).fit(
        container(kind, X, tmp_path)
    )
    (start,) = starts[0]
    # the start is unit vectors; "random" and "k-means++" start on (unit) rows of X
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1, atol=1e-12)
    if init != "k-means||":
        similarity = start @ unit(X).T
        assert np.allclose(similarity.max(axis=1), 1, atol=1e-12)
    assert_same_fit(km, *spherical_lloyd(X, start))


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_seeded_fits_are_as_good_as_brute_force(X, init, monkeypatch):
    """Over eight seeds, the median fit is as good as the best of ten brute-force fits
    from random rows (a seeding may land in a local optimum now and then, as any)."""
    monkeypatch.setattr(seeding, "SMALL_DATA_VALUES", 0, raising=False)
    rng = np.random.default_rng(0)
    best = min(spherical_lloyd(X, X[rng.choice(len(X), K, replace=False)])[2] for _ in range(10))
    fits = [KMeans(K, init=init, metric="cosine", random_state=s).fit(X) for s in range(8)]
    assert np.median([km.inertia_ for km in fits]) <= best * 1.001


@pytest.fixture
def starts(monkeypatch) -> list[list[np.ndarray]]:
    """The initial centres of every fit in the test, as the fits hand them to Lloyd (small
    data seeded by the sampling passes, as large data is)."""
    monkeypatch.setattr(seeding, "SMALL_DATA_VALUES", 0, raising=False)
    seen = []
    real_lloyd = estimator.lloyd

    def spy(source, initial, **kwargs):
        seen.append([np.array(c) for c in initial])
        return real_lloyd(source, initial, **kwargs)

    monkeypatch.setattr(estimator, "lloyd", spy)
    return seen


def test_kmeans_plusplus_samples_by_cosine_distance(X, starts):
    """On unit rows ``||x̂ - ĉ||² = 2 (1 - cos)``: cosine k-means++ draws what Euclidean
    k-means++ draws on the normalised rows."""
    KMeans(K, init="k-means++", metric="cosine", random_state=5, max_iter=1).fit(X)
    KMeans(K, init="k-means++", random_state=5, max_iter=1).fit(unit(X))
    np.testing.assert_allclose(starts[0][0], starts[1][0], atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), spread=st.integers(0, 60))
def test_results_do_not_depend_on_the_rows_lengths(X, seed, spread):
    """Rows scaled by powers of two normalise to the same bits: the same fit, bitwise,
    seeding included; scaled by any positive factors: the same fit up to rounding."""
    rng = np.random.default_rng(seed)
    exponents = rng.integers(-spread, spread + 1, size=len(X))
    factors = np.exp(rng.uniform(-spread / 4, spread / 4, size=len(X)))
    reference = KMeans(K, metric="cosine", random_state=0).fit(X)
    scaled = KMeans(K, metric="cosine", random_state=0).fit(X * np.exp2(exponents)[:, None])
    np.testing.assert_array_equal(scaled.cluster_centers_, reference.cluster_centers_)
    np.testing.assert_array_equal(scaled.labels_, reference.labels_)
    assert scaled.inertia_ == reference.inertia_
    init = reference.cluster_centers_
    anyhow = KMeans(K, init=init, metric="cosine").fit(X * factors[:, None])
    np.testing.assert_allclose(anyhow.cluster_centers_, reference.cluster_centers_, atol=1e-12)
    np.testing.assert_array_equal(anyhow.labels_, reference.labels_)


def test_zero_row_is_refused_with_its_index(X):
    bad = X.copy()
    bad[437] = 0
    with pytest.raises(ValueError, match="row 437 of X.*all zeros"):
        KMeans(K, metric="cosine").fit(bad)
    with pytest.raises(ValueError, match=r"row 437 of X in block \d+ is all zeros"):
        KMeans(K, metric="cosine", persist=False).fit(da.from_array(bad, chunks=200))
    km = KMeans(K, metric="cosine", random_state=0).fit(X)
    lazy = km.predict(da.from_array(bad, chunks=200))  # lazy: checked as it is read
    with pytest.raises(ValueError, match=r"row 437 of X in block \d+"):
        lazy.compute()
    with pytest.raises(ValueError, match="row 437 of X"):
        km.transform(bad)
    KMeans(K).fit(bad)  # Euclidean k-means has no use for directions


def test_zero_initial_centre_is_an_invalid_parameter(X):
    init = X[:K].copy()
    init[2] = 0
    with pytest.raises(InvalidParameterError, match="centre 2 is zero"):
        KMeans(K, init=init, metric="cosine").fit(X)


def fail():
    raise AssertionError("X was read")


@pytest.mark.parametrize("metric", ["cos", "Cosine", None, 1])
def test_metric_is_validated_before_any_work(metric):
    never_read = da.from_delayed(dask.delayed(fail)(), shape=(10, 2), dtype=float)
    with pytest.raises(InvalidParameterError, match="'metric' parameter of KMeans"):
        KMeans(2, metric=metric).fit(never_read)


def test_metric_is_a_parameter():
    km = KMeans(3, metric="cosine")
    assert km.get_params()["metric"] == "cosine"
    assert clone(km).metric == "cosine"
    assert KMeans().metric == "euclidean"
    assert km.set_params(metric="euclidean").metric == "euclidean"


def test_predict_transform_score_agree_with_inertia(X):
    km = KMeans(K, metric="cosine", random_state=0).fit(X)
    similarity = unit(X) @ unit(km.cluster_centers_).T
    distances = km.transform(X)
    np.testing.assert_allclose(distances, 1 - similarity, atol=1e-12)
    np.testing.assert_array_equal(km.predict(X), np.argmax(similarity, axis=1))
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert distances.min(axis=1).sum() == pytest.approx(km.inertia_, rel=1e-12)
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-12)
    lazy = da.from_array(X * 3.0, chunks=250)
    np.testing.assert_allclose(km.transform(lazy).compute(), distances, atol=1e-12)
    np.testing.assert_array_equal(km.predict(lazy).compute(), km.labels_)
    assert km.score(lazy) == pytest.approx(-km.inertia_, rel=1e-12)
    # centres set by hand (or stored in float32) are compared by direction too
    km.cluster_centers_ = km.cluster_centers_ * 5.0
    np.testing.assert_allclose(km.transform(X), distances, atol=1e-12)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-12)


def test_empty_cluster_moves_to_the_least_similar_row():
    # three tight directions, and a fourth initial centre that no row is nearest to
    rows = np.repeat(np.eye(3), 20, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(60, 3))
    rows[17] = [1.0, 0.9, 0.0]  # the row least similar to its own direction's centre
    init = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, -1.0, -1.0]])
    km = KMeans(4, init=init, metric="cosine", max_iter=1).fit(rows)
    np.testing.assert_allclose(km.cluster_centers_[3], unit(rows[17:18])[0], atol=1e-15)


def test_elbow_shares_passes_and_equals_single_fits(X):
    curve = elbow(X, k_values=[2, 3, 5], metric="cosine", random_state=0)
    for k, inertia in curve.items():
        assert inertia == KMeans(k, metric="cosine", random_state=0).fit(X).inertia_
    assert curve[2] > curve[3] > curve[5]
    assert curve[2] < elbow(X, k_values=[2], random_state=0)[2]  # a different measure


def test_silhouette_matches_scikit_learn(X):
    labels = KMeans(K, metric="cosine", random_state=0).fit(X).labels_
    expected = sklearn_silhouette(X, labels, metric="cosine")
    assert silhouette_score(X, labels, sample_size=None, metric="cosine") == pytest.approx(
        expected, rel=1e-12
    )
    lazy = silhouette_score(da.from_array(X, chunks=100), labels, metric="cosine")
    assert lazy == pytest.approx(expected, rel=1e-12)
    assert silhouette_score(X, labels, sample_size=None) != pytest.approx(expected)
    with pytest.raises(InvalidParameterError, match="metric"):
        silhouette_score(X, labels, metric="manhattan")


def test_checkpoint_refuses_another_metric(X, tmp_path):
    checkpoint = tmp_path / "fit.npz"
    first = KMeans(K, metric="cosine", random_state=1, checkpoint=checkpoint).fit(X)
    again = KMeans(K, metric="cosine", random_state=1, checkpoint=checkpoint).fit(X)
    np.testing.assert_array_equal(again.cluster_centers_, first.cluster_centers_)
    with pytest.raises(CheckpointMismatchError, match="other parameters"):
        KMeans(K, random_state=1, checkpoint=checkpoint).fit(X)


def test_cli_fit_and_predict_with_metric_cosine(X, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    zarr.create_array(store="in.zarr", data=X.astype(np.float32), chunks=(200, X.shape[1]))
    fit = ["fit", "in.zarr", "--n-clusters", "4", "--seed", "0", "--quiet"]
    assert main([*fit, "--metric", "cosine", "--out", "m.zarr"]) == 0
    model = zarr.open_group("m.zarr", mode="r")
    assert model.attrs["params"]["metric"] == "cosine"
    km = KMeans(K, metric="cosine", random_state=0).fit("in.zarr")
    np.testing.assert_array_equal(model["cluster_centers"][...], km.cluster_centers_)
    assert model.attrs["inertia"] == km.inertia_
    # predict reads the metric with the centres
    assert main(["predict", "m.zarr", "in.zarr", "--out", "l.zarr", "--quiet"]) == 0
    labels = zarr.open_array("l.zarr", mode="r")[...]
    np.testing.assert_array_equal(labels, computed(km.labels_))
    capsys.readouterr()
    elbow_args = ["elbow", "in.zarr", "--k-max", "3", "--seed", "0", "--json", "--quiet"]
    assert main([*elbow_args, "--metric", "cosine"]) == 0
    curve = json.loads(capsys.readouterr().out)["inertia"]
    expected = elbow("in.zarr", k_values=[1, 2, 3], metric="cosine", random_state=0)
    assert curve == {str(k): value for k, value in expected.items()}
    with pytest.raises(SystemExit) as refused:
        main([*fit, "--metric", "manhattan"])
    assert refused.value.code == 2
    assert "invalid choice: 'manhattan'" in capsys.readouterr().err


def test_nearest_centers_rank_by_cosine_distance(X):
    km = KMeans(K, metric="cosine", random_state=0).fit(X)
    indices, distances = km.nearest_centers(da.from_array(X, chunks=250), n_nearest=3)
    indices, distances = dask.compute(indices, distances)
    expected = 1 - unit(X) @ unit(km.cluster_centers_).T
    order = np.argsort(expected, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(distances, np.take_along_axis(expected, order, 1), atol=1e-6)
    first, _ = km.nearest_centers(X, n_nearest=1)
    np.testing.assert_array_equal(first[:, 0], km.predict(X))


def test_float16_rows_cluster_like_their_float32_values(X):
    half = X.astype(np.float16)
    single = half.astype(np.float32)
    fits = [
        KMeans(K, metric="cosine", random_state=0).fit(rows)
        for rows in (half, da.from_array(half, chunks=200), single)
    ]
    for km in fits[:2]:
        assert km.cluster_centers_.dtype == np.float32
        np.testing.assert_allclose(km.cluster_centers_, fits[2].cluster_centers_, atol=1e-6)
        np.testing.assert_array_equal(computed(km.labels_), fits[2].labels_)
        assert km.inertia_ == pytest.approx(fits[2].inertia_, rel=1e-6)


def test_distributed_fit_equals_threaded_fit_and_names_a_zero_row(X, tmp_path):
    """Workers normalise their blocks as the client's threads do: the same bits (full
    passes, persist=False); a zero row is named from the worker. The kernel travels
    pickled to worker processes: it must survive the round trip."""
    path = str(tmp_path / "x.zarr")
    zarr.create_array(store=path, data=X, chunks=(100, X.shape[1]))
    bad = X.copy()
    bad[321] = 0
    bad_path = str(tmp_path / "bad.zarr")
    zarr.create_array(store=bad_path, data=bad, chunks=(100, X.shape[1]))
    params = {"metric": "cosine", "random_state": 2, "persist": False}
    threaded = KMeans(K, **params).fit(path)
    kernel = prepared_kernel(pass_statistics, None, check=True, unit=True)
    restored = pickle.loads(pickle.dumps(kernel))
    assert kernel_name(restored) == "pass_statistics"
    call = (X[:50], None, 0, 0, threaded.cluster_centers_, np.array([0, K]))
    np.testing.assert_array_equal(restored(*call).sums, kernel(*call).sums)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        distributed = KMeans(K, **params).fit(path)
        with pytest.raises(ValueError, match=r"row 321 of X in block \d+ is all zeros"):
            KMeans(K, **params).fit(bad_path)
    np.testing.assert_array_equal(distributed.cluster_centers_, threaded.cluster_centers_)
    assert distributed.inertia_ == threaded.inertia_
    assert distributed.n_iter_ == threaded.n_iter_


def test_rows_of_tiny_values_keep_their_direction():
    """Squares of values below 1e-154 underflow float64: such rows are measured again
    scaled by their largest value, not refused as zero rows; float32's smallest values
    have float64 squares."""
    rows = np.array([[3e-200, 4e-200], [3.0, 4.0], [0.0, 5e-324]])
    np.testing.assert_allclose(unit_rows(rows), [[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]], rtol=1e-15)
    single = np.array([[3e-40, 4e-40], [0.0, 1e-45]], dtype=np.float32)
    np.testing.assert_allclose(unit_rows(single), [[0.6, 0.8], [0.0, 1.0]], rtol=1e-5)
