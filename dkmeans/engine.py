"""Which implementation runs the per-row loops of the block kernels: ``"numba"`` or
``"numpy"``.

The engine is one setting of Dask's configuration, ``dkmeans.engine``::

    import dask
    with dask.config.set({"dkmeans.engine": "numpy"}):
        KMeans(8).fit(X)

or the environment variable ``DASK_DKMEANS__ENGINE=numpy``. Default: ``"numba"`` when
numba is installed (the ``fast`` extra), else ``"numpy"``. Every kernel reads it where it
runs, through :func:`current` (the only reader): on the client for NumPy input and Dask's
threaded scheduler, from each worker's own configuration on a distributed cluster (set
the environment variable before the workers start).

``"numba"`` runs the fused loops of :mod:`dkmeans.loops`, 3x faster per block at d=32,
k=16 (``benchmarks/compare.py``). ``"numpy"`` runs vectorised twins of them and makes
every Lloyd pass a full pass: it ignores the distance bounds a pass may be given
(:func:`~dkmeans.kernels.pass_statistics`). Both choose the same centres and draw the
same rows; sums and costs may differ in the last bits (other code, other rounding).
"""

from __future__ import annotations

from typing import Literal, get_args

import dask.config

try:
    import numba
except ImportError:  # numba is the optional ``fast`` extra
    numba = None

Engine = Literal["numba", "numpy"]

#: The key of the setting in Dask's configuration.
CONFIG_KEY = "dkmeans.engine"


def available() -> tuple[Engine, ...]:
    """The engines this installation can run."""
    return ("numba", "numpy") if numba is not None else ("numpy",)


def current() -> Engine:
    """The engine set by ``dkmeans.engine`` (default: the fastest available).

    Raises
    ------
    ValueError
        For a value that is not an engine, or ``"numba"`` without numba installed.
    """
    chosen = dask.config.get(CONFIG_KEY, None)
    if chosen is None:
        return available()[0]
    if chosen not in get_args(Engine):
        raise ValueError(f"{CONFIG_KEY} must be 'numba' or 'numpy', got {chosen!r}")
    if chosen not in available():
        raise ValueError(f"{CONFIG_KEY} is 'numba' but numba is not installed: pip install numba")
    return chosen
