"""float16 input: clustered as the same values in float32, never widened whole."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr

import dkmeans
import dkmeans.io
from dkmeans import kernels, loops
from dkmeans.cli import main
from dkmeans.io import open_zarr_array, to_dask_array
from dkmeans.readers import DirectChunkReader

#: A row whose label differs between float16 and float32 input must be this close to a
#: tie (relative difference of its squared distances to the two centres): the centres
#: differ only by float64 rounding of sums added in another order, seen through a
#: float32 GEMM.
TIE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Several row blocks (as given, or of 700 float16 rows for NumPy input) of several
    256-row sub-blocks each: the widening starts mid-block."""
    monkeypatch.setattr(dkmeans.io, "MERGE_BELOW", 0.0)
    monkeypatch.setattr(dkmeans.io, "TARGET_BLOCK_BYTES", 2 * 700 * 5 * 2)
    monkeypatch.setattr(kernels, "SUB_BLOCK_ELEMENTS", 1)


def half_blobs(offset: float) -> np.ndarray:
    """3,000 float16 rows around 4 centres; ``offset`` moves them off the origin (then
    the kernels see them shifted, :mod:`dkmeans.frame`)."""
    rng = np.random.default_rng(3)
    centers = rng.uniform(-8, 8, size=(4, 5))
    rows = centers[rng.integers(4, size=3000)] + rng.normal(size=(3000, 5))
    return (rows + offset).astype(np.float16)


def as_container(x: np.ndarray, container: str, tmp_path):
    if container == "numpy":
        return x
    if container == "dask":
        return da.from_array(x, chunks=700)
    path = tmp_path / f"{x.dtype}.zarr"
    if not path.exists():
        zarr.create_array(str(path), data=x, chunks=(500, x.shape[1]))
    return str(path)


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float64)[:, None] - centers.astype(np.float64)[None]) ** 2).sum(-1)


@pytest.mark.parametrize("container", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_float16_input_clusters_like_the_same_values_in_float32(
    container, offset, implementation, tmp_path
):
    x16 = half_blobs(offset)
    x32 = x16.astype(np.float32)  # the same values
    params = dict(n_clusters=4, random_state=0, persist=False)
    km16 = dkmeans.KMeans(**params).fit(as_container(x16, container, tmp_path))
    km32 = dkmeans.KMeans(**params).fit(as_container(x32, container, tmp_path))
    assert km16.cluster_centers_.dtype == np.float32
    np.testing.assert_allclose(km16.cluster_centers_, km32.cluster_centers_, rtol=1e-5)
    assert km16.inertia_ == pytest.approx(km32.inertia_, rel=1e-9)
    labels16, labels32 = np.asarray(km16.labels_), np.asarray(km32.labels_)
    differ = np.flatnonzero(labels16 != labels32)
    squared = squared_distances(x32[differ], km32.cluster_centers_)
    a, b = (
        squared[np.arange(len(differ)), labels16[differ]],
        squared[np.arange(len(differ)), labels32[differ]],
    )
    assert (np.abs(a - b) <= TIE_TOLERANCE * np.maximum(a, b)).all()
    assert len(differ) <= 3
    distances = km16.transform(as_container(x16, container, tmp_path))
    assert distances.dtype == np.float32
    np.testing.assert_allclose(
        np.asarray(distances),
        np.sqrt(squared_distances(x32, km16.cluster_centers_)),
        rtol=1e-4,
        atol=1e-3,
    )


@pytest.mark.parametrize("container", ["numpy", "dask"])
def test_the_lloyd_kernel_sees_float16_blocks(container, implementation, monkeypatch, tmp_path):
    """No widened copy of X: every block reaches the kernel as float16 (the compiled
    loops get its bits and widen one cached sub-block at a time)."""
    seen = []
    assign, assign_block = kernels._assign, loops.assign_block

    def spy_assign(x, *args, **kwargs):
        seen.append(x.dtype)
        return assign(x, *args, **kwargs)

    def spy_assign_block(*, block, **kwargs):
        seen.append((block.x.dtype, block.widen is not None))
        return assign_block(block=block, **kwargs)

    monkeypatch.setattr(kernels, "_assign", spy_assign)
    monkeypatch.setattr(loops, "assign_block", spy_assign_block)
    x = half_blobs(0.0)
    km = dkmeans.KMeans(4, init=x[:4].astype(np.float64), max_iter=3, persist=True)
    km.fit(as_container(x, container, tmp_path))
    compiled = implementation == "numba"
    assert seen.count(np.dtype(np.float16)) >= 3
    assert set(seen) == (
        {(np.dtype(np.uint16), True), np.dtype(np.float16)} if compiled else {np.dtype(np.float16)}
    )


def test_widened_rows_are_the_float16_values_minus_the_shift():
    x = np.array([[0.1, -2.5, 65504.0], [np.inf, 6e-8, -0.0]], dtype=np.float16)
    shift = np.array([1.0, 0.5, -2.0], dtype=np.float32)
    block = kernels.block_rows(x, None, shift, np.dtype(np.float32))
    rows = loops.widened_rows(
        x=block.x,
        start=0,
        stop=2,
        shift=block.shift,
        widen=block.widen,
        buffer=np.empty((2, 3), np.float32),
    )
    np.testing.assert_array_equal(rows, x.astype(np.float32) - shift)


@pytest.mark.parametrize("codec", [(), (zarr.codecs.ZstdCodec(),)])
def test_direct_reader_serves_float16_chunks(tmp_path, codec):
    x = half_blobs(0.0)
    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, data=x, chunks=(512, 5), compressors=codec)
    array = open_zarr_array(path)
    assert DirectChunkReader.handles(array)
    lazy = to_dask_array(array)
    assert lazy.dtype == np.float16
    np.testing.assert_array_equal(lazy[100:2900].compute(), x[100:2900])


def test_make_blobs_float16_round_trip(tmp_path, capsys):
    wide, half = str(tmp_path / "wide.zarr"), str(tmp_path / "half.zarr")
    common = ["--n-samples", "3000", "--n-features", "3", "--centers", "3", "--chunk-rows", "1000"]
    assert main(["make-blobs", wide, *common, "--dtype", "float64"]) == 0
    assert main(["make-blobs", half, *common, "--dtype", "float16"]) == 0
    stored = zarr.open_array(half, mode="r")
    assert stored.dtype == np.float16 and stored.nbytes == 3000 * 3 * 2
    np.testing.assert_array_equal(
        stored[...], zarr.open_array(wide, mode="r")[...].astype(np.float16)
    )
    model = str(tmp_path / "model.zarr")
    assert main(["fit", half, "--n-clusters", "3", "--seed", "0", "--out", model, "--quiet"]) == 0
    assert zarr.open_group(model, mode="r")["cluster_centers"].dtype == np.float32


def test_bfloat16_stores_are_refused_with_the_reason(tmp_path, capsys):
    path = tmp_path / "bf.zarr"
    zarr.create_array(str(path), shape=(4, 2), chunks=(2, 2), dtype="float16")
    metadata = json.loads((path / "zarr.json").read_text())
    metadata["data_type"] = "bfloat16"  # what a store written with ml_dtypes declares
    (path / "zarr.json").write_text(json.dumps(metadata))
    with pytest.raises(TypeError, match="Zarr 3 has no bfloat16 data type"):
        dkmeans.KMeans(2).fit(str(path))
    assert main(["fit", str(path), "--n-clusters", "2", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "bfloat16 data is not supported" in error


def test_float16_store_on_a_local_cluster_gives_the_threaded_results(tmp_path):
    """A float16 store fitted and ranked on a distributed cluster: the same bits as on
    local threads (full passes both: ``persist=False``)."""
    from distributed import Client, LocalCluster

    path = as_container(half_blobs(300.0), "zarr", tmp_path)
    params = dict(n_clusters=4, random_state=1, persist=False)
    threaded = dkmeans.KMeans(**params).fit(path)
    near = da.compute(*threaded.nearest_centers(path, n_nearest=2))
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        distributed = dkmeans.KMeans(**params).fit(path)
        near_distributed = da.compute(*distributed.nearest_centers(path, n_nearest=2))
    np.testing.assert_array_equal(distributed.cluster_centers_, threaded.cluster_centers_)
    assert distributed.inertia_ == threaded.inertia_
    for a, b in zip(near_distributed, near, strict=True):
        np.testing.assert_array_equal(a, b)
