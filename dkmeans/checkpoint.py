"""Save a fit's state after every pass and resume from it, safely.

A checkpoint is one ``.npz`` file: NumPy arrays plus a JSON header, written to a
temporary file and renamed over the old one (atomic on POSIX), and read back with
``allow_pickle=False``: loading a checkpoint never runs code.

The header holds a *fingerprint* of the fit (its parameters and the identity of the
data); a checkpoint is only resumed by a fit with the same fingerprint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .lloyd import LloydResult, LloydState

FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a fit with other parameters or other data."""


def _mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [key for key in keys if saved.get(key) != current.get(key)]


class Checkpoint:
    """The checkpoint file of one fit.

    Parameters
    ----------
    path : str or path
        File to write (``.npz`` is the natural suffix).
    fingerprint : dict
        JSON-serialisable description of the fit's parameters and data.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))

    def load(self) -> tuple[np.ndarray, list[np.ndarray], LloydState] | None:
        """The saved seeds, initial centres and Lloyd state; None if no file exists.

        Raises
        ------
        CheckpointMismatchError
            If the checkpoint belongs to other parameters or other data.
        """
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a fit killed while saving
        if not self.path.exists():
            return None
        with np.load(self.path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
        if header.get("format") != FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"{self.path} is not a dkmeans checkpoint of format {FORMAT_VERSION}; "
                "delete it or choose another path"
            )
        differing = _mismatch(header["fingerprint"], self.fingerprint)
        if differing:
            raise CheckpointMismatchError(
                f"checkpoint {self.path} was written for other "
                f"{'data' if any(key.startswith('data') for key in differing) else 'parameters'} "
                f"(differs in: {', '.join(differing)}); delete it or choose another path"
            )
        runs = header["runs"]
        initial = [arrays[f"initial_{r}"] for r in range(runs)]
        state = LloydState(
            centers=[arrays[f"centers_{r}"] for r in range(runs)],
            n_iter=header["n_iter"],
            stopped=header["stopped"],
            final={
                int(r): LloydResult(
                    arrays[f"final_centers_{r}"], inertia, n_iter, arrays[f"final_counts_{r}"]
                )
                for r, (inertia, n_iter) in header["final"].items()
            },
            tol_abs=header["tol_abs"],
            iteration=header["iteration"],
        )
        return arrays["seeds"], initial, state

    def save(self, seeds: np.ndarray, initial: list[np.ndarray], state: LloydState) -> None:
        """Write the state atomically (temporary file, then rename)."""
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
