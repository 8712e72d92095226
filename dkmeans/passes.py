"""Passes on a distributed client: span tasks, or span loops resident on the workers.

:class:`SpanPasses` runs every pass of a source over the spans that
:func:`~dkmeans.spans.plan_spans` cuts (one per worker, or per run of a worker's held
blocks; a worker's many scattered runs go to one task), in one of two ways:

- **tasks**: one task per span (:func:`~dkmeans.spans.span_pass`) and their combines
  (:func:`~dkmeans.spans.merge_spans`), 8 spans per task, and one task for the centres:
  about 1.14 tasks per span, each costing the scheduler ~1 ms (``docs/scaling.md``). On
  1,000 workers that is ~1,150 tasks per pass, about a second of the scheduler's time,
  as long as reading 1 TB takes there;
- **resident loops**, from :data:`RESIDENT_MIN_SPANS` spans (or as the Dask config key
  :data:`CONFIG_KEY` says): every span's plan lives on
  its worker in a :class:`SpanLoop`, a Dask actor (``Client.submit(..., actor=True)``).
  A pass is one call from the client to the loop of the first span, which calls the
  loops heading the runs of spans after it, which call theirs in turn: a tree of fan-in
  :data:`~dkmeans.tree.SPLIT_EVERY` over the spans in order (:func:`loop_tree`). Every
  loop runs its own span while its children run theirs and returns its span's node
  values merged with its children's. The calls go from worker to worker (the scheduler
  relays only the client's one call): a pass costs the scheduler no task, and about
  log₈ S round trips for S spans. Such passes do not show on the dashboard's task
  stream (a loop is an actor, not a task); only spans that take no block from another
  worker run as loops.

Either way the spans combine in order into the nodes of the fixed combining tree, so
the result is the same to the last bit (and that of one task per block). A lost worker
takes its spans' tasks or loops with it: the spans are planned again and the pass
repeated (as span tasks, which the pass watch follows task by task; the next pass starts
new loops).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import dask
import numpy as np

from .spans import (
    BlocksMoved,
    Span,
    SpanPlan,
    even_cuts,
    merge_spans,
    placed_on,
    plan_spans,
    span_pass,
)
from .tree import SPLIT_EVERY, Node, tree_level
from .watch import ClusterError

if TYPE_CHECKING:
    import dask.array as da
    from distributed import Client, Future

#: Times a pass is repeated when blocks were not where its plan expected them.
MOVED_RETRIES = 3

#: Dask config key that chooses how passes run on a distributed client: ``"auto"`` (the
#: default: resident loops from :data:`RESIDENT_MIN_SPANS` spans), ``True`` (loops
#: whenever no span takes blocks from another worker) or ``False`` (span tasks, every pass
#: on the dashboard's task stream).
CONFIG_KEY = "dkmeans.resident-loops"

#: Spans from which a pass runs through resident loops instead of tasks: at ~1 ms of
#: the scheduler's time per task, 64 spans cost ~75 ms of scheduling per pass, against a
#: few round trips of a few milliseconds for a tree of loops two levels deep.
RESIDENT_MIN_SPANS = 64


class SpanLoop:
    """One task's spans' passes, resident on the worker that holds their blocks (a Dask
    actor).

    Parameters
    ----------
    plans : tuple of SpanPlan
        The spans' plans (:func:`dkmeans.spans.plan_spans`).
    children : list of Actor
        The loops of the next spans, in order: each heads a run of consecutive spans.
    """

    def __init__(self, plans: tuple[SpanPlan, ...], children: list[Any]) -> None:
        self.plans, self.children = plans, children

    async def run(
        self, kernel: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[tuple[Node, Any]]:
        """The node values of these spans and of the spans its children head, merged.

        Runs on the worker's event loop: the children are called first, the kernel then
        runs in a thread (it sees the worker: :func:`asyncio.to_thread` keeps the
        context), so that the loops of a pass work at the same time.
        """
        calls = [child.run(kernel, args, kwargs) for child in self.children]
        mine = await asyncio.to_thread(span_pass, self.plans, kernel, args, kwargs, {})
        theirs = [await call for call in calls]
        if not theirs:
            return mine
        plan = self.plans[0]
        return await asyncio.to_thread(merge_spans, plan.n_blocks, plan.split_every, mine, *theirs)


def resident_from_config() -> int:
    """The fewest spans whose passes run through resident loops, as :data:`CONFIG_KEY`
    sets it.

    Raises
    ------
    ValueError
        For a value other than ``"auto"``, ``True`` or ``False``.
    """
    chosen = dask.config.get(CONFIG_KEY, "auto")
    choices = {"auto": RESIDENT_MIN_SPANS, "true": 1, "false": sys.maxsize}
    key = str(chosen).lower() if isinstance(chosen, (bool, str)) else None
    if key not in choices:
        raise ValueError(
            f"{CONFIG_KEY} must be 'auto', True or False, got {chosen!r}: for example "
            f"dask.config.set({{{CONFIG_KEY!r}: False}}) to run every pass as tasks"
        )
    return choices[key]


def resident(spans: list[tuple[Span, Future]], min_spans: int) -> bool:
    """Whether passes over ``spans`` run through resident loops: at least ``min_spans``
    spans (:data:`RESIDENT_MIN_SPANS`: enough for their tasks to cost the scheduler more
    than the loops' round trips), none of them taking blocks from another worker (a loop
    takes its blocks from its own worker only)."""
    return len(spans) >= min_spans and not any(remote for (_, remote), _ in spans)


def loop_tree(
    client: Client, spans: list[tuple[Span, Future]], split_every: int, token: str
) -> list[Future]:
    """Start one :class:`SpanLoop` per span, each on its span's worker: the futures of
    the loops, the root's (the first span's) first.

    The loop of span ``i``, heading spans ``i:j``, has as children the loops heading
    up to ``split_every`` runs of about equal length of spans ``i + 1:j``; the tree is
    about log_split_every of the spans deep. A loop's plan is the span's plan future (it
    does not travel again), its children the futures of their loops (Dask hands an
    actor's handle to the tasks that depend on its future).
    """
    futures: list[Future] = []  # children before their parents: the root last

    def start(first: int, stop: int) -> Future:
        children = [start(a, b) for a, b in runs_after(first, stop, split_every)]
        (plans, _), plan_future = spans[first]
        future = client.submit(
            SpanLoop,
            plan_future,
            children,
            actor=True,
            key=(f"span-loop-{token}", plans[0].start, plans[-1].stop),
            **placed_on(plans),
        )
        futures.append(future)
        return future

    start(0, len(spans))
    return futures[::-1]


def runs_after(first: int, stop: int, fan_in: int) -> list[tuple[int, int]]:
    """The runs of spans whose loops the loop of span ``first`` calls, when it heads
    spans ``first:stop``: up to ``fan_in`` runs of about equal length of the spans after
    it (:func:`loop_tree`)."""
    rest = stop - first - 1
    return list(pairwise(even_cuts(first + 1, stop, min(fan_in, rest)))) if rest else []


class ResidentCall:
    """One pass through resident loops, waited for as a pass's future is
    (:func:`dkmeans.watch.result`): ``result(timeout)`` raises ``TimeoutError`` while
    the pass runs."""

    def __init__(
        self,
        root: Future,
        kernel: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.root, self.call_args = root, (kernel, args, kwargs)
        self.call: Any = None

    def result(self, timeout: float | None = None) -> list[tuple[Node, Any]]:
        """The root's node values: the loops started (at the first pass of a plan),
        then the pass."""
        if self.call is None:
            self.call = self.root.result(timeout).run(*self.call_args)
        return self.call.result(timeout)

    def release(self) -> None:
        """Nothing to release: the loops stay for the next pass."""


def given(value: Any) -> Any:
    """A task's result that is its argument: what enters a pass once (plans, centres)."""
    return value


class SpanPasses:
    """The passes of one source over its blocks on a distributed client.

    The spans are planned at the first pass and again when the client's workers change
    (one call to the scheduler per pass notices it) or a span's blocks were not where
    the plan expected them (:class:`BlocksMoved`: the pass is repeated, up to
    :data:`MOVED_RETRIES` times); the workers hold the plans as tasks.
    """

    def __init__(
        self,
        client: Client,
        x: da.Array,
        weights: da.Array | None,
        row_offsets: np.ndarray,
        split_every: int = SPLIT_EVERY,
    ) -> None:
        self.client, self.x, self.weights = client, x, weights
        self.row_offsets, self.split_every = row_offsets, split_every
        self.workers: dict[str, int] | None = None
        self.spans: list[tuple[Span, Future]] = []
        #: The futures of the spans' resident loops, the root's first
        #: (:func:`loop_tree`), or None: the passes run as tasks.
        self.loops: list[Future] | None = None
        #: Spans from which the passes run through resident loops (:data:`CONFIG_KEY`).
        self.resident_from = resident_from_config()

    def planned(self) -> list[tuple[Span, Future]]:
        """The spans and the futures of their plans, planned anew if the workers changed;
        with their resident loops when :func:`resident`."""
        workers = self.client.nthreads()
        if workers != self.workers:
            self.workers = workers
            spans = plan_spans(
                self.client, self.x, self.weights, self.row_offsets, self.split_every
            )
            token = uuid.uuid4().hex
            self.spans = [
                (
                    (plans, remote),
                    self.client.submit(
                        given,
                        plans,
                        key=(
                            f"span-plan-{token}",
                            plans[0].start,
                            plans[-1].stop,
                            str(plans[0].worker),
                        ),
                        **placed_on(plans),
                    ),
                )
                for plans, remote in spans
            ]
            self.loops = None
        return self.spans

    def workers_lost(self) -> bool:
        """Whether a worker that the spans are kept on is gone."""
        return self.workers is not None and not set(self.workers) <= set(self.client.nthreads())

    def check_workers(self) -> None:
        """Raise :class:`BlocksMoved` if a worker that the spans are kept on is gone."""
        if self.workers_lost():
            raise BlocksMoved("a worker that held blocks of the pass is gone")

    def submit(
        self,
        kernel: Callable[..., Any],
        label: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loops: bool = True,
    ) -> Future | ResidentCall:
        """Submit one pass of ``kernel``; the future of the root's ``[(node, value)]``, or
        a :class:`ResidentCall` through the spans' resident loops when ``loops`` and
        :func:`resident` (the loops started at the first such pass of a plan)."""
        client = self.client
        spans = self.planned()
        if loops and self.loops is None and resident(spans, self.resident_from):
            self.loops = loop_tree(client, spans, self.split_every, uuid.uuid4().hex)
        if loops and self.loops is not None:
            return ResidentCall(self.loops[0], kernel, args, kwargs)
        token = uuid.uuid4().hex  # a pass of its own: never shares keys with another
        shared = client.submit(given, args, key=f"{label}-args-{token}")
        level = [
            client.submit(
                span_pass,
                plan_future,
                kernel,
                shared,
                kwargs,
                remote,
                key=(f"{label}-{token}", plans[0].start, plans[-1].stop),
                **placed_on(plans),
            )
            for (plans, remote), plan_future in spans
        ]
        depth = 0
        n_blocks = len(self.row_offsets)
        while len(level) > 1:
            depth += 1
            level = [
                client.submit(
                    merge_spans,
                    n_blocks,
                    self.split_every,
                    *group,
                    key=(f"{label}-combine-{token}", depth, i),
                )
                for i, group in enumerate(tree_level(level, self.split_every))
            ]
        return level[0]

    def run(
        self,
        kernel: Callable[..., Any],
        label: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait: Callable[[Callable[[], Future], Callable[[], None]], Any],
    ) -> Any:
        """The combined result of one pass of ``kernel``. ``wait`` gets a function that
        submits the pass and one to call while waiting (it raises :class:`BlocksMoved`
        when a worker of the plan is gone: its spans could never run), and returns the
        pass's result (:func:`dkmeans.watch.result`).

        A pass through resident loops that loses a worker is repeated as span tasks,
        which the watch follows task by task (a worker that keeps dying is then named,
        :class:`~dkmeans.watch.WorkerMemoryError`); the next pass starts new loops."""
        retries, loops = MOVED_RETRIES, True
        while True:
            try:
                submit = partial(self.submit, kernel, label, args, kwargs, loops)
                ((_, value),) = wait(submit, self.check_workers)
                return value
            except Exception as error:
                # a lost worker's resident loop is not reached (an OSError), or its
                # actor's future fails once the scheduler has removed the worker
                lost = isinstance(error, BlocksMoved) or (
                    loops
                    and self.loops is not None
                    and not isinstance(error, ClusterError)  # named by the watch
                    and (isinstance(error, OSError) or self.workers_lost())
                )
                if not retries or not lost:
                    raise
                retries, loops = retries - 1, False
                self.workers = None  # plan again: who holds which block now
