"""Save a fit's state after every pass and resume from it, safely.

A checkpoint is one ``.npz`` file: NumPy arrays plus a JSON header, read back with
``allow_pickle=False``: loading a checkpoint never runs code. On a local disk it is
written to a temporary file and renamed over the old one (atomic on POSIX); at an
fsspec URL (``s3://bucket/fit.npz``) it is written with one upload of the whole file,
which object stores (S3, GCS, Azure) make visible whole or not at all.

The header holds a *fingerprint* of the fit (its parameters and the identity of the
data); a checkpoint is only resumed by a fit with the same fingerprint. Everything read
is checked before it is used (the header's keys and types, the number of runs, every
array's shape, dtype and finiteness, the iteration counts): a damaged file is refused
with a :class:`CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .fs import filesystem, is_url, storage_errors
from .lloyd import LloydResult, LloydState

FORMAT_VERSION = 1
#: The first bytes of every ``.npz`` file (a zip archive).
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or holds values no fit could have saved."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written by a fit with other parameters or other data."""


def _mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [key for key in keys if saved.get(key) != current.get(key)]


def _is_count(value: Any, low: int = 0, high: float = np.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


class Checkpoint:
    """The checkpoint file of one fit.

    Parameters
    ----------
    path : str or path
        File to write (``.npz`` is the natural suffix): a local path or an fsspec URL.
    fingerprint : dict
        JSON-serialisable description of the fit's parameters and data, with at least
        ``k_values`` (clusters of every k fitted), ``data_shape`` and ``params``
        (holding ``max_iter``): what a saved state is checked against.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        self.path = os.fspath(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))

    def _damaged(self, problem: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.path} is damaged: {problem}; delete it or choose another path"
        )

    def load(self) -> tuple[np.ndarray, list[np.ndarray], LloydState] | None:
        """The saved seeds, initial centres and Lloyd state; None if no file exists.

        Raises
        ------
        CheckpointMismatchError
            If the checkpoint belongs to other parameters or other data.
        CheckpointError
            If the file is not a readable checkpoint or holds impossible values.
        PermissionError
            If a local checkpoint's folder cannot be written: found here, before the
            fit's first pass, not when the first pass is saved.
        """
        if not is_url(self.path):
            local = Path(self.path)
            self._check_writable(local)
            for stale in local.parent.glob(f".{local.name}.*.tmp"):
                stale.unlink(missing_ok=True)  # left by a fit killed while saving
        with storage_errors(self.path):
            fs, inner = filesystem(self.path)
            if not fs.exists(inner):
                return None
            raw = fs.cat_file(inner)
        arrays = self._read_arrays(raw)
        header = self._read_header(arrays.pop("header", None))
        return self._state(header, arrays)

    def _temporary(self, local: Path) -> Path:
        return local.with_name(f".{local.name}.{os.getpid()}.tmp")

    def _check_writable(self, local: Path) -> None:
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            self._temporary(local).touch()
            self._temporary(local).unlink()
        except OSError as error:
            raise PermissionError(
                f"cannot write checkpoint {self.path}: {error.strerror or error} ({local.parent})"
            ) from error

    def _read_arrays(self, raw: bytes) -> dict[str, np.ndarray]:
        if not raw:
            raise self._damaged("the file is empty")
        if not raw.startswith(ZIP_MAGIC):
            raise self._damaged("not a NumPy .npz archive")
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as error:
            # a truncated or altered archive; ValueError also for object arrays
            reason = "holds Python objects" if "pickle" in str(error) else str(error)
            raise self._damaged(f"unreadable .npz archive ({reason})") from None
        for name, value in arrays.items():
            if not isinstance(value, np.ndarray):  # np.load gives other members as bytes
                raise self._damaged(f"unreadable .npz archive ({name!r} is not a NumPy array)")
        return arrays

    def _read_header(self, raw: np.ndarray | None) -> dict[str, Any]:
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise self._damaged("no header")
        try:
            header = json.loads(raw.tobytes().decode())
        except ValueError:  # UnicodeDecodeError and JSONDecodeError
            raise self._damaged("its header is not JSON") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"{self.path} is not a dkmeans checkpoint of format {FORMAT_VERSION}; "
                "delete it or choose another path"
            )
        if not isinstance(header.get("fingerprint"), dict):
            raise self._damaged("its header has no fingerprint")
        differing = _mismatch(header["fingerprint"], self.fingerprint)
        if differing:
            raise CheckpointMismatchError(
                f"checkpoint {self.path} was written for other "
                f"{'data' if any(key.startswith('data') for key in differing) else 'parameters'} "
                f"(differs in: {', '.join(differing)}); delete it or choose another path"
            )
        return header

    def _state(
        self, header: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray], LloydState]:
        """Check the header's values and the arrays against the fingerprint."""
        seeds = arrays.get("seeds")
        if seeds is None or seeds.ndim != 1 or seeds.dtype.kind not in "iu" or not len(seeds):
            raise self._damaged("'seeds' is not a non-empty array of integers")
        sizes = [k for k in self.fingerprint["k_values"] for _ in seeds]
        runs = len(sizes)
        max_iter = self.fingerprint["params"]["max_iter"]
        iteration = header.get("iteration")
        if header.get("runs") != runs:
            raise self._damaged(f"it holds {header.get('runs')!r} runs where the fit has {runs}")
        if not _is_count(iteration, 0, max_iter):
            raise self._damaged(f"iteration {iteration!r} is not in 0..max_iter={max_iter}")
        n_iter, stopped = header.get("n_iter"), header.get("stopped")
        if not (isinstance(n_iter, list) and len(n_iter) == runs):
            raise self._damaged(f"'n_iter' is not a list of {runs} counts")
        if not all(_is_count(value, 0, iteration) for value in n_iter):
            raise self._damaged(f"'n_iter' {n_iter} is not within 0..iteration={iteration}")
        if not (isinstance(stopped, list) and len(stopped) == runs):
            raise self._damaged(f"'stopped' is not a list of {runs} booleans")
        if not all(isinstance(value, bool) for value in stopped):
            raise self._damaged(f"'stopped' is not a list of {runs} booleans")
        tol_abs = header.get("tol_abs")
        if tol_abs is not None and not (_is_number(tol_abs) and tol_abs >= 0):
            raise self._damaged(f"'tol_abs' {tol_abs!r} is not a non-negative number")
        final = header.get("final")
        if not isinstance(final, dict):
            raise self._damaged("'final' is not a mapping of runs to results")
        n_features = self.fingerprint["data_shape"][1]
        initial = [
            self._centers(arrays, f"initial_{r}", (sizes[r], n_features)) for r in range(runs)
        ]
        centers = [
            self._centers(arrays, f"centers_{r}", (sizes[r], n_features)) for r in range(runs)
        ]
        results = {}
        for key, value in final.items():
            if not (key.isdigit() and int(key) < runs):
                raise self._damaged(f"'final' names run {key!r} of {runs}")
            r = int(key)
            if not (
                isinstance(value, list)
                and len(value) == 2
                and _is_number(value[0])
                and value[0] >= 0
                and _is_count(value[1], 0, iteration)
            ):
                raise self._damaged(f"the result of run {r} is not [inertia, n_iter]: {value!r}")
            counts = self._centers(arrays, f"final_counts_{r}", (sizes[r],))
            if (counts < 0).any():
                raise self._damaged(f"'final_counts_{r}' holds negative weights")
            results[r] = LloydResult(
                self._centers(arrays, f"final_centers_{r}", (sizes[r], n_features)),
                float(value[0]),
                value[1],
                counts,
            )
        state = LloydState(centers, n_iter, stopped, results, tol_abs, iteration)
        return seeds, initial, state

    def _centers(
        self, arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]
    ) -> np.ndarray:
        """The array ``name``, checked to be finite floating point of ``shape``."""
        array = arrays.get(name)
        if array is None:
            raise self._damaged(f"the array {name!r} is missing")
        if array.shape != shape or array.dtype.kind != "f":
            raise self._damaged(
                f"{name!r} has shape {array.shape} and dtype {array.dtype} where the fit "
                f"needs floating point of shape {shape}"
            )
        if not np.isfinite(array).all():
            raise self._damaged(f"{name!r} holds NaN or infinity")
        return array

    def save(self, seeds: np.ndarray, initial: list[np.ndarray], state: LloydState) -> None:
        """Write the state atomically (local: temporary file and rename; URL: one upload)."""
        header = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "runs": len(state.centers),
            "n_iter": state.n_iter,
            "stopped": state.stopped,
            "final": {str(r): [res.inertia, res.n_iter] for r, res in state.final.items()},
            "tol_abs": state.tol_abs,
            "iteration": state.iteration,
        }
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
        arrays["seeds"] = np.asarray(seeds)
        for r, centers in enumerate(state.centers):
            arrays[f"initial_{r}"] = initial[r]
            arrays[f"centers_{r}"] = centers
        for r, result in state.final.items():
            arrays[f"final_centers_{r}"] = result.centers
            arrays[f"final_counts_{r}"] = result.counts
        if is_url(self.path):
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            with storage_errors(self.path):
                fs, inner = filesystem(self.path)
                fs.pipe_file(inner, buffer.getvalue())
            return
        local = Path(self.path)
        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._temporary(local)
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, local)
