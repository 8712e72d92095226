"""k-means|| block kernels: rows that remember their nearest candidate between passes
give exactly what measuring all candidates at once gives."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkmeans import engine, loops, resources, seeding
from dkmeans.oversampling import Candidates, nearest_candidates, oversample, weigh_candidates
from dkmeans.sources import DaskSource, InMemorySource


@st.composite
def measured_in_parts(draw):
    """Integer-valued rows and candidates (every distance is exact in any GEMM, and ties
    are common), the candidates of 1-3 runs cut into 1-3 parts per run."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_rows, n_features = draw(st.integers(1, 2000)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    x = rng.integers(-4, 5, size=(n_rows, n_features)).astype(dtype)
    weights = rng.choice([0.0, 1.0, 3.0], size=n_rows) if draw(st.booleans()) else None
    runs = []
    for _ in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 80))
        cuts = sorted(draw(st.lists(st.integers(1, size), max_size=2)))
        runs.append((rng.integers(-4, 5, size=(size, n_features)).astype(float), [0, *cuts, size]))
    return x, weights, runs


def parts_of(runs, part, memory):
    """Part ``part`` of every run's candidates (empty once a run has no more)."""
    pieces = [
        c[cuts[min(part, len(cuts) - 1)] : cuts[min(part + 1, len(cuts) - 1)]] for c, cuts in runs
    ]
    first = [cuts[min(part, len(cuts) - 1)] for _, cuts in runs]
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
    return Candidates(np.concatenate(pieces), bounds, np.array(first), np.arange(len(runs)), memory)


def all_up_to(runs, part):
    """Every candidate of every run up to the end of part ``part``."""
    pieces = [c[: cuts[min(part + 1, len(cuts) - 1)]] for c, cuts in runs]
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
    return Candidates.all_of(np.concatenate(pieces), bounds)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(problem=measured_in_parts(), offset=st.integers(0, 10**9))
def test_remembered_nearest_equals_measuring_all(problem, offset, implementation):
    x, weights, runs = problem
    memory = nearest_candidates(len(runs))
    oversampling, seeds = np.full(len(runs), 3.0), np.arange(len(runs)) + 5
    for part in range(3):
        remembered = oversample(
            x, weights, offset, 7, parts_of(runs, part, memory), oversampling, seeds, part
        )
        measured = oversample(
            x, weights, offset, 7, all_up_to(runs, part), oversampling, seeds, part
        )
        for a, b in zip(remembered, measured, strict=True):
            assert a.cost == b.cost
            np.testing.assert_array_equal(a.index, b.index)
            np.testing.assert_array_equal(a.keys, b.keys)
    sizes = np.array([len(c) for c, _ in runs])
    remembered = weigh_candidates(x, weights, offset, 7, parts_of(runs, 3, memory), sizes)
    measured = weigh_candidates(x, weights, offset, 7, all_up_to(runs, 3), sizes)
    np.testing.assert_array_equal(remembered.totals(), measured.totals())
    np.testing.assert_array_equal(remembered.costs, measured.costs)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(problem=measured_in_parts())
def test_candidate_weights_match_brute_force(problem, implementation):
    x, weights, runs = problem
    w = np.ones(len(x)) if weights is None else weights
    candidates = all_up_to(runs, 3)
    sizes = np.array([len(c) for c, _ in runs])
    result = weigh_candidates(x, weights, 0, 0, candidates, sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for r, (c, _) in enumerate(runs):
        squared = ((x[:, None, :].astype(float) - c[None]) ** 2).sum(-1)
        nearest = squared.argmin(axis=1)  # ties: the first candidate
        expected = np.bincount(nearest, weights=w, minlength=len(c))
        np.testing.assert_array_equal(result.totals()[offsets[r] : offsets[r + 1], -1], expected)
        sums = np.zeros(c.shape)
        np.add.at(sums, nearest, w[:, None] * x)  # integers: exact in any order
        np.testing.assert_array_equal(result.totals()[offsets[r] : offsets[r + 1], :-1], sums)
        assert result.costs[r] == pytest.approx((w * squared.min(axis=1)).sum(), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), weighted=st.booleans())
def test_candidate_sums_are_correctly_rounded_whatever_the_blocks(seed, weighted):
    """Real-valued rows, offsets from their candidate over six orders of magnitude: every
    candidate's sum of rows (and weight) is the correctly rounded sum, in one block or
    cut into several, on every engine."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1000, 1000, (6, 3)).round()  # >= 1 apart on some axis ...
    c[:, 0] = 10 * np.arange(6)
    nearest = rng.integers(6, size=1500)  # ... and every row within 0.5 of its own
    noise = rng.uniform(-0.25, 0.25, (1500, 3)) * 10.0 ** rng.uniform(-6, 0, (1500, 1))
    x = (c[nearest] + noise).astype(np.float32)
    w = rng.uniform(0.1, 3.0, len(x)) if weighted else None
    terms = (np.ones(len(x)) if w is None else w)[:, None] * np.column_stack(
        [x.astype(float), np.ones(len(x))]
    )
    expected = [[math.fsum(terms[nearest == j, f]) for f in range(4)] for j in range(6)]
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 3, replace=False))
    candidates, sizes = Candidates.all_of(c, np.array([0, 6])), np.array([6])
    for name in engine.available():
        with dask.config.set({engine.CONFIG_KEY: name}):
            one = weigh_candidates(x, w, 0, 0, candidates, sizes)
            parts = [
                weigh_candidates(part, None if w is None else w[lo:hi], 0, 0, candidates, sizes)
                for part, lo, hi in zip(np.split(x, cuts), [0, *cuts], [*cuts, len(x)], strict=True)
            ]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined.combine(part)
        np.testing.assert_array_equal(one.totals(), expected)
        np.testing.assert_array_equal(combined.totals(), expected)


def test_remembering_does_not_change_the_seeding(blobs, monkeypatch):
    X = blobs[0]
    sources = [
        lambda: InMemorySource.of_array(X, chunks=(700, 700, 700, 900), threads=2),
        lambda: DaskSource(da.from_array(X, chunks=(600, -1))),
    ]
    for source in sources:
        remembered = seeding.kmeans_parallel(source(), [5, 8, 3], [1, 2, 3], init_rounds=4)
        monkeypatch.setattr(resources, "ROW_MEMORY_FRACTION", 0.0)
        measured = seeding.kmeans_parallel(source(), [5, 8, 3], [1, 2, 3], init_rounds=4)
        monkeypatch.undo()
        for a, b in zip(remembered, measured, strict=True):
            np.testing.assert_array_equal(a, b)


def test_rows_remember_only_where_the_kernels_run_in_this_process(blobs, monkeypatch):
    x = da.from_array(blobs[0], chunks=(600, -1))
    assert seeding.remembered_nearest(DaskSource(x), 10) is not None
    with dask.config.set(scheduler="sync"):
        assert seeding.remembered_nearest(DaskSource(x), 10) is not None
    with dask.config.set(scheduler="processes"):  # a copy of the memory in every process
        assert seeding.remembered_nearest(DaskSource(x), 10) is None
    # 3,000 rows x 10 runs x 12 bytes = 360 kB: within a quarter of 2 MB, not of 1 MB
    monkeypatch.setattr(resources, "available_memory", lambda: 2_000_000)
    assert seeding.remembered_nearest(InMemorySource.of_array(blobs[0]), 10) is not None
    monkeypatch.setattr(resources, "available_memory", lambda: 1_000_000)
    assert seeding.remembered_nearest(InMemorySource.of_array(blobs[0]), 10) is None


def test_rounds_and_the_weighing_pass_share_one_compiled_loop():
    # numba loads each compiled variant from its cache once per process (tens of ms)
    pytest.importorskip("numba")
    x = np.random.default_rng(0).standard_normal((300, 3)).astype(np.float32)
    candidates = Candidates.all_of(x[:4], np.array([0, 4]))
    with dask.config.set({engine.CONFIG_KEY: "numba"}):
        oversample(x, None, 0, 0, candidates, np.array([8.0]), np.array([1]), 0)
        variants = set(loops.measure_block.signatures)
        weigh_candidates(x, None, 0, 0, candidates, np.array([4]))
    assert set(loops.measure_block.signatures) == variants


def test_a_blocks_weights_are_no_larger_than_its_rows(implementation):
    """A block keeps sums only for the candidates nearest to its rows: 10 rows against
    5,000 candidates return at most 10, not 5,000 rows of sums."""
    rng = np.random.default_rng(3)
    c = rng.standard_normal((5000, 4))
    x = c[rng.choice(5000, 10, replace=False)] + 1e-3
    result = weigh_candidates(x, None, 0, 0, Candidates.all_of(c, np.array([0, 5000])), [5000])
    assert len(result.nearest) <= 10 and result.sums.high.shape == (len(result.nearest), 5)
    assert result.totals()[:, -1].sum() == 10
