"""The m nearest centres of every row: against brute force, in every container, and the
``dkmeans predict --n-nearest`` output."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import dkmeans
import dkmeans.io
from dkmeans import engine, kernels
from dkmeans.cli import main
from dkmeans.exceptions import InvalidParameterError
from dkmeans.kernels import smallest_first

from .helpers import counting_store

#: Two centres whose brute-force squared distances to a row differ by less than this
#: (relative) may be ranked either way: the ranking is the float32 GEMM's.
TIE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Row blocks as given (Dask, Zarr) of several 256-row sub-blocks each."""
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0.0)
    monkeypatch.setattr(kernels, "SUB_BLOCK_ELEMENTS", 1)


@pytest.fixture(scope="module")
def fitted() -> tuple[np.ndarray, dkmeans.KMeans]:
    """2,500 float32 rows far from the origin (the kernels see them shifted), 6 centres."""
    rng = np.random.default_rng(11)
    centers = rng.uniform(-6, 6, size=(6, 4))
    x = (centers[rng.integers(6, size=2500)] + rng.normal(size=(2500, 4)) + 250).astype(np.float32)
    return x, dkmeans.KMeans(6, random_state=0).fit(x)


def brute_force(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Euclidean distances of every row to every centre, in float64."""
    diff = x.astype(np.float64)[:, None] - centers.astype(np.float64)[None]
    return np.sqrt((diff**2).sum(-1))


@pytest.mark.parametrize("container", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("n_nearest", [1, 3, 6])
def test_nearest_centers_against_brute_force(
    fitted, container, n_nearest, implementation, tmp_path
):
    x, km = fitted
    if container == "zarr":
        data = str(tmp_path / "x.zarr")
        zarr.create_array(data, data=x, chunks=(400, 4))
    else:
        data = x if container == "numpy" else da.from_array(x, chunks=600)
    indices, distances = km.nearest_centers(data, n_nearest=n_nearest)
    assert isinstance(indices, np.ndarray if container == "numpy" else da.Array)
    assert isinstance(distances, type(indices))
    if container != "numpy":
        indices, distances = da.compute(indices, distances)
    assert indices.shape == distances.shape == (len(x), n_nearest)
    assert indices.dtype == np.int32 and distances.dtype == np.float32
    full = brute_force(x, km.cluster_centers_)
    expected = np.argsort(full, axis=1, kind="stable")[:, :n_nearest]
    np.testing.assert_allclose(distances, np.take_along_axis(full, indices, 1), rtol=1e-5)
    swapped = indices != expected
    a = np.take_along_axis(full, indices, 1)[swapped] ** 2
    b = np.take_along_axis(full, expected, 1)[swapped] ** 2
    assert (np.abs(a - b) <= TIE_TOLERANCE * b).all()
    np.testing.assert_array_equal(indices[:, 0], np.asarray(km.predict(data)))
    np.testing.assert_allclose(
        distances, np.take_along_axis(np.asarray(km.transform(data)), indices, 1), rtol=1e-5
    )


def test_lazy_indices_and_distances_share_one_read(fitted, tmp_path):
    x, km = fitted
    zarr.create_array(str(tmp_path / "x.zarr"), data=x, chunks=(250, 4))
    store = counting_store(tmp_path / "x.zarr")
    indices, distances = km.nearest_centers(zarr.open_array(store, mode="r"), n_nearest=2)
    da.compute(indices, distances)
    assert len(store.reads) == 10 and set(store.reads.values()) == {1}


def test_every_row_lists_distinct_centres(fitted):
    x, km = fitted
    indices, _ = km.nearest_centers(x, n_nearest=6)
    np.testing.assert_array_equal(
        np.sort(indices, axis=1), np.broadcast_to(np.arange(6), indices.shape)
    )


def test_equidistant_centres_come_lowest_index_first():
    centers = np.array([[2, 0], [0, 1], [-1, 0], [0, -1], [1, 0], [0, 2]], dtype=np.float64)
    km = dkmeans.KMeans(6)
    km.cluster_centers_, km.n_features_in_ = centers, 2  # exact small integers
    x = np.array([[0, 0], [1, 1], [0.5, 0.5]], dtype=np.float32)
    indices, distances = km.nearest_centers(x, n_nearest=6)
    np.testing.assert_array_equal(indices[0], [1, 2, 3, 4, 0, 5])
    np.testing.assert_array_equal(indices[1], [1, 4, 0, 5, 2, 3])
    np.testing.assert_array_equal(distances[0], [1, 1, 1, 1, 2, 2])


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.lists(st.integers(0, 3), min_size=7, max_size=7), min_size=1, max_size=20),
    n_smallest=st.integers(1, 7),
)
def test_smallest_first_orders_by_value_then_column(values, n_smallest):
    values = np.array(values, dtype=np.float32)
    expected = [sorted(range(7), key=lambda j: (row[j], j))[:n_smallest] for row in values]
    for name in engine.available():  # the compiled loop and its NumPy twin
        with dask.config.set({engine.CONFIG_KEY: name}):
            np.testing.assert_array_equal(smallest_first(values, n_smallest), expected)


@pytest.mark.parametrize("n_nearest", [0, 7, 2.0, True, "2"])
def test_n_nearest_must_be_from_1_to_n_clusters(fitted, n_nearest):
    x, km = fitted
    with pytest.raises(InvalidParameterError, match="n_nearest must be an int from 1 to"):
        km.nearest_centers(x, n_nearest=n_nearest)


def test_predict_writes_the_n_nearest_centres(tmp_path, capsys, fitted):
    x, _ = fitted
    store, model, out = (str(tmp_path / name) for name in ("x.zarr", "m.zarr", "near.zarr"))
    zarr.create_array(store, data=x, chunks=(300, 4))
    assert main(["fit", store, "--n-clusters", "6", "--seed", "0", "--out", model, "--quiet"]) == 0
    assert main(["predict", model, store, "--out", out, "--n-nearest", "3", "--quiet"]) == 0
    group = zarr.open_group(out, mode="r")
    assert group.attrs["dkmeans_result"] == "labels"
    labels, distances = group["labels"], group["distances"]
    assert labels.shape == distances.shape == (len(x), 3)
    assert labels.dtype == np.int32 and distances.dtype == np.float32
    assert labels.chunks == distances.chunks == (300, 3)
    km = dkmeans.KMeans(6)
    km.cluster_centers_ = zarr.open_group(model, mode="r")["cluster_centers"][...]
    km.n_features_in_ = 4
    indices, near = km.nearest_centers(x, n_nearest=3)
    np.testing.assert_array_equal(labels[...], indices)
    np.testing.assert_array_equal(distances[...], near)
    capsys.readouterr()
    refused = str(tmp_path / "refused.zarr")
    assert main(["predict", model, store, "--out", refused, "--n-nearest", "7", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--n-nearest must be from 1 to the model's 6 centres" in error
    assert not (tmp_path / "refused.zarr").exists()


def test_cosine_nearest_centres_are_the_most_similar(fitted):
    x, _ = fitted
    directions = x - 250  # rows around the origin point every way
    km = dkmeans.KMeans(6, metric="cosine", random_state=0).fit(directions)
    indices, distances = km.nearest_centers(directions, n_nearest=3)
    unit = directions / np.linalg.norm(directions.astype(np.float64), axis=1, keepdims=True)
    cosine = 1 - unit @ km.cluster_centers_.astype(np.float64).T
    np.testing.assert_array_equal(indices[:, 0], km.predict(directions))
    np.testing.assert_allclose(distances, np.take_along_axis(cosine, indices, 1), atol=1e-6)
    assert (np.diff(np.take_along_axis(cosine, indices, 1), axis=1) >= -1e-6).all()
