"""Sampling kernels for the initialisers, one block of rows at a time.

Every random number belongs to a row, not to a block (:mod:`dkmeans.streams`). So a
sample depends neither on the scheduler nor on how the rows are cut into blocks.
Combining two partial results is associative and order-independent (ties broken by
global row index).

The key draws run compiled (:func:`dkmeans.loops.exponential_keys`) or vectorised, as
:mod:`dkmeans.engine` says; both draw the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import engine, loops
from .frame import shifted
from .kernels import min_squared_distances
from .statistics import PerRun
from .streams import Purpose, row_uniforms, stream_key


def exponential_keys(weights: np.ndarray | None, stream: np.uint64, row_offset: int, n_rows: int):
    """Keys ``Exp(1) / w`` of a block's rows (``inf`` for weight 0): the rows with the
    smallest keys are a weighted sample without replacement (Efraimidis & Spirakis)."""
    if engine.current() == "numba":
        out = np.empty(n_rows)
        w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        loops.exponential_keys(weights=w, stream=stream, row0=row_offset, out=out)
        return out
    w = _weights(weights, n_rows)
    exp = -np.log(row_uniforms(stream, row_offset, n_rows))
    with np.errstate(divide="ignore"):
        return np.where(w > 0, exp / np.where(w > 0, w, 1.0), np.inf)


def _weights(weights: np.ndarray | None, n_rows: int) -> np.ndarray:
    return np.ones(n_rows) if weights is None else np.asarray(weights, dtype=np.float64)


@dataclass(frozen=True)
class KeySample:
    """The rows with the smallest random keys ``Exp(1) / w`` of one stream.

    Keeping the ``size`` smallest keys is weighted sampling without replacement
    (Efraimidis & Spirakis): a row of weight ``w`` is drawn like ``w`` copies.
    """

    keys: np.ndarray  # (m,)
    index: np.ndarray  # (m,) global row index
    rows: np.ndarray  # (m, d) float64
    size: int

    @classmethod
    def select(cls, keys, index, rows, size: int) -> KeySample:
        order = np.lexsort((index, keys))[:size]
        order = order[np.isfinite(keys[order])]
        return cls(keys[order], index[order], np.asarray(rows[order], dtype=np.float64), size)

    def combine(self, other: KeySample) -> KeySample:
        return KeySample.select(
            np.concatenate([self.keys, other.keys]),
            np.concatenate([self.index, other.index]),
            np.concatenate([self.rows, other.rows]),
            self.size,
        )


def smallest_keys(
    x: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    block_index: int,
    size: int,
    seeds: np.ndarray,
) -> PerRun:
    """Weighted samples of ``size`` distinct rows, one per seed (partial: this block's
    smallest keys)."""
    del block_index
    index = np.arange(row_offset, row_offset + len(x))
    samples = []
    for seed in seeds:
        stream = stream_key(int(seed), Purpose.SMALLEST_KEYS)
        keys = exponential_keys(weights, stream, row_offset, len(x))
        if len(x) > size:
            candidates = np.argpartition(keys, size - 1)[:size]
        else:
            candidates = np.arange(len(x))
        samples.append(KeySample.select(keys[candidates], index[candidates], x[candidates], size))
    return PerRun(samples)


@dataclass(frozen=True)
class TrialStats:
    """One greedy k-means++ step: the potential of every trial centre, and for each
    trial, the next step's draws as if that trial were chosen.

    Draw ``j`` under trial ``t`` goes to the row with the smallest ``E[row, j] / p_t``
    (``E`` exponential, ``p_t = w * d²``): sampling with replacement proportional to
    ``p_t``, computed one block at a time.
    """

    potentials: np.ndarray  # (T,)
    keys: np.ndarray  # (T, L)
    index: np.ndarray  # (T, L)
    rows: np.ndarray  # (T, L, d)

    def combine(self, other: TrialStats) -> TrialStats:
        other_wins = (other.keys < self.keys) | (
            (other.keys == self.keys) & (other.index < self.index)
        )
        return TrialStats(
            self.potentials + other.potentials,
            np.where(other_wins, other.keys, self.keys),
            np.where(other_wins, other.index, self.index),
            np.where(other_wins[..., None], other.rows, self.rows),
        )


def plusplus_trials(
    x: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    block_index: int,
    centers: np.ndarray,
    trials: np.ndarray,
    n_draws: int,
    seed: int,
    step: int,
) -> TrialStats:
    """Potentials of the trial centres and the next draws under each of them.

    Parameters
    ----------
    centers : ndarray of shape (c, d)
        Centres chosen so far (may be empty).
    trials : ndarray of shape (T, d)
        Trial centres of this step.
    n_draws : int
        Draws for the next step (0 on the last step).
    seed, step : int
        Randomness of this step.
    """
    del block_index
    w = _weights(weights, len(x))
    current = min_squared_distances(x, centers)[:, 0]
    per_trial = min_squared_distances(x, trials, np.arange(len(trials) + 1))
    mass = w[:, None] * np.minimum(current[:, None], per_trial)  # (rows, T)
    exp = np.empty((len(x), n_draws))
    for draw in range(n_draws):
        stream = stream_key(seed, Purpose.PLUSPLUS, step, draw)
        exp[:, draw] = exponential_keys(None, stream, row_offset, len(x))
    n_trials, n_features = trials.shape
    keys = np.full((n_trials, n_draws), np.inf)
    index = np.full((n_trials, n_draws), np.iinfo(np.int64).max)
    rows = np.zeros((n_trials, n_draws, n_features))
    if len(x) and n_draws:
        for t in range(n_trials):
            with np.errstate(divide="ignore", invalid="ignore"):
                trial_keys = exp / mass[:, t : t + 1]
            trial_keys[~(trial_keys >= 0)] = np.inf
            best = trial_keys.argmin(axis=0)
            keys[t] = trial_keys[best, np.arange(n_draws)]
            finite = np.isfinite(keys[t])
            index[t, finite] = row_offset + best[finite]
            rows[t, finite] = x[best[finite]]
    return TrialStats(mass.sum(axis=0), keys, index, rows)


@dataclass(frozen=True)
class WeightedRows:
    """Rows with their weights, in global row order (small data gathered whole)."""

    rows: np.ndarray  # (m, d) float64
    weights: np.ndarray  # (m,)

    def combine(self, other: WeightedRows) -> WeightedRows:
        return WeightedRows(
            np.concatenate([self.rows, other.rows]), np.concatenate([self.weights, other.weights])
        )


def weighted_rows(
    x: np.ndarray, weights: np.ndarray | None, row_offset: int, block_index: int
) -> WeightedRows:
    """The block's rows of positive weight (partial: in the order of the rows)."""
    del row_offset, block_index
    w = _weights(weights, len(x))
    keep = w > 0
    return WeightedRows(np.asarray(x[keep], dtype=np.float64), w[keep])


class KeptRows(NamedTuple):
    """One block's rows of :class:`UniformRows`."""

    rows: np.ndarray  # (m, d), as the source shows them (in their computing dtype)
    weights: np.ndarray  # (m,)
    member: np.ndarray  # (m, R) bool: row in run r's sample


@dataclass(frozen=True)
class UniformRows:
    """Rows kept by a uniform draw of their own, per run, block by block in global row
    order.

    Row ``i`` belongs to run ``r``'s sample when its uniform number of run ``r``'s stream
    is below ``fractions[r]``: each row is kept independently, whatever block it is in,
    and the sample of a smaller fraction (same stream) is part of that of a larger one.
    Combining joins the lists of blocks; :meth:`of_run` copies a run's rows once (joining
    them at every node of the tree copied the sample about five times).
    """

    parts: tuple[KeptRows, ...]

    def combine(self, other: UniformRows) -> UniformRows:
        return UniformRows(self.parts + other.parts)

    def of_run(self, run: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of run ``run``'s sample and their weights (copied once)."""
        members = [part.member[:, run] for part in self.parts]
        edges = np.cumsum([0, *(np.count_nonzero(m) for m in members)])
        first = self.parts[0].rows
        rows = np.empty((edges[-1], first.shape[1]), dtype=first.dtype)
        weights = np.empty(edges[-1])
        for part, member, start, stop in zip(self.parts, members, edges, edges[1:], strict=False):
            np.compress(member, part.rows, axis=0, out=rows[start:stop])
            np.compress(member, part.weights, out=weights[start:stop])
        return rows, weights


def uniform_rows(
    x: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    block_index: int,
    fractions: np.ndarray,
    streams: np.ndarray,
    shift: np.ndarray | None = None,
) -> UniformRows:
    """The block's rows of positive weight that some run's uniform sample keeps
    (``fractions[r]`` of the rows from stream ``streams[r]``; partial: in row order), in
    the frame of ``shift`` (only the kept rows are shifted)."""
    del block_index
    w = _weights(weights, len(x))
    member = np.empty((len(x), len(streams)), dtype=bool)
    for r, (fraction, stream) in enumerate(zip(fractions, streams, strict=True)):
        member[:, r] = row_uniforms(stream, row_offset, len(x)) <= fraction
    member &= (w > 0)[:, None]
    keep = member.any(axis=1)
    return UniformRows((KeptRows(shifted(x[keep], shift), w[keep], member[keep]),))


uniform_rows.takes_shift = True
