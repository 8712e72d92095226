"""Read speed and size of Gaussian-blob stores under several Zarr codecs.

Writes one store per codec (float32, samples x features) with ``dkmeans.make_blobs``,
then times alternating read-and-sum passes (``da.from_zarr(path).sum(axis=0)``),
reporting the median wall time, the CPU time and the size on disk.

    python benchmarks/codecs.py --n-samples 4e6 --n-features 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import dask.array as da

from dkmeans.blobs import CODECS, make_blobs
from dkmeans.cli import count

RESULTS = Path(__file__).parent / "results"


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_pass(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one read-and-sum pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    da.from_zarr(str(path)).sum(axis=0).compute()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=count, default=4_000_000)
    parser.add_argument("--n-features", type=count, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--codecs", nargs="+", default=list(CODECS))
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="dkmeans-codecs-") as tmp:
        paths = {}
        for codec in args.codecs:
            paths[codec] = Path(tmp) / f"{codec}.zarr"
            make_blobs(paths[codec], args.n_samples, args.n_features, 16, codec=codec)
        times: dict[str, list[tuple[float, float]]] = {codec: [] for codec in args.codecs}
        for _ in range(args.repeats):  # alternate codecs: shared-machine noise hits all alike
            for codec in args.codecs:
                times[codec].append(read_pass(paths[codec]))
        rows = []
        for codec in args.codecs:
            size = directory_bytes(paths[codec])
            wall = statistics.median(t for t, _ in times[codec])
            cpu = statistics.median(c for _, c in times[codec])
            raw = args.n_samples * args.n_features * 4
            rows.append(
                {
                    "codec": codec,
                    "bytes": size,
                    "ratio": raw / size,
                    "read_s": wall,
                    "cpu_s": cpu,
                    "gb_per_s": raw / wall / 1e9,
                }
            )
    print(f"{'codec':<12} {'size MB':>9} {'ratio':>6} {'read s':>7} {'cpu s':>7} {'GB/s':>6}")
    for r in rows:
        print(
            f"{r['codec']:<12} {r['bytes'] / 1e6:9.0f} {r['ratio']:6.3f} {r['read_s']:7.2f} "
            f"{r['cpu_s']:7.2f} {r['gb_per_s']:6.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "codecs.json"
    out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
