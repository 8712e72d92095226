"""Result stores: layout, attributes, atomic writes and refusal to overwrite."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr

import dkmeans
from dkmeans import KMeans
from dkmeans import store as result_store
from dkmeans.store import OutputExistsError, read_centers, write_labels, write_result


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(300, 2)) + rng.integers(3, size=(300, 1)) * 8).astype(np.float32)
    path = str(tmp_path / "in.zarr")
    zarr.create_array(store=path, data=data, chunks=(7, 2))
    return path, data


@pytest.fixture
def fitted(source):
    path, _ = source
    return KMeans(3, random_state=0).fit(path)


def test_result_layout_and_attributes(tmp_path, source, fitted):
    path, data = source
    out = tmp_path / "out.zarr"
    write_result(out, fitted, path)
    group = zarr.open_group(str(out), mode="r")
    assert sorted(group.array_keys()) == ["cluster_centers", "labels"]
    centers, labels = group["cluster_centers"], group["labels"]
    assert centers.shape == (3, 2) and centers.dtype == np.float32
    np.testing.assert_array_equal(centers[...], fitted.cluster_centers_)
    assert labels.shape == (300,) and labels.dtype == np.int32 and labels.chunks == (7,)
    np.testing.assert_array_equal(labels[...], fitted.labels_.compute())
    attrs = group.attrs.asdict()
    assert attrs["inertia"] == pytest.approx(fitted.inertia_)
    assert attrs["n_iter"] == fitted.n_iter_ and attrs["n_clusters"] == 3
    assert attrs["params"] == fitted.get_params()
    assert attrs["dkmeans_version"] == dkmeans.__version__
    np.testing.assert_array_equal(read_centers(out), fitted.cluster_centers_)


def test_params_are_stored_as_json(tmp_path, source):
    path, data = source
    init = data[:3].astype(np.float64)
    km = KMeans(3, init=init, random_state=np.random.default_rng(0)).fit(data)
    km.set_params(checkpoint=tmp_path / "c")  # a path object
    write_result(tmp_path / "out.zarr", km, data)
    params = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["params"]
    json.dumps(params)
    assert params["init"] == init.tolist()
    assert params["checkpoint"] == str(tmp_path / "c")
    assert params["random_state"].startswith("Generator")


def test_existing_output_is_refused_then_replaced(tmp_path, source, fitted):
    path, _ = source
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="exists.*--overwrite"):
        write_result(out, fitted, path)
    assert (out / "keep.txt").read_text() == "mine"
    write_result(out, fitted, path, overwrite=True)
    assert not (out / "keep.txt").exists()
    np.testing.assert_array_equal(read_centers(out), fitted.cluster_centers_)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]


def test_failed_write_leaves_nothing(tmp_path, source, fitted, monkeypatch):
    path, _ = source

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(result_store, "_store_labels", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_result(tmp_path / "out.zarr", fitted, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


def test_failed_overwrite_keeps_the_old_output(tmp_path, source, fitted, monkeypatch):
    path, _ = source
    out = tmp_path / "out.zarr"
    write_result(out, fitted, path)
    monkeypatch.setattr(result_store, "_store_labels", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_result(out, fitted, path, overwrite=True)
    np.testing.assert_array_equal(read_centers(out), fitted.cluster_centers_)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]


def test_memory_url_output(source, fitted):
    path, _ = source
    write_result("memory://dkmeans-store-test/out.zarr", fitted, path)
    np.testing.assert_array_equal(
        read_centers("memory://dkmeans-store-test/out.zarr"), fitted.cluster_centers_
    )


def test_labels_chunked_like_input_rows_even_from_other_blocks(tmp_path, source):
    path, data = source
    labels = da.from_array(np.arange(300) % 3, chunks=50)  # 50 is not a multiple of 7
    write_labels(tmp_path / "labels.zarr", labels, path)
    written = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert written.chunks == (7,) and written.dtype == np.int32
    np.testing.assert_array_equal(written[...], np.arange(300) % 3)


@pytest.mark.parametrize("make", ["nothing", "array", "group"])
def test_read_centers_of_something_else(tmp_path, make):
    path = tmp_path / "thing.zarr"
    if make == "array":
        zarr.create_array(store=str(path), data=np.zeros((3, 2)))
    elif make == "group":
        zarr.open_group(str(path), mode="w")
    with pytest.raises(ValueError, match="not a dkmeans fit result"):
        read_centers(path)
