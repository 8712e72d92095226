"""The guarded relocation of mini-batch k-means: it corrects a poor start, keeps the
weight the centres have seen, and leaves a good configuration alone."""

from __future__ import annotations

import numpy as np
import pytest

from dkmeans import KMeans, MiniBatchKMeans
from dkmeans.relocation import relocate

MEANS = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
#: Two centres in the first cluster, none in the last two: one centre between them.
POOR_START = np.array([[-1.0, 0.0], [1.0, 0.0], [20.0, 0.0], [10.0, 20.0]])


def blobs(n_rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return MEANS[rng.integers(4, size=n_rows)] + rng.normal(size=(n_rows, 2))


def test_a_poor_start_is_corrected():
    X = blobs(20_000)
    best = KMeans(4, init=MEANS).fit(X).inertia_
    params = dict(init=POOR_START, batch_size=256, max_iter=3, random_state=0)
    fitted = MiniBatchKMeans(4, **params).fit(X)
    assert fitted.inertia_ <= 1.01 * best
    # without relocations (nor reassignments) the start's mistake stays
    kept = MiniBatchKMeans(4, reassignment_ratio=0.0, **params).fit(X)
    assert kept.inertia_ > 5 * best


def test_a_move_keeps_the_weight_seen_and_lowers_the_inertia():
    x = blobs(1000, seed=1)
    centers, counts = POOR_START.copy(), np.array([10.0, 20.0, 30.0, 40.0])
    assert relocate(centers, counts, x, None) == 1
    assert counts.sum() == 100.0
    nearest = np.linalg.norm(MEANS[:, None] - centers[None], axis=-1).min(axis=1)
    # the split put one centre near each of the last two clusters' means; the first
    # cluster keeps one of its two centres, as it was
    assert nearest[2:].max() < 0.5 and nearest[0] == 1.0
    # from there no move lowers the inertia: nothing changes
    before, seen = centers.copy(), counts.copy()
    assert relocate(centers, counts, x, None) == 0
    np.testing.assert_array_equal(centers, before)
    np.testing.assert_array_equal(counts, seen)


def test_rows_of_weight_zero_draw_no_centre():
    x = np.concatenate([blobs(600, seed=2), np.full((400, 2), 500.0)])
    weights = np.concatenate([np.ones(600), np.zeros(400)])
    centers = MEANS.copy()
    assert relocate(centers, np.ones(4), x[np.random.default_rng(0).permutation(1000)], None)
    centers = MEANS.copy()
    order = np.random.default_rng(0).permutation(1000)
    assert relocate(centers, np.ones(4), x[order], weights[order]) == 0
    np.testing.assert_array_equal(centers, MEANS)


@pytest.mark.parametrize("seed", [0, 1])
def test_spherical_centres_stay_unit_vectors(seed):
    rng = np.random.default_rng(seed)
    directions = np.eye(3)
    x = directions[rng.integers(3, size=900)] + rng.normal(scale=0.05, size=(900, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centers = np.array([[1.0, 0.05, 0.0], [1.0, -0.05, 0.0], [0.0, 0.7, 0.7]])
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    assert relocate(centers, np.ones(3), x, None, unit=True) >= 1
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1, rtol=1e-12)
    assert (centers @ directions.T).max(axis=0).min() > 0.99  # a centre on every direction
