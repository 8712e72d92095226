"""Lazy X persisted in cluster memory, one contiguous run of row blocks per worker.

A pass over blocks held by workers runs one span of blocks per worker where each holds
a run of them (:mod:`dkmeans.spans`). Left to the scheduler, a persisted array's blocks
land wherever a thread was free: a Zarr store of 32 blocks on 4 workers came back in 29
runs (``CABABACDBADDB...``), the spans then took most of their blocks from other
workers, and a 10-iteration fit of 1 GB moved 610 MB between workers (replicas that
doubled the memory of those blocks). Persisted here, worker ``w`` computes blocks
``edges[w]:edges[w + 1]`` itself (in proportion to its threads), so no block crosses
the network during a fit.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph
from distributed import Future

from .io import rechunk_rows

if TYPE_CHECKING:
    from distributed import Client


def run_edges(n_blocks: int, threads: dict[str, int]) -> list[int]:
    """Where every worker's run of blocks begins and ends (workers in the order of their
    addresses, sorted), in proportion to their threads: ``len(threads) + 1`` edges from
    0 to ``n_blocks``."""
    shares = np.cumsum([threads[w] for w in sorted(threads)], dtype=np.float64)
    return [0, *(int(round(n_blocks * share / shares[-1])) for share in shares)]


def persist_in_runs(array: da.Array, client: Client | None = None) -> da.Array:
    """``array`` persisted on a cluster's workers, one contiguous run of row blocks per
    worker, in proportion to its threads (:func:`run_edges`).

    Use it to keep X in cluster memory across several fits. ``client.persist(array)``
    works too (each worker's task takes its blocks where the scheduler put them), but
    keeps the array's own chunks, which a fit may cut again (losing what was persisted),
    and scatters the blocks in many runs, each a few more tree nodes for its task. A fit
    with ``persist=True`` (or ``"auto"``, when X fits) places what it persists this way
    itself.

    Parameters
    ----------
    array : dask.array.Array of shape (n, d) or (n,)
        Rows, or a row's values (sample weights). Rows are first cut into the blocks a fit
        cuts them into (one chunk across features; row chunks under 16 MiB merged towards
        64 MiB), so that a fit takes the persisted blocks as they are.
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).

    Returns
    -------
    dask.array.Array
        The same chunks and values, every block held by a future on its run's worker
        (each run is asked of its worker with a loose restriction, so a block lost with
        its worker is computed again on another). Without workers yet (an adaptive
        cluster), the scheduler places the blocks; an array whose blocks are all held
        already is returned as it is (copying persisted blocks into runs would move most
        of them at every fit).

    Examples
    --------
    >>> import dask.array as da
    >>> import dkmeans
    >>> X = dkmeans.persist_in_runs(da.from_zarr("s3://bucket/x.zarr"))  # doctest: +SKIP
    >>> for k in (8, 16, 32):  # doctest: +SKIP
    ...     dkmeans.KMeans(k).fit(X)
    """
    if client is None:
        from distributed import get_client

        client = get_client()
    if array.ndim == 2:  # X in the blocks a fit cuts it into: the fit then takes them as they are
        array = rechunk_rows(array)
    graph = array.__dask_graph__()
    if all(isinstance(graph[key], Future) for key in flatten(array.__dask_keys__())):
        return array  # held already (persisted by the user): used where it is
    threads = client.nthreads()
    if not threads:  # no worker yet (an adaptive cluster): where the scheduler puts them
        return client.persist(array)
    futures = []
    workers = sorted(threads)
    runs = pairwise(run_edges(array.numblocks[0], threads))
    for worker, (start, stop) in zip(workers, runs, strict=True):
        if stop > start:
            # a run's own part of the graph, computed on its worker
            part = array.blocks[start:stop]
            run = client.persist(part, workers=[worker], allow_other_workers=True)
            held = dict(run.__dask_graph__())
            futures += [held[key] for key in flatten(run.__dask_keys__())]
    name = "persisted-in-runs-" + tokenize(array.name, workers)
    trailing = (0,) * (array.ndim - 1)
    layer = {(name, i, *trailing): future for i, future in enumerate(futures)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, array.chunks, meta=array._meta)
