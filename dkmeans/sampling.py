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
from .kernels import gemm_operands, min_squared_distances


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


def _drop_below(run, threshold, kept_rows, kept_keys, n_kept):
    """Keep only the run's kept rows whose key is at least ``threshold``."""
    filled = 0
    for slot in range(n_kept[run]):
        if kept_keys[run, slot] >= threshold:
            kept_rows[run, filled] = kept_rows[run, slot]
            kept_keys[run, filled] = kept_keys[run, slot]
            filled += 1
    n_kept[run] = filled


def _oversample_loop(
    x,
    centers_gemm_t,
    centers_sq,
    bounds,
    weights,
    step,
    oversampling,
    streams,
    row0,
    cost,
    kept_rows,
    kept_keys,
    n_kept,
):
    """One k-means|| round of every run over one block, in one compiled call.

    Per row sub-block one GEMM against all runs' candidates; then for every row and
    run the squared distance to the nearest candidate, the run's cost, and the row's
    key. A row is kept while its key is at least the cost so far (the block's cost only
    grows, so a row dropped here could never be kept). Returns False when a run keeps
    more rows than its slots hold. ``weights`` of None (all ones) are compiled out.
    """
    n_rows, n_features = x.shape
    capacity = kept_rows.shape[1]
    partial = np.empty((min(step, n_rows), centers_gemm_t.shape[1]), dtype=x.dtype)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        block_partial = partial[: stop - start]
        np.dot(x[start:stop], centers_gemm_t, block_partial)
        for i in range(stop - start):
            w = 1.0 if weights is None else weights[start + i]
            if not w > 0:
                continue
            x_sq = 0.0
            for f in range(n_features):
                value = np.float64(x[start + i, f])
                x_sq += value * value
            row = np.uint64(row0 + start + i)
            for r in range(bounds.shape[0] - 1):
                nearest = kernels._segment_min_compiled(
                    block_partial[i], centers_sq, bounds[r], bounds[r + 1]
                )
                mass = w * max(np.float64(nearest) + x_sq, 0.0)
                cost[r] += mass
                if not mass > 0:
                    continue
                key = oversampling[r] * mass / _uniform_compiled(streams[r], row)
                if key >= cost[r]:
                    if n_kept[r] == capacity:
                        _drop_below_compiled(r, cost[r], kept_rows, kept_keys, n_kept)
                        if n_kept[r] == capacity:
                            return False
                    kept_rows[r, n_kept[r]] = start + i
                    kept_keys[r, n_kept[r]] = key
                    n_kept[r] += 1
    return True


if kernels.numba is not None:
    _jit = kernels.numba.njit(nogil=True, cache=True)
    _uniform_compiled = _jit(_uniform)
    _exponential_keys_compiled = _jit(_exponential_keys_loop)
    _drop_below_compiled = _jit(_drop_below)
    # reassoc vectorises the squared norms and the nearest-candidate minima
    _oversample_compiled = kernels.numba.njit(
        nogil=True, cache=True, fastmath={"reassoc", "contract"}
    )(_oversample_loop)


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
        Global index of the first row; position of the block (unused: the draws
        belong to the rows).
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
    del block_index
    streams = np.array(
        [stream_key(int(seed), Purpose.OVERSAMPLE, round_index) for seed in seeds],
        dtype=np.uint64,
    )
    oversampling = np.asarray(oversampling, dtype=np.float64)
    block_round = _oversample_compiled_block if kernels.USE_NUMBA else _oversample_numpy
    cost, kept = block_round(x, weights, row_offset, candidates, bounds, oversampling, streams)
    return PerRun(
        Oversample(
            float(cost[r]), keys, row_offset + rows, np.asarray(x[rows], dtype=np.float64)
        ).kept()
        for r, (rows, keys) in enumerate(kept)
    )


def _oversample_numpy(x, weights, row_offset, candidates, bounds, oversampling, streams):
    """NumPy twin of :func:`_oversample_loop`: per run, the block's cost and the
    block-local rows (with their keys) that may be kept."""
    w = _weights(weights, len(x))
    distances = min_squared_distances(x, candidates, bounds)
    cost, kept = np.zeros(len(streams)), []
    for r, stream in enumerate(streams):
        with np.errstate(invalid="ignore"):
            mass = np.where(w > 0, w * distances[:, r], 0.0)
        keys = oversampling[r] * mass / row_uniforms(stream, row_offset, len(x))
        # summed in row order, like the compiled loop
        cost[r] = np.cumsum(mass)[-1] if len(x) else 0.0
        rows = np.flatnonzero((mass > 0) & (keys >= cost[r]))
        kept.append((rows, keys[rows]))
    return cost, kept


def _oversample_compiled_block(x, weights, row_offset, candidates, bounds, oversampling, streams):
    """:func:`_oversample_loop` on a block, with more slots if the first ones overflow."""
    n_runs = len(streams)
    dtype, centers_gemm_t, centers_sq = gemm_operands(x, candidates)
    x = np.ascontiguousarray(x, dtype=dtype)
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    bounds = np.asarray(bounds, dtype=np.int64)
    step = kernels.sub_block_rows(len(candidates), x.shape[1])
    # a run keeps about l rows per round in all; the slots overflow only by bad luck
    for capacity in (min(len(x), int(4 * oversampling.max(initial=0)) + 64), len(x)):
        cost = np.zeros(n_runs)
        kept_rows = np.empty((n_runs, capacity), dtype=np.int64)
        kept_keys = np.empty((n_runs, capacity))
        n_kept = np.zeros(n_runs, dtype=np.int64)
        done = _oversample_compiled(
            x,
            centers_gemm_t,
            centers_sq,
            bounds,
            w,
            step,
            oversampling,
            streams,
            row_offset,
            cost,
            kept_rows,
            kept_keys,
            n_kept,
        )
        if done:
            break
    kept = [(kept_rows[r, : n_kept[r]], kept_keys[r, : n_kept[r]]) for r in range(n_runs)]
    return cost, kept


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
