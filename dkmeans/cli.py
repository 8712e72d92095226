"""The ``dkmeans`` command line."""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .blobs import CODECS


class UserError(Exception):
    """A mistake in the command's arguments or input: reported in one line, exit 2."""


#: glibc ``mallopt`` options (malloc.h) and the values the commands run with.
MALLOC_OPTIONS = {
    "M_TRIM_THRESHOLD": (-1, 2**30),
    "M_TOP_PAD": (-2, 2**28),
    "M_MMAP_THRESHOLD": (-3, 2**30),
}


def reuse_freed_memory() -> bool:
    """Let glibc reuse freed data blocks instead of returning them to the system.

    By default glibc gives every buffer of 32 MiB or more its own ``mmap`` and
    unmaps it when freed, so every block read is zero-filled and page-faulted in
    again: that doubled the CPU time of a pass over a Zarr store
    (``benchmarks/out_of_core.py``: 5.4 s -> 2.5 s for a 4 GB read-and-sum pass).
    A process-wide setting, so the commands make it and the library does not.

    Returns
    -------
    bool
        Whether it was applied (glibc only).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in MALLOC_OPTIONS.values())


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
            store,
            args.n_samples,
            2,
            args.centers,
            chunk_rows=max(1, args.n_samples // 8),
            seed=args.seed,
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


def made_by_make_blobs(path: str) -> bool:
    """Whether ``path`` holds a Zarr array that ``dkmeans make-blobs`` wrote."""
    import zarr

    try:
        array = zarr.open_array(path, mode="r")
    except (OSError, ValueError, zarr.errors.BaseZarrError):
        return False
    return array.attrs.get("generator") == "dkmeans.make_blobs"


def run_make_blobs(args: argparse.Namespace) -> int:
    """Write a Gaussian-blob dataset to a Zarr store."""
    from .blobs import make_blobs

    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; choose another path or pass --overwrite")
    if Path(args.out).exists() and not made_by_make_blobs(args.out):
        raise UserError(
            f"{args.out} exists and was not written by dkmeans make-blobs: --overwrite "
            "replaces only stores that make-blobs wrote; choose another path"
        )
    array = make_blobs(
        args.out,
        args.n_samples,
        args.n_features,
        args.centers,
        chunk_rows=args.chunk_rows,
        seed=args.seed,
        dtype=args.dtype,
        codec=args.codec,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: shape {array.shape}, chunks {array.chunks}, dtype {array.dtype}")
    return 0


#: ``dkmeans fit --mini-batch``'s rows per batch. The command reads stores, where a
#: batch's fixed cost (a few hundred microseconds) is what an epoch costs beyond the read:
#: batches of 4,096 rows cost half as much per row as scikit-learn's 1,024, and a store of
#: a million rows still gets 244 updates per epoch.
MINI_BATCH_ROWS = 4096
#: Passes shorter than this (seconds) show no progress bar.
PROGRESS_AFTER = 2.0


@contextmanager
def compute_context(args: argparse.Namespace) -> Iterator[None]:
    """Where the command computes: the cluster of ``--cluster`` or local threads, with a
    progress bar on stderr for every long pass over the data on local threads."""
    with ExitStack() as stack:
        if args.cluster is not None:
            from .connect import connect

            client = stack.enter_context(connect(args.cluster))
            print(f"dkmeans: dashboard at {client.dashboard_link}", file=sys.stderr)
        elif not args.quiet:
            from dask.diagnostics import ProgressBar

            stack.enter_context(ProgressBar(minimum=PROGRESS_AFTER, out=sys.stderr))
        yield


def kmeans_params(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The :class:`~dkmeans.KMeans` parameters given on the command line (``--max-iter``
    and ``--tol`` only when given: the estimator's defaults apply otherwise)."""
    given = {"max_iter": args.max_iter, "tol": args.tol}
    return {
        "init": args.init,
        "n_init": args.n_init,
        **{name: value for name, value in given.items() if value is not None},
        "random_state": args.seed,
        "metric": args.metric,
        "persist": {"auto": "auto", "true": True, "false": False}[args.persist],
        "verbose": not args.quiet,
        **extra,
    }


def run_fit(args: argparse.Namespace) -> int:
    """Fit k-means to a Zarr store; print a summary or JSON; write the result store."""
    from .estimator import KMeans
    from .io import open_zarr_array
    from .minibatch_kmeans import MiniBatchKMeans
    from .store import claim_output, write_result

    data = open_zarr_array(args.store)
    if args.batch_size is not None and not args.mini_batch:
        raise UserError("--batch-size needs --mini-batch")
    if args.mini_batch:
        if args.checkpoint is not None:
            raise UserError("--checkpoint is not available with --mini-batch")
        batch_size = MINI_BATCH_ROWS if args.batch_size is None else args.batch_size
        km = MiniBatchKMeans(
            n_clusters=args.n_clusters, batch_size=batch_size, **kmeans_params(args)
        )
    else:
        km = KMeans(n_clusters=args.n_clusters, **kmeans_params(args, checkpoint=args.checkpoint))
    with ExitStack() as stack:
        output = None
        if args.out is not None:  # claimed before the fit: refusals come before any work
            output = stack.enter_context(
                claim_output(args.out, overwrite=args.overwrite, inputs=[args.store])
            )
        with compute_context(args):
            started = time.perf_counter()
            km.fit(data)
            seconds = time.perf_counter() - started
            if output is not None:
                write_result(output, km, data)
    n_samples, n_features = data.shape
    summary = {
        "n_clusters": km.n_clusters,
        "inertia": km.inertia_,
        "n_iter": km.n_iter_,
        "seconds": round(seconds, 3),
        "n_samples": n_samples,
        "n_features": n_features,
        "store": str(args.store),
        "out": None if args.out is None else str(args.out),
        "mini_batch": args.mini_batch,
        **({"n_steps": km.n_steps_} if args.mini_batch else {}),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"dkmeans fit: {n_samples:,} samples x {n_features} features, k={km.n_clusters}: "
            f"inertia {km.inertia_:.6g} after {km.n_iter_} "
            f"{'epochs' if args.mini_batch else 'iterations'} in {seconds:.1f} s"
        )
        if args.out is not None:
            print(f"wrote {args.out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Label a Zarr store with the centres of a ``dkmeans fit --out`` result."""
    from .estimator import KMeans
    from .io import open_zarr_array
    from .store import claim_output, read_centers, read_metric, write_labels

    centers = read_centers(args.model)
    if not 1 <= args.n_nearest <= len(centers):
        raise UserError(
            f"--n-nearest must be from 1 to the model's {len(centers)} centres, "
            f"got {args.n_nearest}"
        )
    data = open_zarr_array(args.store)
    km = KMeans(n_clusters=len(centers), metric=read_metric(args.model))
    km.cluster_centers_, km.n_features_in_ = centers, centers.shape[1]
    inputs = [args.store, args.model]
    with (
        claim_output(args.out, overwrite=args.overwrite, inputs=inputs) as output,
        compute_context(args),
    ):
        if args.n_nearest == 1:
            write_labels(output, km.predict(data), data)
        else:
            indices, distances = km.nearest_centers(data, n_nearest=args.n_nearest)
            write_labels(output, indices, data, distances=distances)
    what = "labels" if args.n_nearest == 1 else f"the {args.n_nearest} nearest centres"
    print(f"wrote {args.out}: {what} of {data.shape[0]:,} samples")
    return 0


def run_elbow(args: argparse.Namespace) -> int:
    """Inertia for every k from ``--k-min`` to ``--k-max``, with shared passes."""
    from . import elbow, plot_elbow
    from .io import open_zarr_array

    if not 1 <= args.k_min <= args.k_max:
        raise UserError(f"need 1 <= --k-min <= --k-max, got {args.k_min} and {args.k_max}")
    data = open_zarr_array(args.store)
    with compute_context(args):
        started = time.perf_counter()
        inertias = elbow(data, k_values=range(args.k_min, args.k_max + 1), **kmeans_params(args))
        seconds = time.perf_counter() - started
    if args.plot is not None:
        ax = plot_elbow(inertias)
        ax.figure.savefig(args.plot, dpi=110, bbox_inches="tight")
    if args.json:
        n_samples, n_features = data.shape
        print(
            json.dumps(
                {
                    "inertia": {str(k): value for k, value in inertias.items()},
                    "seconds": round(seconds, 3),
                    "n_samples": n_samples,
                    "n_features": n_features,
                    "plot": args.plot,
                }
            )
        )
    else:
        print(f"{'k':>4}  inertia")
        for k, value in inertias.items():
            print(f"{k:>4}  {value:.6g}")
        if args.plot is not None:
            print(f"wrote {args.plot}")
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
        sub.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks of errors",
        )
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
    blobs.add_argument("--dtype", choices=["float16", "float32", "float64"], default="float32")
    blobs.add_argument(
        "--codec", choices=list(CODECS), default="none", help="chunk compressor (default: none)"
    )
    blobs.add_argument("--overwrite", action="store_true")

    fit = command("fit", run_fit, "fit k-means to a Zarr array; optionally write a result store")
    fit.add_argument("store", metavar="STORE", help="Zarr array path or URL (group/array)")
    fit.add_argument("--n-clusters", type=count, required=True)
    fit.add_argument("--out", metavar="OUT.zarr", help="write centres, labels and attributes here")
    fit.add_argument(
        "--checkpoint", metavar="PATH", help="save the fit's state here; resume from it"
    )
    fit.add_argument(
        "--mini-batch",
        action="store_true",
        help="fit MiniBatchKMeans: one read of the store per epoch (--max-iter epochs)",
    )
    fit.add_argument(
        "--batch-size",
        type=count,
        default=None,
        help=f"rows per mini-batch (default: {MINI_BATCH_ROWS})",
    )
    add_kmeans_options(fit)
    add_output_options(fit, overwrite=True)

    predict = command("predict", run_predict, "label a Zarr array with a fit result's centres")
    predict.add_argument("model", metavar="MODEL.zarr", help="output of dkmeans fit --out")
    predict.add_argument("store", metavar="STORE", help="Zarr array path or URL (group/array)")
    predict.add_argument("--out", metavar="LABELS.zarr", required=True)
    predict.add_argument(
        "--n-nearest",
        metavar="M",
        type=count,
        default=1,
        help="M > 1: write a group with arrays labels (n, M) and distances (n, M), "
        "the M nearest centres of every row, nearest first",
    )
    add_output_options(predict, overwrite=True, json=False)

    elbow = command("elbow", run_elbow, "inertia against k, all k fitted with shared passes")
    elbow.add_argument("store", metavar="STORE", help="Zarr array path or URL (group/array)")
    elbow.add_argument("--k-min", type=count, default=1)
    elbow.add_argument("--k-max", type=count, default=10)
    elbow.add_argument("--plot", metavar="PNG", help="draw the curve into this file")
    add_kmeans_options(elbow)
    add_output_options(elbow)
    return parser


def add_kmeans_options(parser: argparse.ArgumentParser) -> None:
    """Options that set :class:`~dkmeans.KMeans` parameters."""
    parser.add_argument("--init", choices=["k-means||", "k-means++", "random"], default="k-means||")
    parser.add_argument("--n-init", type=count, default=1)
    parser.add_argument(
        "--max-iter", type=count, default=None, help="default: 300 (--mini-batch: 100 epochs)"
    )
    parser.add_argument(
        "--tol", type=float, default=None, help="default: 1e-4 (--mini-batch: 0, not used)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    parser.add_argument(
        "--metric",
        choices=["euclidean", "cosine"],
        default="euclidean",
        help="cosine: spherical k-means, rows compared by direction",
    )
    parser.add_argument(
        "--persist",
        choices=["auto", "true", "false"],
        default="auto",
        help="keep the data in memory (auto: when it takes under half of the memory available)",
    )


def json_object(text: str) -> dict[str, Any]:
    """Parse a JSON object such as ``{"key": "...", "endpoint_url": "http://..."}``."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def add_output_options(
    parser: argparse.ArgumentParser, *, overwrite: bool = False, json: bool = True
) -> None:
    """Options on where to compute, how to reach the storage and what to print."""
    parser.add_argument("--cluster", metavar="CONFIG.yaml", help="run on this Dask cluster")
    parser.add_argument(
        "--storage-options",
        metavar="JSON",
        type=json_object,
        default=None,
        help="fsspec options for every URL of the command (credentials, endpoint_url, ...)",
    )
    if json:
        parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


#: Exceptions that are the user's or the environment's, not dkmeans's: one line, exit 2.
USER_ERRORS = (UserError, ValueError, TypeError, OSError, ImportError)
#: Arguments that may be fsspec URLs, for ``--storage-options``.
URL_ARGUMENTS = ("store", "model", "out", "checkpoint")


def error_message(error: BaseException) -> str | None:
    """The one line reporting a user error, or None for a bug (shown as a traceback)."""
    from .fs import describe_storage_error
    from .watch import ClusterError

    message = describe_storage_error(error)
    if message is None and isinstance(error, (*USER_ERRORS, ClusterError)):
        message = str(error) or type(error).__name__
    return None if message is None else " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dkmeans`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    reuse_freed_memory()
    try:
        if getattr(args, "storage_options", None):
            from .fs import set_storage_options

            urls = [str(getattr(args, name, None)) for name in URL_ARGUMENTS]
            set_storage_options(args.storage_options, urls)
        return args.handler(args)
    except Exception as error:
        message = error_message(error)
        if message is None or args.debug:
            raise
        print(f"dkmeans {args.command}: error: {message}", file=sys.stderr)
        if argv is None:
            # the process ends now; requests the failed operation left pending (zarr
            # reads metadata files concurrently) are collected at exit, and their
            # errors would repeat this one as tracebacks
            sys.unraisablehook = _ignore_unraisable
        return 2


def _ignore_unraisable(unraisable: Any) -> None:
    """Drop errors of objects collected after the command's error was reported."""


if __name__ == "__main__":
    sys.exit(main())
