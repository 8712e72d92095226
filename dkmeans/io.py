"""Turn what users pass as ``X`` into a validated Dask array of row blocks.

Accepted: NumPy arrays (and array-likes), Dask arrays, ``zarr.Array`` objects,
xarray ``DataArray`` objects (samples x features), and Zarr paths or fsspec URLs
(``"store.zarr"`` or ``"store.zarr/array_name"`` inside a group). Stores are
opened read-only. Nothing is loaded: columns are merged into one chunk and rows are
re-chunked only when blocks are too small to be efficient.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from .fs import filesystem, storage_errors, unparse
from .readers import DirectChunkReader, NamedChunkReader

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


#: Zarr metadata files (formats 3 and 2) whose presence makes a folder a Zarr node.
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray")

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
    TypeError
        If the array holds bfloat16 (Zarr 3 has no such data type; see :data:`BFLOAT16`).
    ImportError
        If the URL needs a package that is not installed (the message says which).
    dkmeans.fs.StorageAccessError
        If an object store refuses the credentials or cannot be reached.
    """
    path = os.fspath(path)
    try:
        with storage_errors(path):
            node = zarr.open(store=path, mode="r", storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as error:
        raise ValueError(_not_found_message(path)) from error
    except ImportError as error:
        raise ImportError(_missing_package_message(path, error)) from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if "bfloat16" in str(error):  # Zarr 3 knows no such data type
            raise TypeError(f"{path!r}: {BFLOAT16}") from error
        # zarr's reaction to metadata that is not JSON or lacks keys names no file
        raise ValueError(_damaged_metadata_message(path, error)) from error
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


def _damaged_metadata_message(path: str, error: Exception) -> str:
    """Name the metadata files of ``path`` that do not parse (or all of them)."""
    fs, inner = filesystem(path)
    present = [
        posixpath.join(inner, name)
        for name in (*ZARR_METADATA, ".zattrs")
        if fs.exists(posixpath.join(inner, name))
    ]

    def parses(file: str) -> bool:
        try:
            return isinstance(json.loads(fs.cat_file(file)), dict)
        except ValueError:
            return False

    broken = [file for file in present if not parses(file)] or present
    files = ", ".join(unparse(path, file) for file in broken) or path
    return (
        f"damaged Zarr metadata in {files} ({type(error).__name__}: {error}); "
        "the store was written partly or altered: write it again"
    )


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


def numpy_row_chunks(n_rows: int, row_bytes: int) -> tuple[int, ...]:
    """The row blocks that in-memory data is cut into: at most half the target block
    size, and at least :data:`MIN_NUMPY_BLOCKS` blocks of :data:`MIN_NUMPY_BLOCK_ROWS`
    rows or more, so that every core has work."""
    rows = max(1, TARGET_BLOCK_BYTES // 2 // max(1, row_bytes))
    rows = max(1, min(rows, max(MIN_NUMPY_BLOCK_ROWS, -(-n_rows // MIN_NUMPY_BLOCKS))))
    full, rest = divmod(n_rows, rows)
    return (rows,) * full + ((rest,) if rest else ())


def _from_numpy(x: np.ndarray) -> da.Array:
    if x.ndim != 2:
        return da.from_array(x)
    chunks = numpy_row_chunks(len(x), x.shape[1] * x.itemsize) or (0,)
    # a random name: hashing the contents costs half a second per GB (a checkpoint,
    # which must recognise the data, hashes it itself)
    return da.from_array(BlockView(x), chunks=(chunks, -1), name=False, asarray=True, fancy=False)


def check_data(X: da.Array, *, min_samples: int = 1, merge_rows: bool = True) -> da.Array:
    """Validate shape and dtype; return X as floating point with sensible row blocks.

    Floating-point data keeps its dtype (float16 too: the kernels widen it one cached
    sub-block at a time); integers and booleans become float64.

    With ``merge_rows=False`` the row blocks are kept as they are: in-memory data is
    cut into at least :data:`MIN_NUMPY_BLOCKS` blocks on purpose, and merging them
    would leave threads idle.

    Raises
    ------
    ValueError
        For arrays that are not 2-D, are empty, or hold complex values.
    TypeError
        For non-numeric data (strings, objects), bfloat16, or blocks that are not NumPy
        arrays (sparse matrices).
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
    if not isinstance(X._meta, np.ndarray):
        raise TypeError(
            f"X's blocks must be dense NumPy arrays, got {type(X._meta).__name__}: sparse "
            "data is not supported; densify the blocks, e.g. X.map_blocks(lambda b: b.toarray())"
        )
    kind = X.dtype.kind
    if X.dtype.name == "bfloat16":
        raise TypeError(BFLOAT16)
    if kind == "c":
        raise ValueError(
            "Complex data not supported; cluster the real and imaginary parts as features"
        )
    if kind not in "biuf":
        raise TypeError(f"X must hold numbers, got dtype {X.dtype}; convert it to float first")
    if kind != "f":
        X = X.astype(np.float64)
    return rechunk_rows(X) if merge_rows else X


#: Why bfloat16 data is refused (NumPy arrays of ``ml_dtypes.bfloat16``, Zarr stores).
BFLOAT16 = (
    "bfloat16 data is not supported: NumPy has no bfloat16 (it needs the ml_dtypes "
    "package) and Zarr 3 has no bfloat16 data type to store it; store the values as "
    "float16 (read at the same bytes) or float32"
)


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


def check_sample_weight(
    sample_weight: Any, n_samples: int, chunks: tuple[int, ...]
) -> np.ndarray | da.Array | None:
    """Validate sample weights for X of ``n_samples`` rows cut into row blocks ``chunks``.

    NumPy weights (and scalars) are checked here and returned as float64 NumPy. Dask
    weights are checked here for their length and dtype (from their shape, without
    reading them), and returned rechunked like X's rows, their values checked as every
    block is read (:func:`check_weight_values`): the error names the block and the
    first bad row. That lazy weights are not all zero is known only once they have been
    read; a fit then refuses them after its first pass over X.

    Raises
    ------
    ValueError
        For a wrong shape, negative or non-finite values, or all-zero weights.
    TypeError
        For weights that are not numbers.
    """
    if sample_weight is None:
        return None
    if np.isscalar(sample_weight):
        sample_weight = np.full(n_samples, float(sample_weight))
    weights = sample_weight if isinstance(sample_weight, da.Array) else np.asarray(sample_weight)
    if weights.shape != (n_samples,):
        raise ValueError(
            f"sample_weight.shape == {weights.shape}, expected ({n_samples},): "
            "one weight per sample"
        )
    if weights.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must be numeric, got dtype {weights.dtype}")
    if isinstance(weights, np.ndarray):
        weights = weights.astype(np.float64)
        check_weight_values(weights)
        if not (weights > 0).any():
            raise ValueError(ZERO_WEIGHTS)
        return weights
    rows = weights.astype(np.float64).rechunk((chunks,))
    return rows.map_blocks(_checked_weight_block, dtype=np.float64, meta=np.empty(0))


#: The message of weights that are zero everywhere.
ZERO_WEIGHTS = "sample_weight is zero everywhere: at least one sample needs weight"


def check_weight_values(
    weights: np.ndarray, row_offset: int = 0, block_index: int | None = None
) -> None:
    """Raise a ``ValueError`` if weights hold NaN, infinity or negative values.

    Parameters
    ----------
    weights : ndarray of shape (rows,)
    row_offset : int
        Global index of the first weight (named in the message of a block).
    block_index : int, optional
        Position of the block of lazy weights; the message then names the block,
        its rows and the first bad row.
    """
    for bad, problem in (
        (~np.isfinite(weights), "contains NaN or infinity"),
        (weights < 0, "must be non-negative"),
    ):
        if bad.any():
            where = (
                ""
                if block_index is None
                else f" in block {block_index} (rows {row_offset} to "
                f"{row_offset + len(weights) - 1}); first at row "
                f"{row_offset + int(np.flatnonzero(bad)[0])}"
            )
            raise ValueError(f"sample_weight {problem}{where}")


def _checked_weight_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    """A block of lazy weights, checked as it is read."""
    if block_info is not None:
        check_weight_values(
            block, block_info[0]["array-location"][0][0], block_info[0]["chunk-location"][0]
        )
    return block
