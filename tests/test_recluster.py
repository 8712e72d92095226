"""The reclustering of the k-means|| candidates: vectorised weighted k-means++ in memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import kmeans_plusplus

from dkmeans import seeding
from dkmeans.seeding import (
    greedy_reclustering_pays,
    kmeans_parallel,
    recluster_iterations,
    recluster_plan,
    recluster_restarts,
    weighted_plusplus,
    weighted_plusplus_restarts,
    weighted_sample,
)
from dkmeans.sources import InMemorySource

from .helpers import brute_force_inertia


def plusplus_by_hand(points, weights, n_clusters, seed):
    """Greedy weighted k-means++ written out row by row, with the same random draws."""
    rng = np.random.default_rng(seed)
    n_trials = 2 + int(np.log(n_clusters))
    first = int(rng.choice(len(points), p=weights / weights.sum()))
    chosen = [first]

    def distance(a, b):
        return float(sum((x - y) ** 2 for x, y in zip(points[a], points[b], strict=True)))

    closest = [distance(i, first) for i in range(len(points))]
    for _ in range(1, n_clusters):
        masses = [w * d for w, d in zip(weights, closest, strict=True)]
        total = float(np.cumsum(masses)[-1])
        if total <= 0:
            break
        draws = rng.uniform(size=n_trials) * total
        trials = []
        for draw in draws:  # the first point whose cumulative mass exceeds the draw
            index = len(points) - 1
            for i, cumulative in enumerate(np.cumsum(masses)):
                if cumulative > draw:
                    index = i
                    break
            trials.append(index)
        potentials = [
            sum(
                w * min(c, distance(i, t))
                for i, (w, c) in enumerate(zip(weights, closest, strict=True))
            )
            for t in trials
        ]
        best = int(np.argmin(potentials))
        chosen.append(trials[best])
        closest = [min(c, distance(i, trials[best])) for i, c in enumerate(closest)]
    return chosen


@settings(max_examples=30, deadline=None)
@given(
    n_points=st.integers(2, 40),
    n_features=st.integers(1, 3),
    n_clusters=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    duplicates=st.booleans(),
)
def test_weighted_plusplus_equals_a_brute_force(n_points, n_features, n_clusters, seed, duplicates):
    rng = np.random.default_rng(seed)
    # small integers: every distance is exact, in the GEMM expansion too
    points = rng.integers(-5, 6, size=(n_points, n_features)).astype(np.float64)
    if duplicates:
        points[n_points // 2 :] = points[0]
    weights = rng.integers(1, 5, size=n_points).astype(np.float64)
    expected = plusplus_by_hand(points, weights, n_clusters, seed)
    centers = weighted_plusplus(points, weights, n_clusters, seed)
    assert centers.shape == (n_clusters, n_features)
    chosen = points[expected]
    # fewer distinct points than clusters: the chosen ones repeat cyclically
    np.testing.assert_array_equal(centers, chosen[np.arange(n_clusters) % len(chosen)])


@settings(max_examples=20, deadline=None)
@given(n_points=st.integers(2, 40), n_clusters=st.integers(1, 8), seed=st.integers(0, 2**16))
@pytest.mark.filterwarnings("error")  # an overflow in a product is a failure
def test_weighted_plusplus_of_points_whose_squares_overflow_float32(n_points, n_clusters, seed):
    # scaled by 2**66, the squared distances (up to 2**138) overflow float32: the steps
    # must choose the points they choose unscaled (a power of two scales exactly)
    rng = np.random.default_rng(seed)
    points = rng.integers(-5, 6, size=(n_points, 2)).astype(np.float64)
    weights = rng.integers(1, 5, size=n_points).astype(np.float64)
    expected = plusplus_by_hand(points, weights, n_clusters, seed)
    centers = weighted_plusplus(points * 2.0**66, weights, n_clusters, seed)
    chosen = points[expected] * 2.0**66
    np.testing.assert_array_equal(centers, chosen[np.arange(n_clusters) % len(chosen)])


@pytest.mark.parametrize("n_clusters", [5, 40])  # 40: more than the distinct points
def test_restarts_equal_each_restart_alone(n_clusters):
    rng = np.random.default_rng(1)
    # small integers: every distance is exact, whatever the shape of the GEMM
    points = rng.integers(-5, 6, size=(80, 3)).astype(np.float64)
    points[30:] = points[:5].repeat(10, axis=0)  # 30 distinct points
    weights = rng.integers(1, 5, size=80).astype(np.float64)
    seeds = [3, 1, 4, 1, 5]
    together = weighted_plusplus_restarts(points, weights, n_clusters, seeds)
    assert len(together) == len(seeds)
    for seed, centers in zip(seeds, together, strict=True):
        np.testing.assert_array_equal(centers, weighted_plusplus(points, weights, n_clusters, seed))
        alone = plusplus_by_hand(points, weights, n_clusters, seed)
        np.testing.assert_array_equal(centers[: len(alone)], points[alone])


@pytest.mark.parametrize("n_clusters", [8, 64])
def test_weighted_plusplus_seeds_as_well_as_scikit_learn(n_clusters):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3000, 4)) + rng.integers(-20, 20, size=(3000, 1))
    weights = rng.uniform(0.5, 2, size=3000)

    def potential(centers):
        d2 = ((points[:, None] - centers[None]) ** 2).sum(-1).min(1)
        return float(weights @ d2)

    ours = np.median(
        [potential(weighted_plusplus(points, weights, n_clusters, s)) for s in range(10)]
    )
    theirs = np.median(
        [
            potential(kmeans_plusplus(points, n_clusters, sample_weight=weights, random_state=s)[0])
            for s in range(10)
        ]
    )
    assert ours <= 1.1 * theirs


def test_restarts_of_the_reclustering_cost_about_one_pass():
    """Every restart where the candidates are few next to the rows; one where a single
    restart already costs more than a pass (m (2 + ln k) distance rows against n)."""
    assert recluster_restarts(2_000_000, 160, 16) == seeding.RECLUSTER_RESTARTS
    assert recluster_restarts(200_000, 10_000, 1_024) == 1
    assert recluster_restarts(200_000, 2_560, 256) == 2
    assert recluster_restarts(1_000_000, 164_000, 16_384) == 1
    assert recluster_restarts(10, 10_000, 1_024) == 1
    # tiny data: a few milliseconds of distances are always spent, whatever n
    assert recluster_restarts(300, 300, 5) == seeding.RECLUSTER_RESTARTS
    costs = [(n, m, k) for n in (10**4, 10**6) for m in (100, 10**4) for k in (4, 256)]
    for n, m, k in costs:
        restarts = recluster_restarts(n, m, k)
        budget = max(n, seeding.RECLUSTER_FREE_DISTANCES / k)
        cost = seeding.PLUSPLUS_ROW_COST * m * (2 + np.log(k))
        assert restarts == 1 or restarts * cost <= budget


def test_lloyd_on_the_candidates_costs_about_one_pass():
    assert recluster_iterations(2_000_000, 160, 16) == 300
    assert recluster_iterations(1_000_000, 164_000, 16_384) == 6
    assert recluster_iterations(1_000_000, 300_000, 65_536) == seeding.RECLUSTER_MIN_ITER
    assert recluster_iterations(1_000_000, 50_000, 4_096) == 20
    assert recluster_iterations(300, 300, 5) == 300  # tiny data: Lloyd converges
    # the restarts' iterations together: 8 restarts on 2,560 candidates, not 8 passes
    assert recluster_iterations(200_000, 2_560, 256) == 78
    assert recluster_iterations(200_000, 2_560, 256, restarts=8) == 9
    plan = recluster_plan(200_000, 2_560, 256)
    assert plan == (2, 39, True)


def test_a_seeding_sample_reclusters_greedily_where_a_pass_over_all_rows_pays():
    """The candidates of a sample of 16,000 rows out of 80,000: greedy k-means++ is
    weighed against a pass over the 80,000 rows (it pays), restarts and Lloyd against a
    pass over the sample."""
    on_the_sample = recluster_plan(16_000, 5_000, 500)
    for_all_rows = recluster_plan(16_000, 5_000, 500, data_rows=80_000)
    assert not on_the_sample.greedy and for_all_rows.greedy
    assert for_all_rows._replace(greedy=False) == on_the_sample


def test_weighted_sample_draws_distinct_rows_in_proportion_to_weight():
    points = np.arange(10.0)[:, None]
    weights = np.array([1.0, 9.0, *[1e-9] * 8])
    heavy = [weighted_sample(points, weights, 1, seed)[0, 0] == 1.0 for seed in range(2000)]
    assert abs(np.mean(heavy) - 0.9) < 0.03
    drawn = weighted_sample(points, np.ones(10), 7, 3)
    assert drawn.dtype == np.float64 and len(np.unique(drawn)) == 7


def test_very_large_k_reclusters_from_a_weighted_sample(monkeypatch):
    """Where greedy k-means++ on the candidates would cost more than a pass over the data
    (m (2 + ln k) > n: k steps one after another, each over all candidates), the
    reclustering starts from k candidates drawn by weight, and Lloyd on the candidates
    refines them: no k-means++ step runs, and the centres are as good as scikit-learn's
    greedy k-means++ seeding of the same data."""
    rng = np.random.default_rng(0)
    X = rng.normal(scale=4.0, size=(200, 3))[rng.integers(200, size=4_000)]
    X += rng.normal(size=X.shape)
    monkeypatch.setattr(seeding, "RECLUSTER_FREE_DISTANCES", 0)  # as if the data were big
    assert not greedy_reclustering_pays(4_000, 2_000, 200)
    assert greedy_reclustering_pays(200_000, 10_000, 1_024)

    def no_plusplus(*args, **kwargs):
        raise AssertionError("greedy k-means++ ran")

    monkeypatch.setattr(seeding, "weighted_plusplus_restarts", no_plusplus)
    (centers,) = kmeans_parallel(InMemorySource.of_array(X), [200], [0])
    assert len(np.unique(centers, axis=0)) == 200
    ours = brute_force_inertia(X, centers)
    theirs = np.median(
        [brute_force_inertia(X, kmeans_plusplus(X, 200, random_state=s)[0]) for s in range(3)]
    )
    assert ours <= 1.05 * theirs
