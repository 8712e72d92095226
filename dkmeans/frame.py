"""The frame in which the kernels see the data: rows minus a shift that brings them near
the origin, and the values a frame can hold.

Nearest centres come from the GEMM expansion ``||x||² - 2 x·c + ||c||²``. When the data
sits far from the origin relative to its spread (projected coordinates in metres,
timestamps, readings on a baseline), the three terms are huge and nearly cancel: at an
offset of 10⁵ times the spread, float32 keeps no correct digit of the differences that
decide the nearest centre. scikit-learn subtracts the mean of X before fitting; dkmeans
subtracts a *shift* chosen from the first rows of X (no extra pass over the data, no
copy of X), and only when the data needs it, so that data near the origin is clustered
exactly as before. Everything is reported in the user's frame.

One block at a time; no Dask graphs.
"""

from __future__ import annotations

import numpy as np

from . import engine, loops

#: Rows from the start of X that choose the shift (one read of the first block).
SAMPLE_ROWS = 1024
#: The data is shifted when the median of the sample lies farther from the origin than
#: this many times the sample's root-mean-square distance to that median. Below it the
#: expansion loses less than ``16 * eps`` relative to the squared distances.
FAR_FROM_ORIGIN = 4.0
#: Largest magnitude accepted in X: squared distances, summed over features and rows
#: (inertia), stay finite in float64 (``1e308``) for up to 10⁸ features·rows squared.
MAX_MAGNITUDE = 1e150
#: Bytes of the row groups in which NumPy checks a block's values: its min and max of a
#: group read it from the cache, so that the block is read from memory once.
CHECK_GROUP_BYTES = 1 << 20


def choose_shift(sample: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """The shift that brings rows like ``sample`` near the origin, or None if they are.

    Parameters
    ----------
    sample : ndarray of shape (m, d)
        Rows of the data (the first :data:`SAMPLE_ROWS`).
    dtype : dtype
        The data's float dtype: the shift is rounded to it, so that ``x - shift`` is
        exact for rows within a factor of two of it.

    Returns
    -------
    ndarray of shape (d,) in ``dtype``, or None when the sample's coordinate-wise median
    lies within :data:`FAR_FROM_ORIGIN` times its spread of the origin.
    """
    sample = np.asarray(sample, dtype=np.float64)
    if len(sample) == 0:
        return None
    median = np.median(sample, axis=0)
    spread_sq = float(np.mean(np.sum((sample - median) ** 2, axis=1)))
    if float(np.sum(median**2)) <= FAR_FROM_ORIGIN**2 * spread_sq:
        return None
    return median.astype(dtype)


def computing_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype that rows stored in ``dtype`` are computed in: float16 rows are widened
    to float32 (one block or cached sub-block at a time, never the whole data)."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def shifted(block: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """``block`` in the frame of ``shift`` (the block itself without one), in its
    :func:`computing_dtype`."""
    if shift is None:
        return block
    return np.subtract(block, shift, dtype=computing_dtype(block.dtype))


def centers_in_frame(centers: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """Centres given in the user's frame, moved to the frame of ``shift`` (float64)."""
    centers = np.asarray(centers, dtype=np.float64)
    return centers if shift is None else centers - shift.astype(np.float64)


def centers_in_user_frame(centers: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """Centres found in the frame of ``shift``, moved back to the user's frame (float64)."""
    centers = np.asarray(centers, dtype=np.float64)
    return centers if shift is None else centers + shift.astype(np.float64)


def check_values(block: np.ndarray, row_offset: int = 0, block_index: int | None = None) -> None:
    """Raise if a block of X holds NaN, infinity, or magnitudes above :data:`MAX_MAGNITUDE`.

    Parameters
    ----------
    block : ndarray of shape (rows, d)
    row_offset : int
        Global index of the block's first row (named in the message).
    block_index : int, optional
        Position of the block (named in the message for lazy data).

    Raises
    ------
    ValueError
        Naming the block (if given), the first bad row, and what to do.
    """
    if block.size == 0 or block.dtype.kind != "f" or values_within(block, MAX_MAGNITUDE):
        return
    where = (
        ""
        if block_index is None
        else f" in block {block_index} (rows {row_offset} to {row_offset + len(block) - 1})"
    )
    bad_rows = ~np.isfinite(block).all(axis=1)
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0]) + row_offset
        raise ValueError(
            f"X contains NaN or infinity{where}; first at row {first}: remove or impute "
            "these values before clustering"
        )
    magnitudes = np.abs(block)
    first = int(np.flatnonzero((magnitudes > MAX_MAGNITUDE).any(axis=1))[0]) + row_offset
    raise ValueError(
        f"X holds values up to {float(magnitudes.max()):.3g} in magnitude{where}; first at row "
        f"{first}: squared distances would overflow float64 above {MAX_MAGNITUDE:.0e}. "
        "Rescale X (e.g. divide it by its largest magnitude) before clustering"
    )


def values_within(block: np.ndarray, limit: float) -> bool:
    """Whether every value of a float block is a number (not NaN, not infinite) of
    magnitude at most ``limit``, in one read of the block and no temporary of its size.

    Parameters
    ----------
    block : ndarray of shape (rows, d), floating
    limit : float
        Positive.
    """
    limit = min(limit, float(np.finfo(block.dtype).max))  # infinity is beyond it
    compiled = block.dtype in (np.float32, np.float64) and (
        block.flags.c_contiguous or block.flags.f_contiguous  # raveled without a copy
    )
    if compiled and engine.current() == "numba":
        limit_in_dtype = block.dtype.type(limit)
        return bool(loops.all_within(values=block.ravel(order="K"), limit=limit_in_dtype))
    group = max(CHECK_GROUP_BYTES // max(block[:1].nbytes, 1), 1)
    for start in range(0, len(block), group):
        rows = block[start : start + group]
        # NaN propagates through min and max, and fails both comparisons
        if not (-limit <= rows.min() and rows.max() <= limit):
            return False
    return True
