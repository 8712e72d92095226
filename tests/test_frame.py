"""Data far from the origin: distances in a frame near it, results in the user's frame."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans as SKKMeans
from sklearn.metrics import adjusted_rand_score

import dkmeans
from dkmeans import KMeans
from dkmeans.frame import MAX_MAGNITUDE, check_values, choose_shift, values_within
from dkmeans.kernels import pass_statistics
from dkmeans.lloyd import lloyd
from dkmeans.sources import InMemorySource

from .helpers import brute_force_inertia

#: The initialisers themselves, not the small-data path every small fit takes.
pytestmark = pytest.mark.usefixtures("kmeans_parallel_on_small_data")

GRID = np.array([[0, 0], [10, 0], [0, 10], [10, 10]])


def far_blobs(offset: float = 1e5, dtype=np.float32) -> np.ndarray:
    """The issue's reproducer: four blobs of std 1, 10 apart, moved by ``offset``."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(2000, 2)) + c for c in GRID]) + offset
    return X.astype(dtype)


def as_input(X: np.ndarray, kind: str, tmp_path):
    if kind == "numpy":
        return X
    if kind == "dask":
        return da.from_array(X, chunks=(1500, -1))
    path = str(tmp_path / "far.zarr")
    store = zarr.create_array(path, shape=X.shape, chunks=(1500, X.shape[1]), dtype=X.dtype)
    store[:] = X
    return path


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_far_blobs_are_clustered_as_scikit_learn_clusters_them(kind, init, tmp_path):
    X = far_blobs()
    reference = SKKMeans(4, init=init.replace("||", "++"), n_init=5, random_state=0).fit(X)
    km = KMeans(4, init=init, n_init=5, random_state=0).fit(as_input(X, kind, tmp_path))
    assert km.inertia_ == pytest.approx(reference.inertia_, rel=0.01)
    assert km.inertia_ == pytest.approx(brute_force_inertia(X, km.cluster_centers_), rel=1e-5)
    assert sorted(np.bincount(np.asarray(km.labels_))) == [2000] * 4
    # the centres are reported where the data is
    found = np.sort(km.cluster_centers_.astype(np.float64) - 1e5, axis=0)
    np.testing.assert_allclose(found, np.sort(GRID, axis=0), atol=0.1)


def test_data_near_the_origin_is_not_shifted(blobs):
    X = blobs[0]
    assert choose_shift(X[:1024], X.dtype) is None
    km = KMeans(5, random_state=0).fit(X)
    assert km._shift is None
    shift = choose_shift(X[:1024] + 1e4, X.dtype)
    np.testing.assert_allclose(shift, np.median(X[:1024], axis=0) + 1e4)


def test_the_frame_does_not_change_a_fit_up_to_rounding(blobs):
    """The same data near the origin and far from it: the same clustering."""
    X, _ = blobs
    near = KMeans(5, random_state=3).fit(X)
    far = KMeans(5, random_state=3).fit(X + 1e6)
    # the seeding rounds differently in the two frames: the same partition, numbered anew
    assert adjusted_rand_score(near.labels_, far.labels_) == 1
    order = [np.flatnonzero(far.labels_ == label)[0] for label in range(5)]
    np.testing.assert_allclose(
        far.cluster_centers_ - 1e6, near.cluster_centers_[near.labels_[order]], atol=1e-8
    )
    assert far.inertia_ == pytest.approx(near.inertia_, rel=1e-9)


def brute_force_nearest(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the gap between the two smallest squared distances, in float64, from
    the differences themselves (no expansion)."""
    d2 = ((X.astype(np.float64)[:, None] - centers.astype(np.float64)[None]) ** 2).sum(-1)
    two = np.sort(d2, axis=1)[:, :2]
    return d2.argmin(axis=1), two[:, 1] - two[:, 0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    log_offset=st.floats(3, 12),
    spread=st.sampled_from([1e-3, 1.0, 250.0]),
    n_features=st.integers(1, 5),
    k=st.integers(2, 6),
    seed=st.integers(0, 2**16),
)
def test_predict_far_from_the_origin_equals_a_float64_brute_force(
    dtype, log_offset, spread, n_features, k, seed
):
    # float32 keeps ~7 digits: offsets up to 10⁶ spreads there, 10¹² in float64
    log_offset = min(log_offset, 6.0) if dtype == np.float32 else log_offset
    rng = np.random.default_rng(seed)
    offset = rng.choice([-1, 1], size=n_features) * spread * 10**log_offset
    X = (rng.normal(scale=spread, size=(600, n_features)) + offset).astype(dtype)
    km = KMeans(k, random_state=seed, max_iter=20).fit(da.from_array(X, chunks=200))
    centers = km.cluster_centers_
    expected, gap = brute_force_nearest(X, centers)
    # a row whose two nearest centres are within rounding of a tie may go either way
    resolution = float(np.finfo(dtype).eps) * 64 * spread**2 * n_features
    clear = gap > resolution
    for labels in (km.predict(X), np.asarray(km.predict(da.from_array(X, chunks=150)))):
        np.testing.assert_array_equal(labels[clear], expected[clear])
    d2 = ((X.astype(np.float64)[:, None] - centers.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(
        km.transform(X).astype(np.float64) ** 2, d2, rtol=1e-3, atol=resolution
    )
    assert -km.score(X) == pytest.approx(d2.min(axis=1).sum(), rel=1e-3, abs=resolution * 600)


def test_predict_far_from_the_origin_beats_scikit_learn():
    """scikit-learn's predict cancels at an offset of 10⁷ in float32; dkmeans's does not."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [4.0, 0.0]]) + 1e7
    X = (rng.uniform(-2, 6, size=(5000, 2)) + 1e7).astype(np.float32)
    km = KMeans(2, init=centers, max_iter=1).fit(X)
    expected, gap = brute_force_nearest(X, km.cluster_centers_)
    clear = gap > 1e-2
    np.testing.assert_array_equal(km.predict(X)[clear], expected[clear])


def test_silhouette_far_from_the_origin():
    X = far_blobs(1e9, np.float64)
    labels = np.repeat(np.arange(4), 2000)
    near = dkmeans.silhouette_score(X - 1e9, labels, sample_size=None)
    far = dkmeans.silhouette_score(X, labels, sample_size=None)
    assert far == pytest.approx(near, rel=1e-9)


def test_elbow_far_from_the_origin():
    X = far_blobs()
    curve = dkmeans.elbow(X, k_values=[3, 4], random_state=0)
    assert curve[4] == pytest.approx(
        SKKMeans(4, n_init=5, random_state=0).fit(X).inertia_, rel=0.01
    )


# values that overflow ------------------------------------------------------------------


@pytest.mark.parametrize("init", ["k-means||", "random"])
@pytest.mark.parametrize("lazy", [False, True])
def test_values_whose_squares_overflow_are_refused(init, lazy):
    X = np.random.default_rng(0).normal(size=(1000, 2)) * 1e200
    data = da.from_array(X, chunks=250) if lazy else X
    with pytest.raises(ValueError, match=r"values up to .*e\+20\d in magnitude.*Rescale X"):
        KMeans(4, init=init).fit(data)


def test_check_values_names_block_row_and_magnitude():
    block = np.zeros((10, 3))
    check_values(block)
    block[7, 1] = 2 * MAX_MAGNITUDE
    with pytest.raises(ValueError, match=r"in block 4 \(rows 100 to 109\); first at row 107"):
        check_values(block, 100, 4)
    block[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity in block 4 .*first at row 103"):
        check_values(block, 100, 4)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    layout=st.sampled_from(["C", "F", "strided"]),
    bad=st.sampled_from([None, np.nan, np.inf, -np.inf, "largest", "beyond"]),
    where=st.integers(0, 10**6),
)
def test_values_within_finds_any_bad_value_on_every_engine(dtype, layout, bad, where):
    block = np.random.default_rng(where).normal(size=(300, 7)).astype(dtype)
    limit = 1e3 if dtype == np.float16 else 1e30
    if bad is not None:
        block.flat[where % block.size] = {"largest": -limit, "beyond": -2 * limit}.get(bad, bad)
    seen = {"C": block, "F": np.asfortranarray(block), "strided": block[::2]}[layout]
    expected = bool(np.isfinite(seen).all() and np.abs(seen).max() <= limit)
    for name in dkmeans.engine.available():
        with dask.config.set({dkmeans.engine.CONFIG_KEY: name}):
            assert values_within(seen, limit) is expected


# values that change during a fit ---------------------------------------------------------


def test_nan_appearing_after_the_first_pass_stops_the_fit():
    X = np.random.default_rng(0).normal(size=(400, 2))
    source = InMemorySource.of_array(X.copy(), chunks=[200, 200])

    def spoil(state):
        source.blocks[1][5, 0] = np.nan  # the store was rewritten during the fit

    with pytest.raises(ValueError, match="pass 2 over X gave non-finite sums"):
        lloyd(source, [X[:3]], max_iter=10, tol=0, on_pass=spoil)


@pytest.mark.parametrize("method", ["predict", "transform", "score"])
def test_lazy_nan_in_prediction_is_named(method, tmp_path):
    X = far_blobs()
    km = KMeans(4, random_state=0).fit(X)
    bad = X.copy()
    bad[3100, 1] = np.nan
    data = as_input(bad, "zarr", tmp_path)
    with pytest.raises(ValueError, match=r"NaN or infinity in block \d+ .*first at row 3100"):
        result = getattr(km, method)(data)
        np.asarray(result)  # lazy results are checked as they are computed
    result = getattr(km, method)(da.from_array(X, chunks=1500))
    assert np.isfinite(np.asarray(result)).all()


def test_pass_statistics_are_shift_invariant_through_a_source():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 3))
    centers = X[:4].copy()
    bounds = np.array([0, 4])
    plain = InMemorySource.of_array(X).map_reduce(pass_statistics, centers, bounds)
    shift = np.array([1e6, -1e6, 5e5])
    moved = InMemorySource.of_array(X + shift, shift=shift).map_reduce(
        pass_statistics, centers, bounds
    )
    np.testing.assert_allclose(moved.cluster_inertia, plain.cluster_inertia, rtol=1e-6)
    np.testing.assert_array_equal(moved.counts, plain.counts)


def test_pass_statistics_shift_their_sub_blocks_exactly(implementation):
    """On integer data and a power-of-two shift every operation is exact: the kernel's own
    shifting gives bitwise the statistics of data that sits there already."""
    rng = np.random.default_rng(5)
    X = rng.integers(-50, 50, size=(3000, 3)).astype(np.float64)
    shift = np.array([2.0**20, -(2.0**21), 2.0**19])
    centers, bounds = X[:6], np.array([0, 3, 6])
    args = dict(with_moments=True, far_capacity=3)
    plain = pass_statistics(X, None, 0, 0, centers, bounds, **args)
    moved = pass_statistics(X + shift, None, 0, 0, centers, bounds, shift=shift, **args)
    for name in ("sums", "counts", "cluster_inertia"):
        np.testing.assert_array_equal(getattr(moved, name), getattr(plain, name))
    for a, b in zip(moved.far, plain.far, strict=True):
        np.testing.assert_array_equal(a.chosen.rows, b.chosen.rows)
        np.testing.assert_array_equal(a.chosen.index, b.chosen.index)
    np.testing.assert_array_equal(moved.moments.m2, plain.moments.m2)


@pytest.mark.parametrize("init", ["k-means||", "random"])
def test_cli_refuses_overflowing_values_in_one_line(init, tmp_path, capsys):
    from dkmeans.cli import main

    path = str(tmp_path / "huge.zarr")
    store = zarr.create_array(path, shape=(1000, 2), chunks=(250, 2), dtype="f8")
    store[:] = np.random.default_rng(0).normal(size=(1000, 2)) * 1e200
    assert main(["fit", path, "--n-clusters", "4", "--init", init, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no JSON with Infinity in it
    assert captured.err.count("\n") == 1 and "in magnitude" in captured.err
