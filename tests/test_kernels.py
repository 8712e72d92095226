"""Block kernels against brute force, and the algebra of their partial results."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkmeans import engine, kernels, loops
from dkmeans.kernels import cluster_sums, nearest_centers, pass_statistics
from dkmeans.oversampling import Candidates, oversample, weigh_candidates
from dkmeans.statistics import PENDING_CAPACITIES, FarPoints, Moments, PassStats


def brute_force(x, centers, bounds, weights):
    """Per run: labels and squared distances from all pairwise differences, in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else weights
    runs = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        squared = ((x64[:, None, :] - centers[None, lo:hi]) ** 2).sum(axis=-1)
        labels = squared.argmin(axis=1)
        distances = squared[np.arange(len(x)), labels]
        k = hi - lo
        sums = np.zeros((k, x.shape[1]))
        np.add.at(sums, labels, x64 * w[:, None])
        runs.append(
            (
                labels,
                distances,
                sums,
                np.bincount(labels, weights=w, minlength=k),
                np.bincount(labels, weights=w * distances, minlength=k),
            )
        )
    return runs


@st.composite
def problems(draw):
    """A block, stacked centres of 1-3 runs (1..300 centres in all), optional weights."""
    n_rows = draw(st.integers(1, 400))
    n_features = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    sizes = draw(
        st.lists(st.integers(1, 150), min_size=1, max_size=3).filter(lambda s: sum(s) <= 300)
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # a few coarse values make exact ties between centres likely
    x = (
        rng.integers(-3, 4, size=(n_rows, n_features)) + rng.normal(size=(n_rows, n_features))
    ).astype(dtype)
    centers = rng.normal(scale=2, size=(sum(sizes), n_features))
    weights = rng.uniform(0, 3, size=n_rows) if draw(st.booleans()) else None
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return x, centers, bounds, weights


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(problem=problems())
def test_pass_statistics_matches_brute_force(problem, implementation):
    x, centers, bounds, weights = problem
    stats = pass_statistics(x, weights, 0, 0, centers, bounds)
    labels, distances = nearest_centers(x, centers, bounds)
    rtol = 1e-4 if x.dtype == np.float32 else 1e-9
    for r, (ref_labels, ref_dist, ref_sums, ref_counts, ref_inertia) in enumerate(
        brute_force(x, centers, bounds, weights)
    ):
        lo, hi = bounds[r], bounds[r + 1]
        # the GEMM expansion may pick another centre only when both are (nearly) as close
        np.testing.assert_allclose(distances[:, r], ref_dist, rtol=rtol, atol=1e-5)
        chosen = ((x.astype(np.float64) - centers[lo + labels[:, r]]) ** 2).sum(axis=1)
        np.testing.assert_allclose(distances[:, r], chosen, rtol=1e-12)
        if x.dtype == np.float64:
            np.testing.assert_array_equal(labels[:, r], ref_labels)
            np.testing.assert_allclose(stats.sums[lo:hi], ref_sums, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(stats.counts[lo:hi], ref_counts, rtol=1e-12)
        np.testing.assert_allclose(
            stats.cluster_inertia[lo:hi].sum(), ref_inertia.sum(), rtol=rtol, atol=1e-6
        )
        # per-cluster statistics agree with the kernel's own labels exactly
        w = np.ones(len(x)) if weights is None else weights
        own = labels[:, r]
        np.testing.assert_allclose(
            stats.counts[lo:hi], np.bincount(own, weights=w, minlength=hi - lo), rtol=1e-12
        )
        np.testing.assert_allclose(
            stats.sums[lo:hi], cluster_sums(x, own, weights, hi - lo), rtol=1e-9, atol=1e-9
        )


@pytest.mark.skipif(engine.numba is None, reason="the compiled scans need numba")
@settings(max_examples=200, deadline=None)
@given(
    n_centers=st.integers(1, 40),
    n_rows=st.integers(1, 30),
    lo=st.integers(0, 5),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_row_scan_finds_the_first_minimum_and_the_second_value(n_centers, n_rows, lo, dtype, seed):
    # few distinct values: ties everywhere; the first index of the minimum must win
    rng = np.random.default_rng(seed)
    partial_t = rng.integers(-4, 5, (lo + n_centers, n_rows)).astype(dtype)
    centers_sq = rng.integers(0, 2, lo + n_centers).astype(dtype)
    best_value, second = np.empty(n_rows, dtype), np.empty(n_rows, dtype)
    best_index = np.empty(n_rows, dtype=np.int64)
    hi = lo + n_centers
    scan = loops.Scan(best_value, best_index, second, np.empty(0))
    loops.argmin_rows(partial_t, centers_sq, lo, hi, scan, second)
    values = partial_t[lo:hi] + centers_sq[lo:hi, None]
    np.testing.assert_array_equal(best_index, values.argmin(axis=0))
    np.testing.assert_array_equal(best_value, values.min(axis=0))
    ordered = np.sort(values, axis=0)
    expected_second = ordered[1] if n_centers > 1 else np.full(n_rows, np.inf)
    np.testing.assert_array_equal(second, expected_second)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@settings(max_examples=300, deadline=None)
@given(
    n_centers=st.integers(1, 70),
    n_rows=st.integers(1, 30),
    lo=st.integers(0, 9),
    dtypes=st.sampled_from([(np.float32,) * 2, (np.float64,) * 2, (np.float32, np.float64)]),
    values=st.sampled_from(["few", "signed zeros", "normal"]),
    with_second=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_scan_along_rows_gives_the_first_minimum_and_its_bits(
    compiled, n_centers, n_rows, lo, dtypes, values, with_second, seed
):
    # whole vectors of centres are compared in lanes, the rest one at a time: the index
    # and the value's bits (+0.0 or -0.0) are those of the first minimum of the row, in
    # the wider dtype of the GEMM's and the centres' norms; and the second smallest value
    dtype, norms_dtype = dtypes
    rng = np.random.default_rng(seed)
    shape = (n_rows, lo + n_centers + 2)  # centres beyond hi that must not count
    if values == "few":
        partial = rng.integers(-4, 5, shape).astype(dtype)
    elif values == "signed zeros":
        partial = np.where(rng.random(shape) < 0.5, -0.0, 0.0).astype(dtype)
    else:
        partial = rng.normal(size=shape).astype(dtype)
    partial[:, lo + n_centers :] = -100
    centers_sq = (rng.integers(0, 2, shape[1]) * (values == "few")).astype(norms_dtype)
    hi = lo + n_centers
    second = np.empty(n_rows, norms_dtype) if with_second else None
    scan = loops.Scan(
        np.empty(n_rows, norms_dtype), np.empty(n_rows, np.int64), np.empty(0), np.empty(0)
    )
    scan_rows = loops.argmin_per_row
    if not compiled:  # the plain loops, with the NumPy form of the lanes
        scan_rows = getattr(scan_rows, "py_func", scan_rows)
    scan_rows(partial, centers_sq, lo, hi, scan, second)
    sums = partial[:, lo:hi] + centers_sq[lo:hi]
    expected = sums.argmin(axis=1)
    np.testing.assert_array_equal(scan.best_index, expected)
    first_minimum = sums[np.arange(n_rows), expected]
    np.testing.assert_array_equal(scan.best_value.view(np.uint8), first_minimum.view(np.uint8))
    if with_second:  # the second smallest value, equal to the smallest where tied
        ordered = np.sort(sums, axis=1)
        expected_second = ordered[:, 1] if n_centers > 1 else np.full(n_rows, np.inf)
        np.testing.assert_array_equal(second, expected_second)


@pytest.mark.skipif(engine.numba is None, reason="the GEMM layouts are the compiled kernel's")
@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(1, 3000),
    n_features=st.integers(1, 6),
    run_sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_both_gemm_layouts_give_the_same_passes(n_rows, n_features, run_sizes, dtype, seed):
    # integer values: every GEMM is exact, whatever its layout, and ties are common
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (n_rows, n_features)).astype(dtype)
    centers = rng.integers(-3, 4, (sum(run_sizes), n_features)).astype(np.float64)
    bounds = np.concatenate([[0], np.cumsum(run_sizes)])
    oversampling, seeds = np.full(len(run_sizes), 2.0), np.arange(len(run_sizes))
    results = []
    for by_centers in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kernels, "gemm_by_centers", lambda *_, choice=by_centers: choice)
            candidates = Candidates.all_of(centers, bounds)
            results.append(
                (
                    pass_statistics(x, None, 0, 0, centers, bounds),
                    nearest_centers(x, centers, bounds)[0],
                    oversample(x, None, 0, 0, candidates, oversampling, seeds, 0),
                    weigh_candidates(x, None, 0, 0, candidates, np.array(run_sizes)),
                )
            )
    (stats_a, labels_a, drawn_a, weights_a), (stats_b, labels_b, drawn_b, weights_b) = results
    np.testing.assert_array_equal(labels_a, labels_b)
    np.testing.assert_array_equal(stats_a.sums, stats_b.sums)
    np.testing.assert_array_equal(stats_a.counts, stats_b.counts)
    np.testing.assert_array_equal(stats_a.cluster_inertia, stats_b.cluster_inertia)
    for a, b in zip(drawn_a, drawn_b, strict=True):
        assert a.cost == b.cost
        np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(weights_a.totals(), weights_b.totals())


def test_sub_blocks_do_not_change_the_result(monkeypatch, implementation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 6))
    centers = rng.normal(size=(20, 6))
    bounds = np.array([0, 7, 20])
    whole = pass_statistics(x, None, 0, 0, centers, bounds, with_moments=True)
    monkeypatch.setattr(kernels, "SUB_BLOCK_ELEMENTS", 1)  # 64-row sub-blocks
    small = pass_statistics(x, None, 0, 0, centers, bounds, with_moments=True)
    np.testing.assert_allclose(small.sums, whole.sums, rtol=1e-12)
    np.testing.assert_allclose(small.cluster_inertia, whole.cluster_inertia, rtol=1e-12)
    np.testing.assert_allclose(small.moments.variance, whole.moments.variance, rtol=1e-12)
    np.testing.assert_array_equal(small.counts, whole.counts)


@pytest.mark.parametrize("k", [1, 5, 64, 65, 300])
def test_cluster_sums_both_methods(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    labels = rng.integers(k, size=1000)
    weights = rng.uniform(size=1000)
    expected = np.zeros((k, 3))
    np.add.at(expected, labels, x.astype(np.float64) * weights[:, None])
    np.testing.assert_allclose(cluster_sums(x, labels, weights, k), expected, rtol=1e-9)


def test_inertia_is_exact_far_from_the_origin(implementation):
    # the GEMM expansion loses every digit here; the direct difference does not
    rng = np.random.default_rng(1)
    x = 1e6 + rng.normal(size=(300, 4))
    centers = 1e6 + rng.normal(size=(3, 4))
    stats = pass_statistics(x, None, 0, 0, centers, np.array([0, 3]))
    expected = ((x[:, None] - centers[None]) ** 2).sum(-1).min(1).sum()
    np.testing.assert_allclose(stats.cluster_inertia.sum(), expected, rtol=1e-9)


def _split_points(n_rows: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(set(rng.integers(1, n_rows, size=5).tolist()))


@pytest.mark.parametrize("seed", range(3))
def test_combine_is_associative(seed, implementation):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 3)) * 10
    weights = rng.uniform(size=600)
    centers = rng.normal(size=(9, 3))
    bounds = np.array([0, 4, 9])
    cuts = [0, *_split_points(600, seed), 600]
    parts = [
        pass_statistics(x[a:b], weights[a:b], a, i, centers, bounds, with_moments=True)
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))
    ]
    left = reduce(PassStats.combine, parts)
    right = reduce(lambda a, b: b.combine(a), reversed(parts))  # (p0 + (p1 + (...)))
    pairs = parts
    while len(pairs) > 1:  # a balanced tree
        pairs = [reduce(PassStats.combine, pairs[i : i + 2]) for i in range(0, len(pairs), 2)]
    whole = pass_statistics(x, weights, 0, 0, centers, bounds, with_moments=True)
    for other in (right, pairs[0], whole):
        np.testing.assert_allclose(other.sums, left.sums, rtol=1e-12)
        np.testing.assert_allclose(other.counts, left.counts, rtol=1e-12)
        np.testing.assert_allclose(other.cluster_inertia, left.cluster_inertia, rtol=1e-12)
        np.testing.assert_allclose(other.moments.mean, left.moments.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other.moments.m2, left.moments.m2, rtol=1e-12)
        for a, b in zip(other.far, left.far, strict=True):
            np.testing.assert_array_equal(a.chosen.index, b.chosen.index)
            np.testing.assert_array_equal(a.chosen.rows, b.chosen.rows)


def test_far_points_tie_break_and_capacity():
    distances = np.array([1.0, 5.0, 5.0, 3.0, 5.0, 0.5])
    rows = np.arange(6, dtype=float)[:, None]
    weights = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])  # zero weight is never chosen
    far = FarPoints.select(rows, distances, np.zeros(6, int), weights, np.arange(6), 3)
    np.testing.assert_array_equal(far.chosen.index, [1, 4, 3])
    halves = FarPoints.select(
        rows[:3], distances[:3], np.zeros(3, int), weights[:3], np.arange(3), 3
    ).combine(
        FarPoints.select(rows[3:], distances[3:], np.zeros(3, int), weights[3:], np.arange(3, 6), 3)
    )
    np.testing.assert_array_equal(halves.chosen.index, far.chosen.index)
    assert (
        len(
            FarPoints.select(
                rows, distances, np.zeros(6, int), weights, np.arange(6), 0
            ).chosen.index
        )
        == 0
    )


@pytest.mark.parametrize("capacity", [0, 1, 3])
def test_far_points_gathered_by_combining_are_the_farthest_of_all(capacity):
    # combining only gathers candidates (a bounded number), then selects once when read:
    # the same points, in the same order, as one selection over every point
    rng = np.random.default_rng(9)
    n = 400
    distances = rng.integers(0, 20, size=n).astype(float)  # many ties
    weights = rng.integers(0, 2, size=n).astype(float)
    rows, labels = rng.normal(size=(n, 2)), rng.integers(0, 4, size=n)
    cuts = [slice(a, a + 10) for a in range(0, n, 10)]
    index = np.arange(n)
    parts = [
        FarPoints.select(rows[c], distances[c], labels[c], weights[c], index[c], capacity)
        for c in cuts
    ]
    combined = reduce(FarPoints.combine, parts)
    assert sum(len(part.index) for part in combined.parts) <= PENDING_CAPACITIES * capacity
    eligible = np.flatnonzero(weights > 0)
    expected = eligible[np.lexsort((eligible, -distances[eligible]))][:capacity]
    np.testing.assert_array_equal(combined.chosen.index, expected)
    np.testing.assert_array_equal(combined.chosen.rows, rows[expected])
    np.testing.assert_array_equal(combined.chosen.labels, labels[expected])
    np.testing.assert_array_equal(combined.chosen.distances, distances[expected])
    np.testing.assert_array_equal(combined.shifted(np.ones(2)).chosen.rows, rows[expected] - 1)


@pytest.mark.parametrize("capacity", [None, 1, 5, 40])
def test_pass_far_points_are_the_farthest_with_ties_and_zero_weights(capacity, implementation):
    rng = np.random.default_rng(4)
    # few distinct rows, so that many distances tie; some rows weigh nothing
    x = rng.integers(-3, 4, size=(3000, 2)).astype(np.float64)
    weights = rng.integers(0, 3, size=3000).astype(np.float64)
    centers = np.array([[0.0, 0.0], [2.0, 2.0], [-2.0, 1.0], [1.0, -3.0], [3.0, 0.0]])
    bounds = np.array([0, 2, 5])
    stats = pass_statistics(x, weights, 100, 0, centers, bounds, far_capacity=capacity)
    for run, (labels, distances, *_) in enumerate(brute_force(x, centers, bounds, weights)):
        size = bounds[run + 1] - bounds[run] if capacity is None else capacity
        eligible = np.flatnonzero(weights > 0)
        order = np.lexsort((eligible, -distances[eligible]))[:size]
        expected = eligible[order]
        far = stats.far[run]
        np.testing.assert_array_equal(far.chosen.index, expected + 100)
        np.testing.assert_array_equal(far.chosen.rows, x[expected])
        np.testing.assert_array_equal(far.chosen.labels, labels[expected])
        np.testing.assert_allclose(far.chosen.distances, distances[expected], rtol=1e-12)
        np.testing.assert_array_equal(far.chosen.weights, weights[expected])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moments_match_numpy_var(dtype):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(1001, 4)) * [1, 10, 1e3, 1e-3] + 1e4).astype(dtype)
    parts = [Moments.of(x[a : a + 97]) for a in range(0, len(x), 97)]
    combined = reduce(Moments.combine, parts)
    expected = x.astype(np.float64).var(axis=0)
    np.testing.assert_allclose(combined.variance, expected, rtol=1e-9)
    np.testing.assert_allclose(Moments.of(x).variance, expected, rtol=1e-9)
    assert combined.count == len(x)


def test_single_row_and_single_feature(implementation):
    x = np.array([[2.5]], dtype=np.float32)
    stats = pass_statistics(x, None, 7, 0, np.array([[0.0], [3.0]]), np.array([0, 2]))
    np.testing.assert_array_equal(stats.counts, [0, 1])
    np.testing.assert_allclose(stats.sums, [[0.0], [2.5]])
    np.testing.assert_allclose(stats.cluster_inertia, [0, 0.25])
    assert stats.far[0].chosen.index.tolist() == [7]


@pytest.mark.skipif(engine.numba is None, reason="the far-point slots are the compiled kernel's")
@settings(max_examples=100, deadline=None)
@given(
    distances=st.lists(st.integers(0, 4).map(float), min_size=1, max_size=60),
    capacity=st.integers(1, 8),
)
def test_far_point_slots_keep_what_far_points_select(distances, capacity):
    # one tie rule in two places: the compiled slots (rows met in order, a row replaces
    # the worst slot only when strictly farther) and FarPoints.select must agree
    distances = np.array(distances)
    slots = loops.FarSlots(
        distances=np.full((1, capacity), -np.inf),
        rows=np.full((1, capacity), -1, dtype=np.int64),
        labels=np.zeros((1, capacity), dtype=np.int64),
        worst=np.full(1, -np.inf),
    )
    for row, squared in enumerate(distances):
        if squared > slots.worst[0]:
            loops.keep_far(far=slots, run=0, squared=squared, row=row, label=0)
    kept = slots.rows[0][slots.rows[0] >= 0]
    rows = np.arange(len(distances), dtype=float)[:, None]
    ones = np.ones(len(distances))
    labels = np.zeros(len(distances), dtype=np.int64)
    from_slots = FarPoints.select(
        rows[kept], distances[kept], labels[kept], ones[kept], kept, capacity
    )
    selected = FarPoints.select(rows, distances, labels, ones, np.arange(len(distances)), capacity)
    np.testing.assert_array_equal(from_slots.chosen.index, selected.chosen.index)
