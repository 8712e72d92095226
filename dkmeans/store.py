"""Result stores: what ``dkmeans fit --out`` and ``dkmeans predict --out`` write.

A fit result is a Zarr group with the arrays ``cluster_centers`` (k, d) and
``labels`` (n,) int32, chunked like the input's rows, and the attributes
``inertia``, ``n_iter``, ``n_clusters``, ``params`` and ``dkmeans_version``. Labels
are streamed block by block, never gathered. Every output is written under a
temporary name beside its final place and renamed there only when complete, so a
failed run leaves nothing under the requested name.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from .io import open_zarr_array, to_dask_array

CENTERS = "cluster_centers"
LABELS = "labels"


class OutputExistsError(FileExistsError):
    """The requested output exists and overwriting was not asked for."""


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it to ``path`` on success.

    On error the temporary output is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or path
        The final location: a local path or an fsspec URL.
    overwrite : bool
        Replace an existing output at ``path`` (only once the new one is complete).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false (checked before any work).
    """
    fs, final = check_output(path, overwrite=overwrite)
    parent, name = posixpath.split(final.rstrip("/"))
    token = uuid.uuid4().hex[:8]
    temporary = posixpath.join(parent, f".{name}.tmp-{token}")
    replaced = posixpath.join(parent, f".{name}.old-{token}")
    try:
        yield _unparse(path, temporary)
        if fs.exists(final):
            fs.mv(final, replaced, recursive=True)
        fs.mv(temporary, final, recursive=True)
    finally:
        for leftover in (temporary, replaced):
            if fs.exists(leftover):
                fs.rm(leftover, recursive=True)


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> tuple[Any, str]:
    """Refuse an existing output unless ``overwrite``; return its file system and path.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    fs, final = _filesystem(path)
    if fs.exists(final) and not overwrite:
        raise OutputExistsError(
            f"{os.fspath(path)} exists; choose another path or pass --overwrite"
        )
    return fs, final


class _LocalFileSystem:
    """The few file-system operations :func:`atomic_output` needs, on local paths."""

    exists = staticmethod(os.path.exists)

    @staticmethod
    def rm(path: str, recursive: bool = True) -> None:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    @staticmethod
    def mv(source: str, target: str, recursive: bool = True) -> None:
        os.replace(source, target)  # atomic within one file system


def _filesystem(path: str | os.PathLike) -> tuple[Any, str]:
    """A file system object and the path inside it; fsspec only for URLs."""
    path = os.fspath(path)
    if "://" not in path or path.startswith("file://"):
        return _LocalFileSystem(), str(Path(path.removeprefix("file://")).absolute())
    try:
        from fsspec.core import url_to_fs
    except ImportError as error:
        raise ImportError(
            f"writing to {path!r} needs fsspec: pip install 'dkmeans[cloud]'"
        ) from error
    return url_to_fs(path)


def _unparse(original: str | os.PathLike, inner: str) -> str:
    """``inner`` (a path from :func:`_filesystem`) with the protocol of ``original``."""
    original = os.fspath(original)
    if "://" in original and not original.startswith("file://"):
        return f"{original.split('://', 1)[0]}://{inner.lstrip('/')}"
    return inner


def _json_safe(value: Any) -> Any:
    """Parameters as JSON: arrays become lists, paths strings, other objects their repr."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _row_chunks(X: Any) -> int:
    """Rows per chunk of the input: the chunking its labels are written with."""
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X)
    if isinstance(X, zarr.Array):
        return int(X.chunks[0])
    return int(to_dask_array(X).chunks[0][0])


def _store_labels(
    store: str, name: str | None, labels: da.Array | np.ndarray, row_chunks: int
) -> None:
    """Write labels as an int32 array ``name`` of ``store``, one task per block of rows."""
    labels = da.asarray(labels).astype(np.int32)
    target = zarr.create_array(
        store=store,
        name=name,
        shape=labels.shape,
        dtype=np.int32,
        chunks=(max(1, min(row_chunks, len(labels))),),
    )
    if any(size % target.chunks[0] for size in labels.chunks[0][:-1]):
        labels = labels.rechunk(target.chunks)  # blocks must hold whole chunks: no shared writes
    da.store(labels, target, lock=False)


def write_result(path: str | os.PathLike, km: Any, X: Any, *, overwrite: bool = False) -> None:
    """Write a fitted :class:`~dkmeans.KMeans` and its training labels to a Zarr group.

    Parameters
    ----------
    path : str or path
        The output group (local path or fsspec URL).
    km : KMeans
        A fitted estimator; its ``labels_`` (NumPy or lazy Dask) are written.
    X : array-like, dask array, zarr.Array, xarray.DataArray or str
        The training data, for the row chunking of the labels.
    overwrite : bool
        Replace an existing output once the new one is complete.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    from . import __version__

    row_chunks = _row_chunks(X)
    with atomic_output(path, overwrite=overwrite) as temporary:
        group = zarr.open_group(temporary, mode="w-")
        group.create_array(CENTERS, data=np.asarray(km.cluster_centers_))
        _store_labels(temporary, LABELS, km.labels_, row_chunks)
        group.attrs.update(
            {
                "inertia": float(km.inertia_),
                "n_iter": int(km.n_iter_),
                "n_clusters": int(km.n_clusters),
                "params": {key: _json_safe(value) for key, value in km.get_params().items()},
                "dkmeans_version": __version__,
            }
        )


def write_labels(
    path: str | os.PathLike, labels: da.Array | np.ndarray, X: Any, *, overwrite: bool = False
) -> None:
    """Write the labels of ``X`` as a Zarr array (int32, chunked like X's rows), atomically.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    row_chunks = _row_chunks(X)
    with atomic_output(path, overwrite=overwrite) as temporary:
        _store_labels(temporary, None, labels, row_chunks)


def read_centers(path: str | os.PathLike) -> np.ndarray:
    """The ``cluster_centers`` (k, d) of a result written by :func:`write_result`.

    Raises
    ------
    ValueError
        If ``path`` is not a Zarr group with a ``cluster_centers`` array.
    """
    path = os.fspath(path)
    try:
        group = zarr.open_group(path, mode="r")
        centers = group[CENTERS]
    except (
        FileNotFoundError,
        KeyError,
        zarr.errors.NodeNotFoundError,
        zarr.errors.ContainsArrayError,
    ) as error:
        raise ValueError(
            f"{path!r} is not a dkmeans fit result (a Zarr group with a {CENTERS!r} array)"
        ) from error
    return np.asarray(centers[...])
