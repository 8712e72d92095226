"""Sampling kernels: per-row random streams, k-means|| rounds against a brute-force
reference, and samples that do not depend on how the rows are cut into blocks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkmeans import engine, loops
from dkmeans.oversampling import Candidates, oversample
from dkmeans.sampling import uniform_rows
from dkmeans.seeding import (
    kmeans_parallel,
    kmeans_plusplus,
    random_centers,
    sample_fractions,
    sampled_kmeans_parallel,
)
from dkmeans.sources import DaskSource, InMemorySource
from dkmeans.streams import Purpose, row_uniforms, stream_key


def test_row_uniforms_are_uniform_on_the_half_open_unit_interval():
    u = row_uniforms(stream_key(3, Purpose.OVERSAMPLE, 0), 0, 200_000)
    assert u.min() > 0 and u.max() <= 1
    counts, _ = np.histogram(u, bins=20, range=(0, 1))
    chi_square = ((counts - 10_000) ** 2 / 10_000).sum()
    assert chi_square < 60  # 19 degrees of freedom: p < 1e-6 above this
    # another stream, and the next rows of this one, are unrelated to these numbers
    other = row_uniforms(stream_key(4, Purpose.OVERSAMPLE, 0), 0, 200_000)
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.02
    np.testing.assert_array_equal(row_uniforms(stream_key(3, 2, 0), 100, 10), u[100:110])


@pytest.mark.skipif(engine.numba is None, reason="numba is not installed")
def test_compiled_and_numpy_draws_are_identical():
    stream = stream_key(11, Purpose.SMALLEST_KEYS)
    compiled = np.array([loops.uniform(stream, np.uint64(row)) for row in range(50)])
    np.testing.assert_array_equal(compiled, row_uniforms(stream, 0, 50))


def brute_force_round(x, weights, candidates, bounds, oversampling, seeds, round_index, offset):
    """Per run: cost, keys and kept rows (block-local) from exact float64 distances,
    and how far each key may be off when distances come from the GEMM expansion."""
    x64 = np.asarray(x, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else weights
    # the expansion ||x||² - 2x·c + ||c||² is off by about eps * (||x||² + ||c||²)
    eps = 1e-5 if x.dtype == np.float32 else 1e-13
    runs = []
    for r, seed in enumerate(seeds):
        lo, hi = bounds[r], bounds[r + 1]
        squared = ((x64[:, None, :] - candidates[None, lo:hi]) ** 2).sum(-1).min(axis=1)
        error = eps * ((x64**2).sum(1) + (candidates[lo:hi] ** 2).sum(1).max())
        mass = w * squared
        u = row_uniforms(stream_key(int(seed), Purpose.OVERSAMPLE, round_index), offset, len(x))
        keys = oversampling[r] * mass / u
        cost = mass.sum()
        kept = np.flatnonzero((mass > 0) & (keys >= cost))
        key_error = oversampling[r] * w * error / u + 1e-6 * cost
        runs.append((cost, (w * error).sum(), kept, np.abs(keys - cost) <= key_error))
    return runs


@st.composite
def rounds(draw):
    """A block, the stacked candidates of 1-3 runs, weights, oversampling factors."""
    n_rows = draw(st.integers(1, 3000))
    n_features = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(n_rows, n_features)).astype(dtype)
    candidates = rng.normal(size=(sum(sizes), n_features))
    weights = rng.choice([0.0, 0.5, 2.0], size=n_rows) if draw(st.booleans()) else None
    oversampling = rng.choice([0.5, 5.0, 200.0, 1e6], size=len(sizes))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    offset = draw(st.integers(0, 10**12))
    return x, weights, candidates, bounds, oversampling, offset


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(problem=rounds(), round_index=st.integers(0, 6))
def test_oversample_matches_brute_force(problem, round_index, implementation):
    x, weights, candidates, bounds, oversampling, offset = problem
    seeds = np.arange(len(oversampling)) + 17
    measured = Candidates.all_of(candidates, bounds)
    drawn = oversample(x, weights, offset, 0, measured, oversampling, seeds, round_index)
    reference = brute_force_round(
        x, weights, candidates, bounds, oversampling, seeds, round_index, offset
    )
    for run, (cost, cost_error, kept, near_threshold) in zip(drawn, reference, strict=True):
        assert run.cost == pytest.approx(cost, rel=1e-9, abs=cost_error)
        # the kept rows are the reference's, but for keys within rounding of the cost
        differ = np.setxor1d(run.index - offset, kept)
        assert near_threshold[differ].all()
        np.testing.assert_array_equal(run.rows, x[run.index - offset].astype(np.float64))


def test_a_run_without_candidates_keeps_every_weighted_row(implementation):
    # infinite distances: more rows are kept than the compiled kernel's first slots hold
    x = np.random.default_rng(0).normal(size=(5000, 3))
    weights = np.ones(5000)
    weights[::7] = 0
    no_candidates = Candidates.all_of(np.empty((0, 3)), np.array([0, 0]))
    (run,) = oversample(x, weights, 0, 0, no_candidates, [2.0], [1], 0)
    np.testing.assert_array_equal(run.index, np.flatnonzero(weights))


CHUNKINGS = [(3000,), (600,) * 5, (1, 999, 1250, 750)]


@pytest.mark.parametrize("chunks", CHUNKINGS[1:])
def test_seeding_does_not_depend_on_the_blocks(blobs, chunks):
    X = blobs[0]

    def seeded(source):
        return (
            kmeans_parallel(source, [5, 8], [3, 4], init_rounds=3),
            kmeans_plusplus(source, 4, seed=5),
            random_centers(source, [6], [7]),
        )

    whole = seeded(InMemorySource.of_array(X))
    cut = seeded(DaskSource(da.from_array(X, chunks=(chunks, -1))))
    for a, b in zip(whole[0] + [whole[1]] + whole[2], cut[0] + [cut[1]] + cut[2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("chunks", CHUNKINGS[1:])
def test_sampled_seeding_does_not_depend_on_the_blocks(blobs, chunks):
    X = blobs[0]

    def seeded(source):
        assert (sample_fractions(source, [5, 8]) < 1).all()
        return sampled_kmeans_parallel(source, [5, 8], [3, 4], init_rounds=3)

    whole = seeded(InMemorySource.of_array(X))
    cut = seeded(DaskSource(da.from_array(X, chunks=(chunks, -1))))
    for a, b in zip(whole, cut, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    chunks=st.lists(st.integers(1, 50), min_size=1, max_size=12),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
)
def test_a_uniform_sample_is_the_same_rows_whatever_the_blocks(chunks, fractions):
    # each row is kept by its own number: the blocks' kept rows, joined in the tree,
    # are the rows of one block over all of X
    x = np.arange(3 * sum(chunks), dtype=np.float32).reshape(-1, 3)
    weights = np.where(np.arange(len(x)) % 5 == 0, 0.0, 1.0 + np.arange(len(x)) % 3)
    streams = np.array([stream_key(7, Purpose.SEEDING_SAMPLE, r) for r in range(len(fractions))])
    whole = uniform_rows(x, weights, 0, 0, np.array(fractions), streams)
    source = InMemorySource.of_array(x, weights, chunks=chunks)
    sample = source.map_reduce(uniform_rows, np.array(fractions), streams)
    for run in range(len(fractions)):
        rows, kept = sample.of_run(run)
        expected_rows, expected_weights = whole.of_run(run)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(kept, expected_weights)
        assert (kept > 0).all()
