"""Pure-NumPy sampling kernels for the initialisers, one block of rows at a time.

Every random draw of a block comes from :func:`dkmeans.kernels.block_rng` seeded by
(seed, purpose, round, block index), so that the sample does not depend on the
scheduler or on the order in which blocks finish. Combining two partial results is
associative and order-independent (ties broken by global row index).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .kernels import block_rng, min_squared_distances


class Purpose(IntEnum):
    """Separates the random streams of the different samplers."""

    SMALLEST_KEYS = 1
    OVERSAMPLE = 2
    PLUSPLUS = 3


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
    w = _weights(weights, len(x))
    index = np.arange(row_offset, row_offset + len(x))
    samples = []
    for seed in seeds:
        exp = block_rng(int(seed), Purpose.SMALLEST_KEYS, 0, block_index).exponential(size=len(x))
        with np.errstate(divide="ignore"):
            keys = np.where(w > 0, exp / w, np.inf)
        if len(x) > size:
            candidates = np.argpartition(keys, size - 1)[:size]
        else:
            candidates = np.arange(len(x))
        samples.append(KeySample.select(keys[candidates], index[candidates], x[candidates], size))
    return PerRun(samples)


@dataclass(frozen=True)
class Oversample:
    """One k-means|| round of one run: its cost and the rows it may keep.

    A row is kept when ``key = l * w * d² / u >= cost`` with ``u`` uniform on (0, 1],
    i.e. with probability ``min(1, l * w * d² / cost)``. ``cost`` only grows as
    partial results are combined, so rows below the partial cost can be dropped at
    every level of the tree: the root holds about ``l`` rows whatever the fan-in.
    """

    cost: float
    keys: np.ndarray  # (m,)
    index: np.ndarray  # (m,)
    rows: np.ndarray  # (m, d) float64

    def kept(self) -> Oversample:
        keep = self.keys >= self.cost if self.cost > 0 else np.zeros(len(self.keys), bool)
        order = np.argsort(self.index[keep], kind="stable")
        return Oversample(
            self.cost, self.keys[keep][order], self.index[keep][order], self.rows[keep][order]
        )

    def combine(self, other: Oversample) -> Oversample:
        return Oversample(
            self.cost + other.cost,
            np.concatenate([self.keys, other.keys]),
            np.concatenate([self.index, other.index]),
            np.concatenate([self.rows, other.rows]),
        ).kept()


def oversample(
    x: np.ndarray,
    weights: np.ndarray | None,
    row_offset: int,
    block_index: int,
    candidates: np.ndarray,
    bounds: np.ndarray,
    oversampling: np.ndarray,
    seeds: np.ndarray,
    round_index: int,
) -> PerRun:
    """One k-means|| round for every run: cost under the candidates and new draws.

    Parameters
    ----------
    x : ndarray of shape (rows, d)
    weights : ndarray of shape (rows,) or None
    row_offset, block_index : int
        Global index of the first row; position of the block.
    candidates : ndarray of shape (M, d)
        Stacked current candidates of all runs.
    bounds : ndarray of shape (R + 1,)
        Run ``r`` owns ``candidates[bounds[r]:bounds[r + 1]]``.
    oversampling : ndarray of shape (R,)
        Expected number of draws per round ``l`` of every run.
    seeds : ndarray of shape (R,)
        Seed of every run.
    round_index : int

    Returns
    -------
    PerRun of Oversample
    """
    w = _weights(weights, len(x))
    distances = min_squared_distances(x, candidates, bounds)
    index = np.arange(row_offset, row_offset + len(x))
    runs = []
    for r, seed in enumerate(seeds):
        mass = w * distances[:, r]
        u = 1.0 - block_rng(int(seed), Purpose.OVERSAMPLE, round_index, block_index).random(len(x))
        keys = oversampling[r] * mass / u
        cost = float(mass.sum())
        keep = keys >= cost if cost > 0 else np.zeros(len(x), bool)
        runs.append(
            Oversample(cost, keys[keep], index[keep], np.asarray(x[keep], dtype=np.float64))
        )
    return PerRun(runs)


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
    w = _weights(weights, len(x))
    current = min_squared_distances(x, centers)[:, 0]
    per_trial = min_squared_distances(x, trials, np.arange(len(trials) + 1))
    mass = w[:, None] * np.minimum(current[:, None], per_trial)  # (rows, T)
    exp = block_rng(seed, Purpose.PLUSPLUS, step, block_index).exponential(size=(len(x), n_draws))
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
