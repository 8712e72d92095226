"""Time per Lloyd pass over the same data persisted in more and more blocks (issue 22).

A float32 array (default 320,000 x 32: 40 MB) persisted on a LocalCluster of single-thread
worker processes, cut into each number of row blocks given; the median of a few passes of
``pass_statistics`` (k = 16) through ``DaskSource``, with the load average. Run it from a
checkout before and after a change to compare designs (``PYTHONPATH=<checkout>``).

    python -m benchmarks.pass_blocks --blocks 1000 20000 --workers 4
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

from benchmarks.scheduling import centers_and_bounds, median_seconds, one_pass
from dkmeans.sources import DaskSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=320_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        for n_blocks in args.blocks:
            shape, chunks = (args.rows, args.features), (args.rows // n_blocks, args.features)
            x = client.persist(
                da.random.default_rng(0).random(shape, chunks=chunks, dtype=np.float32)
            )
            wait(x)
            source = DaskSource(x)
            centers, bounds = centers_and_bounds(args.clusters, args.features)
            one_pass(source, centers, bounds)  # plans the spans, compiles the kernels
            seconds = median_seconds(partial(one_pass, source, centers, bounds), args.repeats)
            load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
            print(f"{n_blocks:7d} blocks: {1e3 * seconds:8.0f} ms per pass (load {load})")
            client.cancel(x)


if __name__ == "__main__":
    main()
