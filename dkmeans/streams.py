"""Per-row random streams: every random number belongs to a row, not to a block.

A number is a hash of (seed, purpose, round, global row index): a sample depends neither
on the scheduler nor on how the rows are cut into blocks. :func:`uniform` is plain
uint64 arithmetic, so the NumPy kernels call it on arrays of rows and
:mod:`dkmeans.loops` compiles it for one row at a time; both give the same numbers.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Purpose(IntEnum):
    """Separates the random streams of the different samplers."""

    SMALLEST_KEYS = 1
    OVERSAMPLE = 2
    PLUSPLUS = 3
    SEEDING_SAMPLE = 4


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


def uniform(stream, row):
    """Uniform on (0, 1] of a row, or of an array of rows (NumPy uint64 arithmetic
    wraps around, like the compiled one)."""
    z = stream + row * _GOLDEN
    z = (z ^ (z >> _SHIFT_1)) * _MIX_1
    z = (z ^ (z >> _SHIFT_2)) * _MIX_2
    z = z ^ (z >> _SHIFT_3)
    return (np.float64(z >> _MANTISSA_SHIFT) + 1.0) * _ULP


def row_uniforms(stream: np.uint64, row_offset: int, n_rows: int) -> np.ndarray:
    """Uniform numbers on (0, 1] of the rows ``row_offset .. row_offset + n_rows - 1``."""
    return uniform(stream, np.arange(row_offset, row_offset + n_rows, dtype=np.uint64))
