"""Many fits, one read: n_init, the elbow method and the silhouette score."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import silhouette_score as sklearn_silhouette

import dkmeans
from dkmeans import KMeans
from dkmeans.lloyd import lloyd
from dkmeans.sources import DaskSource

from .helpers import count_computes

#: The initialisers themselves, not the small-data path every small fit takes.
pytestmark = pytest.mark.usefixtures("kmeans_parallel_on_small_data")


def test_runs_together_equal_runs_alone(overlapping):
    source = DaskSource(da.from_array(overlapping, chunks=(300, -1)))
    starts = [overlapping[[0, 1, 2]], overlapping[[3, 4, 5]] + 1, overlapping[[6, 7]]]
    together = lloyd(source, starts)
    for start, result in zip(starts, together, strict=True):
        (alone,) = lloyd(source, [start])
        assert result.n_iter == alone.n_iter
        np.testing.assert_allclose(result.centers, alone.centers, rtol=1e-12)
        assert result.inertia == pytest.approx(alone.inertia, rel=1e-12)


@pytest.mark.parametrize("init", ["k-means||", "random"])
def test_elbow_equals_single_fits(blobs, init):
    X = da.from_array(blobs[0], chunks=(700, -1))
    curve = dkmeans.elbow(X, k_values=range(1, 7), init=init, random_state=5, persist=False)
    assert list(curve) == [1, 2, 3, 4, 5, 6]
    for k, inertia in curve.items():
        single = KMeans(k, init=init, random_state=5, persist=False).fit(X)
        assert inertia == pytest.approx(single.inertia_, rel=1e-9), k
    assert curve[1] > curve[3] > curve[5]


def test_elbow_shares_passes(blobs):
    X = da.from_array(blobs[0], chunks=(700, -1))
    singles = []
    for k in range(1, 7):
        with count_computes() as counter:
            KMeans(k, random_state=5, persist=False).fit(X)
        singles.append(counter.computes)
    with count_computes() as counter:
        dkmeans.elbow(X, k_values=range(1, 7), random_state=5, persist=False)
    # (k-means|| of these 3,000 rows runs on a sample, gathered in one pass)
    assert counter.computes <= max(singles) + 1 < sum(singles) / 2


def test_n_init_keeps_the_best_run(overlapping):
    single = KMeans(3, init="random", random_state=0).fit(overlapping)
    best = KMeans(3, init="random", n_init=6, random_state=0).fit(overlapping)
    # the first of the six runs is the single run: the best can only be as good (up to
    # rounding: the NumPy kernel's GEMM against six runs' stacked centres rounds differently)
    assert best.inertia_ <= single.inertia_ * (1 + 1e-12)
    with count_computes() as counter:
        km = KMeans(3, init="random", n_init=6, max_iter=5, tol=0, persist=False)
        km.fit(da.from_array(overlapping, chunks=(500, -1)))
    # the first rows (the frame), one pass for the six random inits, five shared
    # iterations, one final pass
    assert km.n_iter_ == 5
    assert counter.computes == 1 + 1 + 5 + 1


def test_elbow_rejects_bad_arguments(blobs):
    with pytest.raises(ValueError, match="k_values"):
        dkmeans.elbow(blobs[0], k_values=[0, 2])
    with pytest.raises(TypeError, match="k_values"):
        dkmeans.elbow(blobs[0], n_clusters=3)
    with pytest.raises(ValueError, match="n_samples=3000 should be >= n_clusters=5000"):
        dkmeans.elbow(blobs[0], k_values=[2, 5000])


def test_silhouette_exact_when_sample_covers_x(blobs):
    X = blobs[0][:600]
    labels = KMeans(5, random_state=0).fit(X).labels_
    expected = sklearn_silhouette(X, labels)
    assert dkmeans.silhouette_score(X, labels) == pytest.approx(expected, rel=1e-12)
    lazy = da.from_array(X, chunks=(100, -1))
    lazy_labels = da.from_array(labels, chunks=100)
    assert dkmeans.silhouette_score(lazy, lazy_labels, sample_size=None) == pytest.approx(
        expected, rel=1e-12
    )


def test_silhouette_sampled_is_close_and_reproducible(blobs):
    X = blobs[0]
    labels = KMeans(5, random_state=0).fit(X).labels_
    full = sklearn_silhouette(X, labels)
    sampled = dkmeans.silhouette_score(X, labels, sample_size=800, random_state=1)
    assert sampled == dkmeans.silhouette_score(X, labels, sample_size=800, random_state=1)
    assert sampled == pytest.approx(full, abs=0.03)
    with pytest.raises(ValueError, match="labels has 10 entries"):
        dkmeans.silhouette_score(X, labels[:10])
