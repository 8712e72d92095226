"""Turn what users pass as ``X`` into a validated Dask array of row blocks.

Accepted: NumPy arrays (and array-likes), Dask arrays, ``zarr.Array`` objects,
xarray ``DataArray`` objects (samples x features), and Zarr paths or fsspec URLs
(``"store.zarr"`` or ``"store.zarr/array_name"`` inside a group). Stores are
opened read-only. Nothing is loaded: columns are merged into one chunk and rows are
re-chunked only when blocks are too small to be efficient.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from numcodecs.zstd import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.storage import LocalStore

#: Block size aimed at when rows must be (re)chunked: large enough that per-task
#: overhead is negligible, small enough that a few blocks per thread fit in memory.
TARGET_BLOCK_BYTES = 64 * 2**20
#: Row blocks smaller than this fraction of the target are merged.
MERGE_BELOW = 0.25


def is_lazy_input(X: Any) -> bool:
    """True for inputs that are not already in memory (Dask, Zarr, xarray, paths)."""
    return isinstance(X, (da.Array, zarr.Array, str, os.PathLike)) or type(X).__module__.startswith(
        "xarray"
    )


#: fsspec protocols that need an optional package, and the extra that installs it.
CLOUD_PROTOCOLS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def open_zarr_array(
    path: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> zarr.Array:
    """Open a Zarr array (format 2 or 3) read-only from a local path or fsspec URL.

    Parameters
    ----------
    path : str or path
        ``"store.zarr"``, ``"store.zarr/array_name"`` for an array inside a group, or
        an fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``, ...).
    storage_options : dict, optional
        Passed to fsspec for URLs (credentials, ``anon=True``, ...).

    Raises
    ------
    ValueError
        If nothing is there, or if the path holds a group (the message lists the
        group's arrays).
    ImportError
        If the URL needs a package that is not installed (the message says which).
    """
    path = os.fspath(path)
    try:
        node = zarr.open(store=path, mode="r", storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as error:
        raise ValueError(_not_found_message(path)) from error
    except ImportError as error:
        raise ImportError(_missing_package_message(path, error)) from error
    if isinstance(node, zarr.Group):
        names = sorted(name for name, _ in node.arrays())
        if not names:
            raise ValueError(f"{path!r} is a Zarr group without arrays; give the path of an array")
        raise ValueError(
            f"{path!r} is a Zarr group, not an array; name one of its arrays as "
            f"'{path.rstrip('/')}/{names[0]}' (arrays in the group: {', '.join(names)})"
        )
    return node


def _not_found_message(path: str) -> str:
    local = path.removeprefix("file://")
    if "://" not in local and os.path.isfile(local):
        return f"{path!r} is a file, not a Zarr store: give the path of a Zarr array (a folder)"
    if "://" not in local and os.path.isdir(local):
        return (
            f"{path!r} is not a Zarr store (it has no zarr.json, .zarray or .zgroup): give "
            "the path of a Zarr array, or write one with dkmeans make-blobs or zarr"
        )
    return f"no Zarr array found at {path!r}: check the path"


def _missing_package_message(path: str, error: ImportError) -> str:
    protocol = path.split("://", 1)[0] if "://" in path else "file"
    package = CLOUD_PROTOCOLS.get(protocol, "fsspec")
    return (
        f"reading {path!r} needs {package}: pip install 'dkmeans[cloud]' "
        f"(or pip install {package}); {error}"
    )


def to_dask_array(X: Any) -> da.Array:
    """Wrap any accepted input as a Dask array without loading it.

    A Zarr array is read in row blocks of whole storage chunks (or shards) of about
    :data:`TARGET_BLOCK_BYTES`, one chunk across features: every stored chunk is
    read once per pass, by one task.
    """
    if isinstance(X, da.Array):
        return X
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X)
    if isinstance(X, zarr.Array):
        return _from_zarr(X)
    if type(X).__module__.startswith("xarray"):
        data = X.data
        return data if isinstance(data, da.Array) else _from_numpy(np.asarray(data))
    return _from_numpy(np.asarray(X))


class ChunkReadError(ValueError):
    """A stored chunk of the input could not be read or decoded."""


class NamedChunkReader:
    """Reads a Zarr array; a failed read names the stored chunks (objects) involved.

    Dask reads blocks through this, so a damaged chunk deep in a terabyte store is
    reported as ``c/1234/0`` of its store rather than as a decoding error alone.
    """

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        try:
            return self.array[selection]
        except MemoryError:
            raise
        except Exception as error:
            raise ChunkReadError(
                f"cannot read chunk {self.damaged_chunks(selection)} of the Zarr array at "
                f"{self.array.store_path}: {type(error).__name__}: {error}. The stored "
                "chunk is damaged or unreadable: restore it (or rewrite the array)"
            ) from error

    def damaged_chunks(self, selection: tuple[slice, ...], most: int = 4) -> str:
        """Keys of the stored chunks (or shards) within ``selection`` that fail to read."""
        grid = self.array.shards or self.array.chunks
        ranges = [
            range(s.indices(n)[0] // g, max(s.indices(n)[1] - 1, 0) // g + 1)
            for s, n, g in zip(selection, self.shape, grid, strict=True)
        ]
        keys = []
        for coords in itertools.product(*ranges):
            chunk = tuple(slice(c * g, (c + 1) * g) for c, g in zip(coords, grid, strict=True))
            try:
                self.array[chunk]
            except Exception:
                keys.append(self.array.metadata.encode_chunk_key(coords))
        if not keys:  # the failure did not repeat chunk by chunk: name the whole block
            start, stop, _ = selection[0].indices(self.shape[0])
            return f"holding rows {start} to {stop - 1}"
        shown = ", ".join(keys[:most])
        return shown if len(keys) <= most else f"{shown}, ... ({len(keys)} chunks)"


#: The first bytes of a Zstandard frame.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_content_size(frame: bytes) -> int | None:
    """The decompressed size a Zstandard frame's header declares (RFC 8878, 3.1.1), or
    None if it declares none."""
    if len(frame) < 6 or frame[:4] != ZSTD_MAGIC:
        return None
    descriptor = frame[4]
    single_segment = (descriptor >> 5) & 1
    position = 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3]
    width = (single_segment, 2, 4, 8)[descriptor >> 6]
    if width == 0 or len(frame) < position + width:
        return None
    size = int.from_bytes(frame[position : position + width], "little")
    return size + 256 if width == 2 else size


class DirectChunkReader(NamedChunkReader):
    """Reads row blocks of a Zarr array on a local disk straight from its chunk files
    into the block, for the two encodings ``make-blobs`` writes: raw bytes (one copy,
    where Zarr's codec pipeline makes two: 2.5 against 5.6 ms per 32 MiB chunk from the
    page cache) and Zstandard, decompressed into the block (23 against 26 ms).

    Only for what :meth:`handles`: chunks that span all columns, C order, the
    machine's byte order, unsharded. A chunk that was never written reads as the fill
    value, as in Zarr.
    """

    def __init__(self, array: zarr.Array) -> None:
        super().__init__(array)
        codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
        self.zstd = Zstd() if any(isinstance(c, ZstdCodec) for c in codecs) else None

    @staticmethod
    def handles(array: zarr.Array) -> bool:
        """Whether ``array``'s chunks are local files in an encoding this can read."""
        if not isinstance(array.store, LocalStore) or array.ndim != 2 or array.shards:
            return False
        if array.chunks[1] != array.shape[1] or not array.dtype.isnative:
            return False
        meta = array.metadata
        if meta.zarr_format == 2:
            return meta.compressor is None and not meta.filters and meta.order == "C"
        serializer, *compressors = meta.codecs
        endian = getattr(serializer, "endian", None)
        return (
            isinstance(serializer, BytesCodec)
            and (endian is None or endian.value == sys.byteorder)
            and all(isinstance(c, ZstdCodec) for c in compressors)
            and len(compressors) <= 1
        )

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        rows, columns = selection
        start, stop, step = rows.indices(self.shape[0])
        if step != 1 or columns.indices(self.shape[1]) != (0, self.shape[1], 1):
            return super().__getitem__(selection)
        out = np.empty((max(stop - start, 0), self.shape[1]), dtype=self.dtype)
        chunk_rows = self.array.chunks[0]
        for chunk in range(start // chunk_rows, -(-stop // chunk_rows) if out.size else 0):
            lo, hi = max(start, chunk * chunk_rows), min(stop, (chunk + 1) * chunk_rows)
            self._read_chunk(chunk, lo - chunk * chunk_rows, out[lo - start : hi - start])
        return out

    def _read_chunk(self, chunk: int, first_row: int, target: np.ndarray) -> None:
        """Rows ``first_row, ...`` of stored chunk ``chunk`` into ``target``."""
        key = self.array.metadata.encode_chunk_key((chunk, 0))
        row_bytes = self.shape[1] * self.dtype.itemsize
        chunk_bytes, offset = self.array.chunks[0] * row_bytes, first_row * row_bytes
        try:
            with open(Path(self.array.store.root, self.array.path, key), "rb", buffering=0) as file:
                if self.zstd is None:
                    file.seek(offset)
                    read = file.readinto(memoryview(target).cast("B"))
                    if read != target.nbytes:
                        detail = f"it holds {offset + read} bytes, not {chunk_bytes}"
                        raise self._damaged(key, detail)
                    return
                encoded = file.read()
        except FileNotFoundError:  # never written: the fill value (Zarr 2's None reads as 0)
            target[...] = 0 if self.array.fill_value is None else self.array.fill_value
            return
        size = zstd_content_size(encoded)
        if size is None:  # written without its size (not by Zarr): Zarr reads it
            first = chunk * self.array.chunks[0] + first_row
            target[...] = super().__getitem__((slice(first, first + len(target)), slice(None)))
            return
        if size != chunk_bytes:
            raise self._damaged(key, f"it decompresses to {size} bytes, not {chunk_bytes}")
        # the whole chunk decompresses into the block; a part of one (the array's last,
        # padded chunk) goes through a buffer
        whole = offset == 0 and target.nbytes == chunk_bytes
        decoded = target if whole else np.empty(chunk_bytes, dtype=np.uint8)
        try:
            self.zstd.decode(encoded, out=memoryview(decoded).cast("B"))
        except Exception as error:
            raise self._damaged(key, f"{type(error).__name__}: {error}") from error
        if not whole:
            target.reshape(-1).view(np.uint8)[...] = decoded[offset : offset + target.nbytes]

    def _damaged(self, key: str, detail: str) -> ChunkReadError:
        return ChunkReadError(
            f"cannot read chunk {key} of the Zarr array at {self.array.store_path}: {detail}. "
            "The stored chunk is damaged: restore it (or rewrite the array)"
        )


def _from_zarr(z: zarr.Array) -> da.Array:
    if z.ndim != 2:
        return da.from_zarr(z)
    stored_rows = (z.shards or z.chunks)[0]
    rows = block_rows(stored_rows, z.shape[1] * z.dtype.itemsize, z.shape[0])
    chunks = (rows, z.shape[1])
    name = "from-zarr-" + tokenize(str(z.store_path), z.metadata.to_dict(), chunks)
    reader = DirectChunkReader(z) if DirectChunkReader.handles(z) else NamedChunkReader(z)
    return da.from_array(reader, chunks=chunks, name=name, lock=False, fancy=False)


#: In-memory arrays are cut into at least this many blocks (of at least
#: :data:`MIN_NUMPY_BLOCK_ROWS` rows) so that every core has work; a fixed number, not the
#: machine's core count, so that results do not depend on the machine.
MIN_NUMPY_BLOCKS = 8
MIN_NUMPY_BLOCK_ROWS = 8192


class BlockView:
    """A NumPy array seen by Dask without a copy: its blocks are views.

    ``da.from_array`` copies NumPy input (twice the memory of X, and a third of a
    second per GB); the estimator reads X only while fitting, predicting or scoring,
    so the copy protects nothing there.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        return self.array[selection]


def _from_numpy(x: np.ndarray) -> da.Array:
    if x.ndim != 2:
        return da.from_array(x)
    rows = max(1, TARGET_BLOCK_BYTES // 2 // max(1, x.shape[1] * x.itemsize))
    rows = min(rows, max(MIN_NUMPY_BLOCK_ROWS, -(-len(x) // MIN_NUMPY_BLOCKS)))
    # a random name: hashing the contents costs half a second per GB (a checkpoint,
    # which must recognise the data, hashes it itself)
    return da.from_array(BlockView(x), chunks=(rows, -1), name=False, asarray=True, fancy=False)


def check_data(X: da.Array, *, min_samples: int = 1, merge_rows: bool = True) -> da.Array:
    """Validate shape and dtype; return X as floating point with sensible row blocks.

    With ``merge_rows=False`` the row blocks are kept as they are: in-memory data is
    cut into at least :data:`MIN_NUMPY_BLOCKS` blocks on purpose, and merging them
    would leave threads idle.

    Raises
    ------
    ValueError
        For arrays that are not 2-D, are empty, or hold complex values.
    TypeError
        For non-numeric data (strings, objects).
    """
    if X.ndim != 2:
        raise ValueError(
            f"Expected a 2D array of shape (n_samples, n_features), got {X.ndim}D with "
            f"shape {X.shape}; reshape your data, e.g. X.reshape(-1, 1) for one feature"
        )
    n_samples, n_features = X.shape
    if n_samples < min_samples:
        raise ValueError(
            f"Found array with {n_samples} sample(s) (shape={X.shape}) while a minimum of "
            f"{min_samples} is required."
        )
    if n_features == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is required."
        )
    kind = X.dtype.kind
    if kind == "c":
        raise ValueError(
            "Complex data not supported; cluster the real and imaginary parts as features"
        )
    if kind not in "biuf":
        raise TypeError(f"X must hold numbers, got dtype {X.dtype}; convert it to float first")
    if kind != "f" or X.dtype.itemsize < 4:
        X = X.astype(np.float64)
    return rechunk_rows(X) if merge_rows else X


def block_rows(
    chunk_rows: int, row_bytes: int, n_rows: int, target_bytes: int = TARGET_BLOCK_BYTES
) -> int:
    """Rows per block: ``chunk_rows`` itself if its chunks are big enough, else the
    whole multiple of ``chunk_rows`` closest to ``target_bytes`` (at most ``n_rows``)."""
    chunk_rows = max(1, chunk_rows)
    if chunk_rows * row_bytes >= MERGE_BELOW * target_bytes:
        return chunk_rows
    per_block = max(1, round(target_bytes / max(1, chunk_rows * row_bytes))) * chunk_rows
    return int(min(per_block, max(1, n_rows)))


def rechunk_rows(X: da.Array, target_bytes: int = TARGET_BLOCK_BYTES) -> da.Array:
    """One chunk across features; merge row chunks much smaller than the target.

    Merging only concatenates whole source chunks, so no chunk is read twice.
    """
    row_bytes = X.shape[1] * X.dtype.itemsize
    typical = max(X.chunks[0]) if X.chunks[0] else 1
    rows = block_rows(typical, row_bytes, X.shape[0], target_bytes)
    if rows == typical and X.numblocks[1] == 1:
        return X
    if rows == typical:
        return X.rechunk({1: -1})
    return X.rechunk({0: rows, 1: -1})


def check_sample_weight(sample_weight: Any, X: da.Array) -> da.Array | None:
    """Validate sample weights against X; return them chunked like X's rows.

    Raises
    ------
    ValueError
        For a wrong shape, negative or non-finite values, or all-zero weights.
    """
    if sample_weight is None:
        return None
    if np.isscalar(sample_weight):
        sample_weight = np.full(X.shape[0], float(sample_weight))
    weights = sample_weight if isinstance(sample_weight, da.Array) else np.asarray(sample_weight)
    if weights.shape != (X.shape[0],):
        raise ValueError(
            f"sample_weight.shape == {weights.shape}, expected ({X.shape[0]},): "
            "one weight per sample"
        )
    if weights.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must be numeric, got dtype {weights.dtype}")
    if isinstance(weights, np.ndarray):
        weights = weights.astype(np.float64)
        if not np.isfinite(weights).all():
            raise ValueError("sample_weight contains NaN or infinity")
        if (weights < 0).any():
            raise ValueError("sample_weight must be non-negative")
        if not (weights > 0).any():
            raise ValueError("sample_weight is zero everywhere: at least one sample needs weight")
        return da.from_array(weights, chunks=(X.chunks[0],))
    return weights.astype(np.float64).rechunk((X.chunks[0],))
