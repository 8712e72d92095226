"""Sampling kernels for the initialisers, one block of rows at a time.

Every random number belongs to a row, not to a block: it is a hash of (seed, purpose,
round, global row index) (:func:`row_uniforms`). So a sample depends neither on the
scheduler nor on how the rows are cut into blocks. Combining two partial results is
associative and order-independent (ties broken by global row index).

The per-row loops of the k-means|| rounds and of the key draws are compiled by numba
when it is installed (see :mod:`dkmeans.kernels`); their NumPy twins draw the same
rows (the costs may differ in the last bits: the GEMMs and sums are not the same code).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from . import kernels
from .kernels import min_squared_distances


class Purpose(IntEnum):
    """Separates the random streams of the different samplers."""

    SMALLEST_KEYS = 1
    OVERSAMPLE = 2
    PLUSPLUS = 3


def stream_key(seed: int, purpose: int, *counters: int) -> np.uint64:
    """The key of one random stream: every row draws one number from it."""
    words = [seed, purpose, *counters]
    return np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]


# splitmix64 (Steele, Lea & Flood 2014) of stream + row * golden ratio
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_1, _SHIFT_2, _SHIFT_3 = np.uint64(30), np.uint64(27), np.uint64(31)
_MANTISSA_SHIFT = np.uint64(11)
_ULP = 2.0**-53


def _uniform(stream, row):
    """Uniform on (0, 1] of a row, or of an array of rows (NumPy uint64 arithmetic
    wraps around, like the compiled one)."""
    z = stream + row * _GOLDEN
    z = (z ^ (z >> _SHIFT_1)) * _MIX_1
    z = (z ^ (z >> _SHIFT_2)) * _MIX_2
    z = z ^ (z >> _SHIFT_3)
    return (np.float64(z >> _MANTISSA_SHIFT) + 1.0) * _ULP


def row_uniforms(stream: np.uint64, row_offset: int, n_rows: int) -> np.ndarray:
    """Uniform numbers on (0, 1] of the rows ``row_offset .. row_offset + n_rows - 1``."""
    return _uniform(stream, np.arange(row_offset, row_offset + n_rows, dtype=np.uint64))


def _exponential_keys_loop(weights, stream, row0, out):
    """``out[i] = Exp(1) / w[i]`` of row ``row0 + i`` (``inf`` where ``w[i] <= 0``);
    ``weights`` of None (all ones) are compiled out."""
    for i in range(out.shape[0]):
        w = 1.0 if weights is None else weights[i]
        if w > 0:
            out[i] = -np.log(_uniform_compiled(stream, np.uint64(row0 + i))) / w
        else:
            out[i] = np.inf


if kernels.numba is not None:
    _jit = kernels.numba.njit(nogil=True, cache=True)
    _uniform_compiled = _jit(_uniform)
    _exponential_keys_compiled = _jit(_exponential_keys_loop)


def exponential_keys(weights: np.ndarray | None, stream: np.uint64, row_offset: int, n_rows: int):
    """Keys ``Exp(1) / w`` of a block's rows (``inf`` for weight 0): the rows with the
    smallest keys are a weighted sample without replacement (Efraimidis & Spirakis)."""
    if kernels.USE_NUMBA:
        out = np.empty(n_rows)
        w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        _exponential_keys_compiled(w, stream, row_offset, out)
        return out
    w = _weights(weights, n_rows)
    exp = -np.log(row_uniforms(stream, row_offset, n_rows))
    with np.errstate(divide="ignore"):
        return np.where(w > 0, exp / np.where(w > 0, w, 1.0), np.inf)


def _weights(weights: np.ndarray | None, n_rows: int) -> np.ndarray:
    return np.ones(n_rows) if weights is None else np.asarray(weights, dtype=np.float64)


class PerRun(tuple):
    """Partial results of several runs sharing one pass, combined run by run."""

    def combine(self, other: PerRun) -> PerRun:
        return PerRun(a.combine(b) for a, b in zip(self, other, strict=True))


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
