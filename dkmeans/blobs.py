"""Gaussian-blob datasets of any size, written straight to Zarr without holding them."""

from __future__ import annotations

import os
from typing import Literal

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

#: Default bytes per chunk of a generated store.
CHUNK_BYTES = 32 * 2**20

Codec = Literal["none", "zstd", "blosc-lz4", "blosc-zstd"]

#: Compressor choices of :func:`make_blobs`; see ``benchmarks/codecs.py`` for their
#: read speed (uncompressed reads fastest: random floats hardly compress).
CODECS: dict[str, tuple] = {
    "none": (),
    "zstd": (ZstdCodec(),),
    "blosc-lz4": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
    "blosc-zstd": (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),),
}


def blob_centers(n_centers: int, n_features: int, seed: int, box: float = 10.0) -> np.ndarray:
    """The true centres of :func:`make_blobs`, uniform in ``[-box, box]^d``."""
    return np.random.default_rng([seed, 0]).uniform(-box, box, size=(n_centers, n_features))


def _blob_block(*, centers: np.ndarray, seed: int, std: float, block_info: dict) -> np.ndarray:
    info = block_info[None]
    (start, stop), _ = info["array-location"]
    rows = stop - start
    rng = np.random.default_rng([seed, 1, info["chunk-location"][0]])
    labels = rng.integers(len(centers), size=rows)
    points = rng.standard_normal((rows, centers.shape[1]))
    points *= std
    points += centers[labels]
    return points.astype(info["dtype"], copy=False)


def make_blobs(
    path: str | os.PathLike,
    n_samples: int,
    n_features: int,
    centers: int,
    *,
    chunk_rows: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    cluster_std: float = 1.0,
    codec: Codec = "none",
    overwrite: bool = False,
) -> zarr.Array:
    """Write ``n_samples`` points around ``centers`` Gaussian centres to a Zarr array.

    Every chunk is generated from its own seed (``seed``, chunk index), in parallel,
    so the store is the same for the same arguments whatever the scheduler, and
    memory use is a few chunks. Chunks are stored uncompressed by default: random
    floats barely compress, and uncompressed chunks read fastest.

    Parameters
    ----------
    path : str or path
        Where to write (local path or fsspec URL).
    n_samples, n_features, centers : int
        Shape of the data and number of blobs.
    chunk_rows : int, optional
        Rows per chunk; default about 32 MiB per chunk.
    seed : int
        Seed of the centres and of every chunk.
    dtype : {"float16", "float32", "float64"}
    cluster_std : float
        Standard deviation of every blob.
    codec : {"none", "zstd", "blosc-lz4", "blosc-zstd"}
        Compressor of the chunks.
    overwrite : bool
        Replace an existing store at ``path``.

    Returns
    -------
    zarr.Array
        The written array; its attributes hold the generator's arguments and the
        true centres.
    """
    itemsize = np.dtype(dtype).itemsize
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (n_features * itemsize))
    chunk_rows = int(min(chunk_rows, max(n_samples, 1)))
    true_centers = blob_centers(centers, n_features, seed)
    target = zarr.create_array(
        store=os.fspath(path),
        shape=(n_samples, n_features),
        chunks=(chunk_rows, n_features),
        dtype=dtype,
        compressors=CODECS[codec],
        overwrite=overwrite,
    )
    target.attrs.update(
        {
            "generator": "dkmeans.make_blobs",
            "seed": seed,
            "centers": true_centers.tolist(),
            "cluster_std": cluster_std,
        }
    )
    chunks = da.core.normalize_chunks((chunk_rows, n_features), (n_samples, n_features))
    blocks = da.map_blocks(
        _blob_block,
        chunks=chunks,
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        centers=true_centers,
        seed=seed,
        std=cluster_std,
    )
    da.store(blocks, target, lock=False)
    return target
