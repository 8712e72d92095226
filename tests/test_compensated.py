"""Compensated sums: the rounded total is the correctly rounded sum of the terms, whatever
their order and grouping, in NumPy and in the compiled loop."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dkmeans import loops
from dkmeans.compensated import CompensatedSums, segment_sums


@st.composite
def terms_by_segment(draw):
    """Float64 terms over twelve orders of magnitude, of both signs (so that sums cancel),
    assigned to a few segments."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_terms, n_columns = draw(st.integers(0, 300)), draw(st.integers(1, 3))
    terms = rng.standard_normal((n_terms, n_columns)) * 10.0 ** rng.uniform(-6, 6, (n_terms, 1))
    n_segments = draw(st.integers(1, 5))
    return terms, rng.integers(n_segments, size=n_terms), n_segments, rng


def dense(result, n_segments):
    """:func:`segment_sums`'s result with a row for every segment (zero where none)."""
    present, sums = result
    spread = CompensatedSums.zeros((n_segments, sums.high.shape[1]))
    spread.high[present], spread.low[present] = sums.high, sums.low
    return spread


def correctly_rounded(terms, segments, n_segments):
    n_columns = terms.shape[1]
    sums = [
        [math.fsum(terms[segments == s, f]) for f in range(n_columns)] for s in range(n_segments)
    ]
    return np.array(sums).reshape(n_segments, n_columns)


@settings(max_examples=150, deadline=None)
@given(problem=terms_by_segment())
def test_segment_sums_are_correctly_rounded_in_any_order(problem):
    terms, segments, n_segments, rng = problem
    expected = correctly_rounded(terms, segments, n_segments)
    whole = dense(segment_sums(terms, segments), n_segments)
    np.testing.assert_array_equal(whole.total(), expected)
    shuffled = rng.permutation(len(terms))
    cut = rng.integers(len(terms) + 1)
    first, second = shuffled[:cut], shuffled[cut:]
    in_two_blocks = dense(segment_sums(terms[first], segments[first]), n_segments).combine(
        dense(segment_sums(terms[second], segments[second]), n_segments)
    )
    np.testing.assert_array_equal(in_two_blocks.total(), expected)


@settings(max_examples=100, deadline=None)
@given(problem=terms_by_segment(), weight=st.sampled_from([1.0, 0.3, 7.25]))
def test_the_compiled_loop_adds_as_numpy_does(problem, weight):
    """:func:`dkmeans.loops.add_compensated` adds one weighted row (and its weight, in the
    last column) at a time; the totals equal the pairwise NumPy sums."""
    terms, segments, n_segments, _ = problem
    sums = CompensatedSums.zeros((n_segments, terms.shape[1] + 1))
    for row, segment in zip(terms, segments, strict=True):
        loops.add_compensated(high=sums.high, low=sums.low, row=segment, values=row, weight=weight)
    weighted = np.column_stack([weight * terms, np.full(len(terms), weight)])
    pairwise = dense(segment_sums(weighted, segments), n_segments)
    np.testing.assert_array_equal(sums.total(), pairwise.total())
    np.testing.assert_array_equal(sums.total(), correctly_rounded(weighted, segments, n_segments))
