"""The fixed tree in which the partial results of a pass combine, and its spans.

The tree has the blocks as leaves and groups :data:`SPLIT_EVERY` consecutive items at
every level, until one is left: node ``(level, i)`` holds blocks ``i * 8**level`` up to
``(i + 1) * 8**level`` (fewer at the right edge), and its value is
:func:`combine_all` of its children, left to right. A task that passes over a
contiguous *span* of blocks returns the values of the span's maximal nodes
(:func:`span_nodes`); spans next to each other combine into the nodes of their union
(:func:`node_values`) with exactly the same calls of ``combine``, so the root equals the
tree's whatever the spans, to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import reduce
from typing import Any, Protocol, Self

from .statistics import Combinable

#: Fan-in of the tree.
SPLIT_EVERY = 8

#: A node of the tree: (level, index within the level).
Node = tuple[int, int]


def combine_all(parts: Sequence[Combinable] | Iterator[Combinable]) -> Combinable:
    """Combine partial results left to right (used inside one tree node)."""
    return reduce(lambda a, b: a.combine(b), parts)


def tree_level(items: Sequence[Any], split_every: int) -> list[Sequence[Any]]:
    """One level of the combining tree: consecutive groups of ``split_every`` items."""
    return [items[i : i + split_every] for i in range(0, len(items), split_every)]


def depth(n_blocks: int, split_every: int = SPLIT_EVERY) -> int:
    """The level of the root of the tree over ``n_blocks`` blocks."""
    level, width = 0, 1
    while width < n_blocks:
        level, width = level + 1, width * split_every
    return level


def node_blocks(node: Node, n_blocks: int, split_every: int = SPLIT_EVERY) -> range:
    """The blocks below ``node``."""
    level, index = node
    width = split_every**level
    return range(index * width, min((index + 1) * width, n_blocks))


def span_nodes(start: int, stop: int, n_blocks: int, split_every: int = SPLIT_EVERY) -> list[Node]:
    """The maximal nodes whose blocks lie within ``start:stop``, left to right."""
    top = depth(n_blocks, split_every)
    nodes, position = [], start
    while position < stop:
        level = 0
        while (
            level < top
            and position % split_every ** (level + 1) == 0
            and min(position + split_every ** (level + 1), n_blocks) <= stop
        ):
            level += 1
        nodes.append((level, position // split_every**level))
        position = node_blocks(nodes[-1], n_blocks, split_every).stop
    return nodes


def node_values(
    nodes: Sequence[Node],
    known: Callable[[Node], Combinable | None],
    n_blocks: int,
    split_every: int = SPLIT_EVERY,
) -> list[Combinable]:
    """The values of ``nodes``: ``known(node)`` where it gives one, else the combination
    of its children's values, found the same way (one child at a time, so a pass over
    blocks holds one block's result per level)."""

    def value(node: Node) -> Combinable:
        found = known(node)
        if found is not None:
            return found
        level, index = node
        below = node_blocks(node, n_blocks, split_every)
        width = split_every ** (level - 1)
        children = range(below.start // width, (below.stop - 1) // width + 1)
        return combine_all(value((level - 1, child)) for child in children)

    return [value(node) for node in nodes]


class Stacked(Protocol):
    """Partial results of consecutive blocks (or nodes), one per entry of a leading
    axis, whose ``combine`` combines them entry by entry (``StackedMoments``)."""

    def __len__(self) -> int: ...

    def take(self, index: slice) -> Self: ...

    def combine(self, other: Self) -> Self: ...

    def concat(self, other: Self) -> Self: ...

    def value(self) -> Combinable:
        """The one partial result of a stack of one entry."""


def fold(stacked: Stacked, levels: int, split_every: int = SPLIT_EVERY) -> Stacked:
    """The values of the nodes ``levels`` levels above the entries of ``stacked`` (the
    first entry's block the first of a node at that level), level by level: the
    children of every node combined left to right, as :func:`combine_all` would, all
    nodes of a level at once."""
    for _ in range(levels):
        full = len(stacked) // split_every * split_every  # the nodes with every child
        groups = [stacked.take(slice(j, full, split_every)) for j in range(split_every)]
        folded = combine_all(groups) if full else None
        rest = [stacked.take(slice(i, i + 1)) for i in range(full, len(stacked))]
        if rest:
            folded = combine_all(rest) if folded is None else folded.concat(combine_all(rest))
        stacked = folded
    return stacked
