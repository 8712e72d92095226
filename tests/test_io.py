"""Input handling: Zarr formats, groups, URLs, read-only access, row blocks and the
readers of stored chunks."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numcodecs.zstd import Zstd
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

from dkmeans import KMeans
from dkmeans.io import (
    TARGET_BLOCK_BYTES,
    block_rows,
    check_data,
    open_zarr_array,
    rechunk_rows,
    to_dask_array,
)
from dkmeans.readers import (
    ZSTD_MAGIC,
    ChunkReadError,
    DirectChunkReader,
    NamedChunkReader,
    zstd_content_size,
)

from .helpers import counting_store


def tree_digest(path: Path) -> str:
    """Hash of every file's relative name and bytes under ``path``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_formats_read_lazily_and_read_only(tmp_path, data, zarr_format):
    path = tmp_path / "x.zarr"
    zarr.create_array(store=str(path), data=data, chunks=(64, 3), zarr_format=zarr_format)
    array = open_zarr_array(path)
    assert array.read_only
    assert array.metadata.zarr_format == zarr_format
    X = to_dask_array(str(path))
    assert isinstance(X, da.Array)
    np.testing.assert_array_equal(X.compute(), data)


def test_array_inside_group(tmp_path, data):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("points", data=data, chunks=(100, 3))
    group.create_array("other", data=np.zeros((4, 2)))
    np.testing.assert_array_equal(to_dask_array(str(tmp_path / "g.zarr/points")).compute(), data)


def test_group_path_lists_its_arrays(tmp_path, data):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("points", data=data)
    group.create_array("extra", data=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"group, not an array.*g\.zarr/extra.*extra, points"):
        open_zarr_array(tmp_path / "g.zarr")


def test_empty_group_says_so(tmp_path):
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ValueError, match="group without arrays"):
        open_zarr_array(tmp_path / "g.zarr")


@pytest.mark.parametrize("url", ["missing.zarr", "memory://dkmeans-missing.zarr"])
def test_missing_store_is_a_clear_value_error(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no Zarr array found at .*check the path"):
        open_zarr_array(url)
    assert not (tmp_path / "missing.zarr").exists()  # opening never creates


def test_path_that_is_not_zarr_says_so(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="'.*folder' is not a Zarr store .it has no zarr.json"):
        open_zarr_array(tmp_path / "folder")
    with pytest.raises(ValueError, match="'.*data.csv' is a file, not a Zarr store"):
        KMeans(2).fit(str(tmp_path / "data.csv"))


@pytest.mark.parametrize(
    ("zarr_format", "compressors", "key"),
    [(3, "auto", "c/3/0"), (3, None, "c/3/0"), (2, "auto", "3.0")],
)
def test_damaged_chunk_is_named(tmp_path, data, zarr_format, compressors, key):
    path = tmp_path / "x.zarr"
    zarr.create_array(
        store=str(path), data=data, chunks=(20, 3), zarr_format=zarr_format,
        compressors=compressors,
    )  # fmt: skip
    (path / key).write_bytes(b"not a chunk")
    with pytest.raises(ChunkReadError, match=f"cannot read chunk {key} of the Zarr array at"):
        KMeans(2, random_state=0, persist=False).fit(str(path))


@pytest.mark.parametrize(
    ("store", "options", "direct"),
    [
        ("v3.zarr", dict(compressors=None), True),
        ("v2.zarr", dict(compressors=None, zarr_format=2), True),
        ("v2-slash.zarr", dict(
            compressors=None, zarr_format=2, chunk_key_encoding={"name": "v2", "separator": "/"}
        ), True),
        ("group.zarr/inner", dict(compressors=None), True),
        ("zstd.zarr", dict(), True),  # Zarr's default: Zstandard
        ("blosc.zarr", dict(compressors=BloscCodec()), False),
        ("zstd-v2.zarr", dict(zarr_format=2), False),
        ("sharded.zarr", dict(compressors=None, shards=(40, 3)), False),
        ("columns.zarr", dict(compressors=None, chunks=(20, 2)), False),
        ("big-endian.zarr", dict(compressors=None, serializer=BytesCodec(endian="big")), False),
        ("memory://dkmeans-direct.zarr", dict(compressors=None), False),
    ],
)  # fmt: skip
def test_local_chunks_are_read_directly(tmp_path, data, store, options, direct):
    options = {"chunks": (20, 3), **options}
    path = store if "://" in store else str(tmp_path / store)
    zarr.create_array(store=path, data=data, **options)
    array = open_zarr_array(path)
    assert DirectChunkReader.handles(array) is direct
    blocks = to_dask_array(path)
    np.testing.assert_array_equal(blocks.compute(), data)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n_rows=st.integers(1, 90),
    chunk_rows=st.integers(1, 30),
    bounds=st.tuples(st.integers(0, 100), st.integers(0, 100)),
    unwritten=st.sets(st.integers(0, 9), max_size=3),
    dtype=st.sampled_from(["float32", "float64", "int16"]),
    compressed=st.booleans(),
)
def test_direct_reads_equal_zarr_reads(
    tmp_path_factory, n_rows, chunk_rows, bounds, unwritten, dtype, compressed
):
    path = tmp_path_factory.mktemp("direct") / "x.zarr"
    values = np.arange(n_rows * 3, dtype=dtype).reshape(n_rows, 3)
    array = zarr.create_array(
        store=str(path), shape=values.shape, dtype=dtype, chunks=(chunk_rows, 3),
        compressors=ZstdCodec(checksum=True) if compressed else None, fill_value=7,
    )  # fmt: skip
    for chunk in range(-(-n_rows // chunk_rows)):
        if chunk not in unwritten:  # chunks never written read as the fill value
            rows = slice(chunk * chunk_rows, (chunk + 1) * chunk_rows)
            array[rows] = values[rows]
    array = open_zarr_array(path)
    assert DirectChunkReader.handles(array)
    rows = slice(*sorted(bounds))
    np.testing.assert_array_equal(DirectChunkReader(array)[rows, 0:3], array[rows, 0:3])
    np.testing.assert_array_equal(DirectChunkReader(array)[rows, 1:2], array[rows, 1:2])


def test_unwritten_chunks_of_a_zarr_2_array_without_fill_value_read_as_zarr_reads(tmp_path):
    path = str(tmp_path / "v2.zarr")
    array = zarr.create_array(
        store=path, shape=(100, 3), chunks=(20, 3), dtype="f4", zarr_format=2,
        compressors=None, fill_value=None,
    )  # fmt: skip
    array[:20] = 1
    array = open_zarr_array(path)
    np.testing.assert_array_equal(DirectChunkReader(array)[0:100, 0:3], array[0:100, 0:3])


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_791, 2**20, 2**25])
def test_zstd_content_size_is_read_from_the_frame_header(size):
    assert zstd_content_size(Zstd().encode(b"x" * size)) == size
    assert zstd_content_size(b"not a frame") is None


def test_zstd_chunks_of_the_wrong_size_or_without_one(tmp_path):
    path = tmp_path / "x.zarr"
    values = np.arange(300, dtype=np.float32).reshape(100, 3)
    zarr.create_array(store=str(path), data=values, chunks=(20, 3))  # Zstandard
    # a frame of the wrong size is damage, not data
    (path / "c/3/0").write_bytes(Zstd().encode(b"x" * 10))
    with pytest.raises(ChunkReadError, match="chunk c/3/0 .* decompresses to 10 bytes, not 240"):
        to_dask_array(str(path)).compute()
    # a frame that declares no size (one raw block; not written by Zarr): Zarr reads it
    header = ZSTD_MAGIC + bytes([0, 0]) + ((240 << 3) | 1).to_bytes(3, "little")
    (path / "c/3/0").write_bytes(header + values[60:80].tobytes())
    assert zstd_content_size((path / "c/3/0").read_bytes()) is None
    np.testing.assert_array_equal(to_dask_array(str(path)).compute(), values)


class FailsOnce:
    """A Zarr array whose first read fails (a transient error), as seen by the reader."""

    def __init__(self, array):
        self.array, self.failed = array, False

    def __getattr__(self, name):
        return getattr(self.array, name)

    def __getitem__(self, selection):
        if not self.failed:
            self.failed = True
            raise OSError("connection reset")
        return self.array[selection]


def test_failure_that_does_not_repeat_names_the_rows(data):
    array = zarr.create_array(store="memory://dkmeans-fails-once.zarr", data=data, chunks=(20, 3))
    reader = NamedChunkReader(FailsOnce(array))
    with pytest.raises(ChunkReadError, match="chunk holding rows 40 to 99 .*connection reset"):
        reader[40:100, 0:3]
    np.testing.assert_array_equal(reader[40:100, 0:3], data[40:100])


def test_memory_and_file_urls(tmp_path, data):
    zarr.create_array(store="memory://dkmeans-io-test.zarr", data=data, chunks=(50, 3))
    np.testing.assert_array_equal(to_dask_array("memory://dkmeans-io-test.zarr").compute(), data)
    zarr.create_array(store=str(tmp_path / "f.zarr"), data=data)
    np.testing.assert_array_equal(to_dask_array(f"file://{tmp_path}/f.zarr").compute(), data)


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_cloud_url_without_its_package_names_the_extra():
    with pytest.raises(ImportError, match=r"s3fs.*pip install 'dkmeans\[cloud\]'"):
        open_zarr_array("s3://some-bucket/x.zarr")


def test_tiny_row_chunks_merge_without_extra_reads(tmp_path):
    data = np.arange(3000 * 4, dtype=np.float64).reshape(3000, 4)
    path = tmp_path / "tiny.zarr"
    zarr.create_array(store=str(path), data=data, chunks=(7, 2))  # split across features too
    store = counting_store(path)
    X = check_data(to_dask_array(zarr.open_array(store, mode="r")))
    assert X.numblocks == (1, 1)
    np.testing.assert_array_equal(X.compute(), data)
    assert len(store.reads) == 429 * 2  # ceil(3000 / 7) row chunks x 2 column chunks
    assert set(store.reads.values()) == {1}


def test_block_rows_are_whole_chunks_of_tens_of_megabytes():
    row_bytes = 32 * 4
    rows = block_rows(7, row_bytes, 10**9)
    assert rows % 7 == 0
    assert 0.5 * TARGET_BLOCK_BYTES <= rows * row_bytes <= 1.5 * TARGET_BLOCK_BYTES
    assert block_rows(262_144, row_bytes, 10**9) == 262_144  # 32 MiB chunks stay
    assert block_rows(7, row_bytes, 100) == 100


def test_sharded_array_is_read_in_whole_shards(tmp_path, data):
    path = str(tmp_path / "sharded.zarr")
    zarr.create_array(store=path, data=data, chunks=(10, 3), shards=(100, 3))
    X = to_dask_array(path)
    assert all(size % 100 == 0 for size in X.chunks[0][:-1])
    np.testing.assert_array_equal(X.compute(), data)


def test_rechunk_rows_merges_columns_and_small_row_chunks(data):
    X = da.from_array(data, chunks=(7, 2))
    merged = rechunk_rows(X)
    assert merged.numblocks == (1, 1)
    big = da.zeros((10**6, 32), chunks=(250_000, 16), dtype=np.float32)
    assert rechunk_rows(big).chunks[0] == big.chunks[0]
    assert rechunk_rows(big).numblocks[1] == 1


def test_xarray_and_numpy_backed_zarr_give_the_numpy_fit(data):
    xr = pytest.importorskip("xarray")
    expected = KMeans(3, random_state=0).fit(data)
    memory = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=data.shape, dtype=data.dtype, chunks=(64, 3)
    )
    memory[:] = data
    inputs = [
        memory,
        xr.DataArray(data, dims=("sample", "feature")),
        xr.DataArray(da.from_array(data, chunks=100), dims=("sample", "feature")),
    ]
    for X in inputs:
        km = KMeans(3, random_state=0).fit(X)
        np.testing.assert_allclose(km.cluster_centers_, expected.cluster_centers_, rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(km.labels_), expected.labels_)


def test_streaming_fit_leaves_the_input_untouched(tmp_path, data):
    path = tmp_path / "x.zarr"
    zarr.create_array(store=str(path), data=data, chunks=(50, 3))
    before = tree_digest(path)
    km = KMeans(3, random_state=0, persist=False).fit(str(path))
    km.labels_.compute()
    assert tree_digest(path) == before


@pytest.mark.parametrize("change", ["trailing bytes", "truncated"])
def test_raw_chunk_of_the_wrong_size_is_refused(tmp_path, data, change):
    """As Zarr refuses it; a deleted chunk reads as the fill value, as in Zarr."""
    path = tmp_path / "x.zarr"
    zarr.create_array(store=str(path), data=data, chunks=(20, 3), compressors=None)
    chunk = path / "c" / "3" / "0"
    stored = chunk.read_bytes()
    chunk.write_bytes(stored + b"\0" * 8 if change == "trailing bytes" else stored[:-8])
    size = 240 + 8 if change == "trailing bytes" else 240 - 8
    with pytest.raises(ChunkReadError, match=f"chunk c/3/0 .* it holds {size} bytes, not 240"):
        to_dask_array(str(path)).compute()
    with pytest.raises(ValueError):
        zarr.open_array(str(path), mode="r")[...]
    chunk.unlink()
    filled = to_dask_array(str(path)).compute()
    np.testing.assert_array_equal(filled[60:80], 0)
    np.testing.assert_array_equal(filled[:60], data[:60])
