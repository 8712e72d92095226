"""Result stores: what ``dkmeans fit --out`` and ``dkmeans predict --out`` write.

A fit result is a Zarr group with the arrays ``cluster_centers`` (k, d) and
``labels`` (n,) int32, chunked like the input's rows, and the attributes
``inertia``, ``n_iter``, ``n_clusters``, ``params``, ``dkmeans_version`` and
``dkmeans_result = "fit"``; ``dkmeans predict --out`` writes an int32 array with the
attributes ``dkmeans_result = "labels"`` and ``dkmeans_version`` (with ``--n-nearest``
M > 1, a group with these attributes and the arrays ``labels`` (n, M) int32 and
``distances`` (n, M) float32, chunked like the input's rows). These two
attributes in the root ``zarr.json`` are how dkmeans recognises its own results: it
replaces (with ``overwrite``) nothing else, and never an output that is, lies inside
or contains one of the command's inputs.

Writing is atomic where the storage allows it, and always safe to interrupt:

- The output is claimed first: a file ``.NAME.dkmeans-claim`` beside it, created
  exclusively (``O_EXCL`` locally, a conditional ``If-None-Match`` PUT on S3). A second
  writer of the same output fails at once, naming the holder. A claim left by a killed
  process of this machine is taken over; one from another machine must be deleted by
  hand (the message says which file).
- Everything is written under ``.NAME.tmp-TOKEN`` beside the output, which holds a
  ``.dkmeans-incomplete`` file until it is complete.
- Local disks: the finished folder is renamed into place (atomic), after the result it
  replaces has been renamed aside.
- Object stores (no atomic rename of a prefix): ``.dkmeans-incomplete`` is first put
  in the output's prefix (and the replaced result's root ``zarr.json`` deleted), then
  its other objects, then every object of the new result is copied there, its root
  ``zarr.json`` last, and ``.dkmeans-incomplete`` removed. So the output is at every
  moment either a complete result or marked incomplete; :func:`read_centers` (and so
  ``dkmeans predict``) refuses an incomplete one, and :func:`output_kind` tells them
  apart.

A run that fails removes its temporary output; one that is killed leaves it, and the
next run writing the same output removes it (only folders with the temporary name and
the marker).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np
import zarr

from .fs import LocalFileSystem, filesystem, location, storage_errors, unparse, within
from .io import ZARR_METADATA, open_zarr_array, to_dask_array

CENTERS = "cluster_centers"
LABELS = "labels"
#: The distances of ``dkmeans predict --n-nearest``'s output group.
DISTANCES = "distances"
#: Attribute of a result's root ``zarr.json`` naming what dkmeans wrote there.
RESULT_ATTRIBUTE = "dkmeans_result"
#: File inside an output (or a temporary output) that is not complete yet.
INCOMPLETE = ".dkmeans-incomplete"
#: Suffix of the file beside an output that says a process is writing it.
CLAIM_SUFFIX = ".dkmeans-claim"

OutputKind = Literal["fit", "labels", "incomplete", "other"]


class OutputExistsError(FileExistsError):
    """The requested output exists, and overwriting was not asked for or is not allowed."""


class OutputBusyError(FileExistsError):
    """Another process is writing the requested output."""


class UnsafeOutputError(ValueError):
    """The requested output is, lies inside or contains one of the inputs."""


class OutputNotWritableError(PermissionError):
    """The requested output cannot be written (permissions, read-only file system)."""


def output_kind(path: str | os.PathLike) -> OutputKind | None:
    """What is at ``path``: None (nothing), a complete dkmeans result (``"fit"`` or
    ``"labels"``), a dkmeans output whose writing has not finished (``"incomplete"``),
    or anything else (``"other"``)."""
    with storage_errors(path):
        return _kind(*filesystem(path))


def _kind(fs: Any, path: str) -> OutputKind | None:
    if not fs.exists(path):
        return None
    if fs.exists(posixpath.join(path, INCOMPLETE)):
        return "incomplete"
    try:
        metadata = json.loads(fs.cat_file(posixpath.join(path, "zarr.json")))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return "other"
    attributes = metadata.get("attributes") if isinstance(metadata, dict) else None
    if not isinstance(attributes, dict) or "dkmeans_version" not in attributes:
        return "other"
    kind = attributes.get(RESULT_ATTRIBUTE)
    return kind if kind in ("fit", "labels") else "other"


def _store_root(source: str | os.PathLike) -> str:
    """The location of the Zarr store holding ``source``: the outermost folder of its
    hierarchy (``data.zarr`` for ``data.zarr/x``), or ``source`` itself."""
    fs, inner = filesystem(location(source))
    while True:
        up = posixpath.dirname(inner.rstrip("/"))
        if up in ("", inner) or not any(
            fs.exists(posixpath.join(up, name)) for name in ZARR_METADATA
        ):
            return location(unparse(source, inner))
        inner = up


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> tuple[Any, str]:
    """Refuse an output dkmeans must not write; return its file system and path.

    Parameters
    ----------
    path : str or path
        The output: a local path or an fsspec URL.
    overwrite : bool
        Allow replacing an existing dkmeans result (and only that).
    inputs : sequence of str or path
        What the command reads; the output may not be, lie inside or contain the Zarr
        store of any of them.

    Raises
    ------
    UnsafeOutputError
        If the output is, lies inside or contains one of the inputs' stores.
    OutputExistsError
        If something that is not a dkmeans result is at ``path`` (even with
        ``overwrite``), or a dkmeans result is there and ``overwrite`` is false.
    """
    with storage_errors(path):
        here = location(path)
        for source in inputs:
            store = _store_root(source)
            relation = (
                "is"
                if here == store
                else "lies inside"
                if within(here, store)
                else "contains"
                if within(store, here)
                else None
            )
            if relation is not None:
                raise UnsafeOutputError(
                    f"the output {os.fspath(path)} {relation} the input {os.fspath(source)}: "
                    "dkmeans never writes into its input; choose another output path"
                )
        fs, final = filesystem(path)
        _check_replaceable(_kind(fs, final), path, overwrite)
        return fs, final


def _check_replaceable(kind: OutputKind | None, path: str | os.PathLike, overwrite: bool) -> None:
    if kind == "other":
        raise OutputExistsError(
            f"{os.fspath(path)} exists and is not a dkmeans result: dkmeans replaces only "
            "its own results, even with --overwrite; choose another path"
        )
    if kind is not None and not overwrite:
        raise OutputExistsError(
            f"{os.fspath(path)} exists; choose another path or pass --overwrite"
        )


@dataclass
class ClaimedOutput:
    """An output this process has claimed (see :func:`claim_output`) and may write.

    Attributes
    ----------
    path : str
        The output as given (local path or fsspec URL).
    overwrite : bool
        Whether an existing dkmeans result there may be replaced.
    """

    path: str
    overwrite: bool
    fs: Any = field(repr=False)
    final: str = field(repr=False)
    claim: str = field(repr=False)
    token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def _sibling(self, kind: str) -> str:
        folder, name = posixpath.split(self.final.rstrip("/"))
        return posixpath.join(folder, f".{name}.{kind}-{self.token[:8]}")

    def acquire(self) -> None:
        """Create the claim file exclusively; take over one left by a dead process.

        Raises
        ------
        OutputBusyError
            If another live process (or one on another machine) holds the claim.
        OutputNotWritableError
            If the folder of a local output cannot be written.
        """
        record = json.dumps(
            {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        ).encode()  # fmt: skip
        for attempt in range(2):
            try:
                self._create_claim(record)
                return
            except FileExistsError:
                holder = self._holder()
                if attempt == 0 and _abandoned(holder):
                    self.fs.rm(self.claim)
                    continue
                raise OutputBusyError(_busy_message(self.path, self.claim, holder)) from None

    def _create_claim(self, record: bytes) -> None:
        """Create the claim file; raise FileExistsError only if it exists."""
        if not self.local:
            self.fs.pipe_file(self.claim, record, mode="create")
            return
        folder = posixpath.dirname(self.claim)
        try:
            self.fs.makedirs(folder)
            self.fs.pipe_file(self.claim, record, mode="create")
        except FileExistsError:
            if not os.path.isdir(folder):
                raise OutputNotWritableError(
                    f"cannot write {self.path}: {folder} is not a folder"
                ) from None
            raise
        except OSError as error:
            raise OutputNotWritableError(
                f"cannot write {self.path}: {error.strerror or error} ({folder})"
            ) from error

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.fs.cat_file(self.claim))
        except (FileNotFoundError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def holds_claim(self) -> bool:
        """Whether the claim file is still this output's."""
        holder = self._holder()
        return holder is not None and holder.get("token") == self.token

    def release(self) -> None:
        """Delete the claim file if it is still this output's."""
        if self.holds_claim():
            self.fs.rm(self.claim)

    def remove_stale(self) -> None:
        """Remove temporary outputs of this output left by killed runs: folders named
        ``.NAME.tmp-*`` or ``.NAME.old-*`` that hold a dkmeans output."""
        folder, name = posixpath.split(self.final.rstrip("/"))
        pattern = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[0-9a-f]{{8}}")
        if not self.local:
            self.fs.invalidate_cache(folder)
        for entry in self.fs.ls(folder, detail=False):
            entry = entry.rstrip("/")
            if pattern.fullmatch(posixpath.basename(entry)) and _kind(self.fs, entry) in (
                "incomplete", "fit", "labels",
            ):  # fmt: skip
                _remove(self.fs, entry)

    def begin(self) -> str:
        """A new temporary output beside the final one, marked incomplete."""
        temporary = self._sibling("tmp")
        if self.local:
            self.fs.makedirs(temporary)
        self.fs.pipe_file(posixpath.join(temporary, INCOMPLETE), self.token.encode())
        return temporary

    def commit(self, temporary: str) -> None:
        """Put the complete ``temporary`` output in place of the final one.

        Raises
        ------
        OutputBusyError
            If the claim was taken over meanwhile (the output is left as it was).
        OutputExistsError
            If something dkmeans may not replace appeared at the output meanwhile.
        """
        if not self.holds_claim():
            raise OutputBusyError(
                f"{self.path}: another process took over the claim {self.claim} while this "
                "one was computing; nothing was written"
            )
        if not self.local:
            self.fs.invalidate_cache()
        existing = _kind(self.fs, self.final)
        _check_replaceable(existing, self.path, self.overwrite)
        if self.local:
            replaced = self._sibling("old")
            if existing is not None:
                self.fs.mv(self.final, replaced)
            try:
                self.fs.mv(temporary, self.final)
            except OSError:
                if existing is not None:
                    self.fs.mv(replaced, self.final)  # the old result stays
                raise
        else:
            self._copy_into_place(temporary, existing is not None)
        self.fs.rm(posixpath.join(self.final, INCOMPLETE))

    def _copy_into_place(self, temporary: str, replace: bool) -> None:
        """Object stores: mark the output incomplete, empty it, copy the new objects
        (the root ``zarr.json`` last)."""
        marker = posixpath.join(self.final, INCOMPLETE)
        self.fs.pipe_file(marker, self.token.encode())
        if replace:
            root = posixpath.join(self.final, "zarr.json")
            if self.fs.exists(root):
                self.fs.rm(root)
            _remove(self.fs, self.final, keep=marker)
        sources = [path for path in self.fs.find(temporary) if not path.endswith(INCOMPLETE)]
        root = posixpath.join(temporary, "zarr.json")
        ordered = [path for path in sources if path != root] + [root]
        targets = [self.final + path[len(temporary) :] for path in ordered]
        self.fs.copy(ordered[:-1], targets[:-1])
        self.fs.copy(ordered[-1], targets[-1])

    def discard(self) -> None:
        """Remove the temporary and set-aside outputs of this run, if any."""
        for leftover in (self._sibling("tmp"), self._sibling("old")):
            if self.fs.exists(leftover):
                _remove(self.fs, leftover)


def _remove(fs: Any, path: str, keep: str | None = None) -> None:
    """Delete ``path`` (a folder or prefix), its ``.dkmeans-incomplete`` marker last so
    that an interrupted removal stays recognisable; ``keep`` is not deleted."""
    if isinstance(fs, LocalFileSystem):
        fs.rm(path)
        return
    fs.invalidate_cache(path)
    marker = posixpath.join(path, INCOMPLETE)
    files = [name for name in fs.find(path) if name not in (marker, keep)]
    if files:
        fs.rm(files)
    if keep != marker and fs.exists(marker):
        fs.rm(marker)


def _abandoned(holder: dict[str, Any] | None) -> bool:
    """Whether a claim was left by a process of this machine that no longer runs (or
    is unreadable: a process killed while writing it)."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _busy_message(path: str, claim: str, holder: dict[str, Any] | None) -> str:
    who = (
        f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
        if holder
        else "another process"
    )
    return (
        f"{path} is being written by another dkmeans ({who}): wait for it to finish, "
        f"or delete {claim} if that process is gone"
    )


@contextmanager
def claim_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> Iterator[ClaimedOutput]:
    """Check an output, claim it for this process, and release the claim at the end.

    Everything that can refuse the output happens here, before any work: the checks of
    :func:`check_output`, another writer, a folder that cannot be written, an object
    store that refuses the credentials. Temporary outputs of killed runs are removed.
    Pass the yielded object to :func:`write_result` or :func:`write_labels`.

    Parameters
    ----------
    path : str or path
        The output: a local path or an fsspec URL.
    overwrite : bool
        Allow replacing an existing dkmeans result (once the new one is complete).
    inputs : sequence of str or path
        What the command reads (see :func:`check_output`).

    Raises
    ------
    UnsafeOutputError, OutputExistsError
        See :func:`check_output`.
    OutputBusyError
        If another process is writing the output.
    OutputNotWritableError
        If a local output's folder cannot be written.
    dkmeans.fs.StorageAccessError
        If an object store refuses the credentials or cannot be reached.
    """
    with storage_errors(path):
        fs, final = check_output(path, overwrite=overwrite, inputs=inputs)
        folder, name = posixpath.split(final.rstrip("/"))
        output = ClaimedOutput(
            os.fspath(path), overwrite, fs, final, posixpath.join(folder, f".{name}{CLAIM_SUFFIX}")
        )
        output.acquire()
    try:
        with storage_errors(path):
            output.remove_stale()
            _check_replaceable(_kind(fs, final), path, overwrite)
        yield output
    finally:
        output.release()


@contextmanager
def atomic_output(
    path: str | os.PathLike | ClaimedOutput, *, overwrite: bool = False
) -> Iterator[str]:
    """Yield a temporary output beside ``path``; put it in place on success.

    On error the temporary output is removed and ``path`` is left as it was. See the
    module's docstring for what is atomic where.

    Parameters
    ----------
    path : str, path or ClaimedOutput
        The final location (a local path or an fsspec URL), claimed here, or an
        output claimed already with :func:`claim_output` (whose ``overwrite`` counts).
    overwrite : bool
        Replace an existing dkmeans result at ``path`` (only once the new one is
        complete).

    Raises
    ------
    OutputExistsError, OutputBusyError, OutputNotWritableError
        See :func:`claim_output` (checked before any work).
    """
    claimed = (
        nullcontext(path)
        if isinstance(path, ClaimedOutput)
        else claim_output(path, overwrite=overwrite)
    )
    with claimed as output:
        try:
            with storage_errors(output.path):
                temporary = output.begin()
            yield unparse(output.path, temporary)
            with storage_errors(output.path):
                output.commit(temporary)
        finally:
            output.discard()


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


def _row_target(
    store: str, name: str | None, values: da.Array | np.ndarray, row_chunks: int, dtype: type
) -> tuple[da.Array, zarr.Array]:
    """An array ``name`` of ``store`` for ``values`` (one row per sample) in ``dtype``,
    chunked like the input's rows, and ``values`` in blocks of whole chunks of it."""
    values = da.asarray(values).astype(dtype)
    target = zarr.create_array(
        store=store,
        name=name,
        shape=values.shape,
        dtype=dtype,
        chunks=(max(1, min(row_chunks, len(values))), *values.shape[1:]),
    )
    if any(size % target.chunks[0] for size in values.chunks[0][:-1]):
        values = values.rechunk(target.chunks)  # blocks must hold whole chunks: no shared writes
    return values, target


def _store_labels(
    store: str, name: str | None, labels: da.Array | np.ndarray, row_chunks: int
) -> zarr.Array:
    """Write labels as an int32 array ``name`` of ``store``, one task per block of rows."""
    labels, target = _row_target(store, name, labels, row_chunks, np.int32)
    da.store(labels, target, lock=False)
    return target


def _signature(kind: Literal["fit", "labels"]) -> dict[str, str]:
    """The attributes that make a Zarr node a dkmeans result of this kind."""
    from . import __version__

    return {RESULT_ATTRIBUTE: kind, "dkmeans_version": __version__}


def write_result(
    path: str | os.PathLike | ClaimedOutput, km: Any, X: Any, *, overwrite: bool = False
) -> None:
    """Write a fitted :class:`~dkmeans.KMeans` and its training labels to a Zarr group.

    Parameters
    ----------
    path : str, path or ClaimedOutput
        The output group (local path or fsspec URL), or an output claimed with
        :func:`claim_output` before the fit.
    km : KMeans
        A fitted estimator; its ``labels_`` (NumPy or lazy Dask) are written.
    X : array-like, dask array, zarr.Array, xarray.DataArray or str
        The training data, for the row chunking of the labels.
    overwrite : bool
        Replace an existing dkmeans result once the new one is complete.

    Raises
    ------
    OutputExistsError, OutputBusyError, OutputNotWritableError
        See :func:`claim_output`.
    """
    row_chunks = _row_chunks(X)
    with atomic_output(path, overwrite=overwrite) as temporary:
        group = zarr.open_group(temporary, mode="a")  # the folder holds only our marker
        group.create_array(CENTERS, data=np.asarray(km.cluster_centers_))
        _store_labels(temporary, LABELS, km.labels_, row_chunks)
        group.attrs.update(
            {
                "inertia": float(km.inertia_),
                "n_iter": int(km.n_iter_),
                "n_clusters": int(km.n_clusters),
                "params": {key: _json_safe(value) for key, value in km.get_params().items()},
                **_signature("fit"),
            }
        )


def write_labels(
    path: str | os.PathLike | ClaimedOutput,
    labels: da.Array | np.ndarray,
    X: Any,
    *,
    distances: da.Array | np.ndarray | None = None,
    overwrite: bool = False,
) -> None:
    """Write the labels of ``X`` as a Zarr array (int32, chunked like X's rows), atomically.

    With ``distances``, ``labels`` and ``distances`` are the (n, m) nearest centres of
    every row (``KMeans.nearest_centers``), written as a Zarr group with the arrays
    ``labels`` (int32) and ``distances`` (float32), chunked like X's rows, in one pass
    over X.

    Raises
    ------
    OutputExistsError, OutputBusyError, OutputNotWritableError
        See :func:`claim_output`.
    """
    row_chunks = _row_chunks(X)
    with atomic_output(path, overwrite=overwrite) as temporary:
        if distances is None:
            root = _store_labels(temporary, None, labels, row_chunks)
        else:
            root = zarr.open_group(temporary, mode="a")  # the folder holds only our marker
            pairs = [
                _row_target(temporary, LABELS, labels, row_chunks, np.int32),
                _row_target(temporary, DISTANCES, distances, row_chunks, np.float32),
            ]
            da.store([values for values, _ in pairs], [target for _, target in pairs], lock=False)
        root.attrs.update(_signature("labels"))


def read_centers(path: str | os.PathLike) -> np.ndarray:
    """The ``cluster_centers`` (k, d) of a complete result written by :func:`write_result`.

    Raises
    ------
    ValueError
        If ``path`` is not a complete dkmeans fit result, or its centres are not a
        finite 2-D floating-point array.
    """
    path = os.fspath(path)
    kind = output_kind(path)
    if kind == "incomplete":
        raise ValueError(
            f"{path!r} is an incomplete dkmeans result (its writing was interrupted or is "
            "still going on); write it again with dkmeans fit --overwrite"
        )
    if kind != "fit":
        raise ValueError(
            f"{path!r} is not a dkmeans fit result (a Zarr group with a {CENTERS!r} array "
            f"and the attribute {RESULT_ATTRIBUTE}='fit', written by dkmeans fit --out)"
        )
    with storage_errors(path):
        try:
            centers = np.asarray(zarr.open_group(path, mode="r")[CENTERS][...])
        except KeyError as error:
            raise ValueError(f"the fit result {path!r} has no {CENTERS!r} array") from error
    if centers.ndim != 2 or centers.dtype.kind != "f" or not np.isfinite(centers).all():
        raise ValueError(
            f"the {CENTERS!r} of {path!r} are not a finite 2-D floating-point array "
            f"(shape {centers.shape}, dtype {centers.dtype})"
        )
    return centers


def read_metric(path: str | os.PathLike) -> str:
    """The ``metric`` a fit result was fitted with (its ``params``); ``"euclidean"`` for
    results written before dkmeans had the parameter. Call after :func:`read_centers`.

    Raises
    ------
    ValueError
        If the recorded metric is not one dkmeans knows.
    """
    path = os.fspath(path)
    with storage_errors(path):
        params = zarr.open_group(path, mode="r").attrs.get("params", {})
    metric = params.get("metric", "euclidean") if isinstance(params, dict) else "euclidean"
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"the fit result {path!r} records an unknown metric {metric!r}")
    return metric
