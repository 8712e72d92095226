"""The ``dkmeans`` command line."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__


class UserError(Exception):
    """A mistake in the command's arguments or input: reported in one line, exit 2."""


def count(text: str) -> int:
    """Parse counts such as ``1000000``, ``1_000_000`` or ``1e6``."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a non-negative whole number: {text!r}")
    return int(value)


def run_demo(args: argparse.Namespace) -> int:
    """Make a demo store, cluster it on a local Dask cluster, print and plot."""
    from distributed import Client, LocalCluster

    from .blobs import make_blobs
    from .estimator import KMeans
    from .plot import _pyplot, plot_clusters

    plt = _pyplot()
    with tempfile.TemporaryDirectory(prefix="dkmeans-demo-") as tmp:
        store = str(Path(tmp) / "blobs.zarr")
        make_blobs(
            store, args.n_samples, 2, args.centers, chunk_rows=max(1, args.n_samples // 8), seed=args.seed
        )
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster),
        ):
            started = time.perf_counter()
            km = KMeans(n_clusters=args.centers, random_state=args.seed).fit(store)
            seconds = time.perf_counter() - started
            print(
                f"dkmeans demo: n={args.n_samples:,} d=2 k={args.centers} "
                f"iterations={km.n_iter_} inertia={km.inertia_:.6g} seconds={seconds:.2f}"
            )
            ax = plot_clusters(store, km, sample_size=5000)
            ax.set_title(f"k-means on {args.n_samples:,} points from a Zarr store")
            ax.figure.savefig(args.output, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
    print(f"wrote {args.output}")
    return 0


def run_make_blobs(args: argparse.Namespace) -> int:
    """Write a Gaussian-blob dataset to a Zarr store."""
    from .blobs import make_blobs

    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; choose another path or pass --overwrite")
    array = make_blobs(
        args.out,
        args.n_samples,
        args.n_features,
        args.centers,
        chunk_rows=args.chunk_rows,
        seed=args.seed,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: shape {array.shape}, chunks {array.chunks}, dtype {array.dtype}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dkmeans", description="k-means clustering of arrays of any size, on Dask."
    )
    parser.add_argument("--version", action="version", version=f"dkmeans {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str):
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        sub.add_argument("--debug", action="store_true", help="show tracebacks of errors")
        return sub

    demo = command("demo", run_demo, "cluster a demo store on a local cluster; write demo.png")
    demo.add_argument("--n-samples", type=count, default=200_000)
    demo.add_argument("--centers", type=count, default=5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output", default="demo.png", help="PNG to write (default: demo.png)")

    blobs = command("make-blobs", run_make_blobs, "write a Gaussian-blob dataset to a Zarr array")
    blobs.add_argument("out", metavar="OUT.zarr")
    blobs.add_argument("--n-samples", type=count, required=True)
    blobs.add_argument("--n-features", type=count, required=True)
    blobs.add_argument("--centers", type=count, required=True)
    blobs.add_argument("--chunk-rows", type=count, default=None)
    blobs.add_argument("--seed", type=int, default=0)
    blobs.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    blobs.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dkmeans`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UserError, ValueError, TypeError, FileNotFoundError, ImportError) as error:
        if args.debug:
            raise
        print(f"dkmeans {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
