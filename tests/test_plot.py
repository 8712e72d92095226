"""Pictures of a clustering: what is drawn where, and the optional matplotlib import."""

import sys

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import PCA

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import dkmeans  # noqa: E402
from dkmeans.plot import principal_axes  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def make_points(n_features: int, n: int = 900, k: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, n_features))
    # unequal spreads per feature so that the principal axes are well separated
    return centres[rng.integers(k, size=n)] + rng.normal(size=(n, n_features)) * np.linspace(
        1, 0.2, n_features
    )


def stars(ax) -> np.ndarray:
    (collection,) = [c for c in ax.collections if c.get_label() == "centres"]
    return np.asarray(collection.get_offsets())


def drawn_points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if c.get_label() != "centres")


def test_two_features_stars_at_the_centres():
    X = make_points(2)
    km = dkmeans.KMeans(n_clusters=3, random_state=0).fit(X)
    ax = dkmeans.plot_clusters(X, km)
    np.testing.assert_allclose(stars(ax), km.cluster_centers_)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("feature 0", "feature 1")
    assert drawn_points(ax) == len(X)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["cluster 0", "cluster 1", "cluster 2", "centres"]


def test_points_are_coloured_by_their_label():
    X = make_points(2)
    km = dkmeans.KMeans(n_clusters=3, random_state=0).fit(X)
    ax = dkmeans.plot_clusters(X, km)
    for k in range(3):
        (collection,) = [c for c in ax.collections if c.get_label() == f"cluster {k}"]
        np.testing.assert_allclose(
            np.sort(collection.get_offsets(), axis=0), np.sort(X[km.labels_ == k], axis=0)
        )


def test_sample_size_caps_the_points_drawn_and_uses_given_axes():
    X = make_points(2, n=5000)
    km = dkmeans.KMeans(n_clusters=3, random_state=0).fit(X)
    _, ax = plt.subplots()
    assert dkmeans.plot_clusters(X, km, ax=ax, sample_size=700) is ax
    assert drawn_points(ax) == 700


def test_more_features_projected_on_principal_components():
    X = make_points(5)
    km = dkmeans.KMeans(n_clusters=3, random_state=0).fit(X)
    ax = dkmeans.plot_clusters(da.from_array(X, chunks=(250, 5)), km)
    pca = PCA(n_components=2).fit(X)
    expected = pca.transform(km.cluster_centers_)
    got = stars(ax)
    assert got.shape == (3, 2)
    # principal axes are defined up to sign
    signs = np.sign(np.sum(got * expected, axis=0))
    np.testing.assert_allclose(got, expected * signs, atol=1e-8)
    ratios = pca.explained_variance_ratio_
    assert ax.get_xlabel() == f"principal component 1 ({ratios[0]:.1%} of variance)"
    assert ax.get_ylabel() == f"principal component 2 ({ratios[1]:.1%} of variance)"


def test_projection_reads_every_block_of_x_once():
    data = make_points(4, n=2000)
    km = dkmeans.KMeans(n_clusters=3, random_state=0).fit(data)
    loads = []

    def load(block, block_info=None):
        loads.append(block_info[0]["chunk-location"])
        return block

    X = da.from_array(data, chunks=(300, 4)).map_blocks(load, dtype=data.dtype)
    dkmeans.plot_clusters(X, km, sample_size=500)
    assert sorted(loads) == [(i, 0) for i in range(X.numblocks[0])]


@pytest.mark.parametrize("chunks", [(1000, 6), (333, 6), (250, 3)])
def test_principal_axes_match_scikit_learn(chunks):
    X = make_points(6, n=1000) + 1e4  # far from the origin: the shift must prevent cancellation
    axes = principal_axes(da.from_array(X, chunks=chunks), 3, shift=X[:5].mean(axis=0))
    pca = PCA(n_components=3).fit(X)
    np.testing.assert_allclose(axes.mean, X.mean(axis=0))
    np.testing.assert_allclose(
        axes.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-6
    )
    signs = np.sign(np.sum(axes.components * pca.components_, axis=1))[:, None]
    np.testing.assert_allclose(axes.components, pca.components_ * signs, atol=1e-6)
    largest = np.abs(axes.components).argmax(axis=1)
    assert (axes.components[np.arange(3), largest] > 0).all()


def test_principal_axes_of_constant_data():
    axes = principal_axes(da.ones((50, 3)), 2)
    np.testing.assert_array_equal(axes.explained_variance_ratio, [0, 0])
    np.testing.assert_allclose(axes.project(np.ones((2, 3))), 0)


def test_one_feature_is_a_strip_plot():
    X = make_points(1)
    km = dkmeans.KMeans(n_clusters=3, random_state=0).fit(X)
    ax = dkmeans.plot_clusters(X, km)
    np.testing.assert_allclose(stars(ax), np.column_stack([km.cluster_centers_[:, 0], range(3)]))
    assert ax.get_ylabel() == "cluster"
    for k in range(3):
        (collection,) = [c for c in ax.collections if c.get_label() == f"cluster {k}"]
        offsets = collection.get_offsets()
        assert np.all(np.abs(offsets[:, 1] - k) <= 0.3)


def test_zarr_path_input(tmp_path):
    from dkmeans.blobs import make_blobs

    store = str(tmp_path / "blobs.zarr")
    make_blobs(store, 3000, 3, 4, chunk_rows=500, seed=1)
    km = dkmeans.KMeans(n_clusters=4, random_state=0).fit(store)
    ax = dkmeans.plot_clusters(store, km, sample_size=1000)
    assert stars(ax).shape == (4, 2)
    assert drawn_points(ax) == 1000
    assert ax.get_xlabel().startswith("principal component 1")


def test_many_clusters_list_only_the_centres():
    X = make_points(2, n=2000, k=12)
    km = dkmeans.KMeans(n_clusters=12, random_state=0).fit(X)
    ax = dkmeans.plot_clusters(X, km)
    assert len(stars(ax)) == 12
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["centres"]


def test_feature_mismatch_is_an_error():
    km = dkmeans.KMeans(n_clusters=2, random_state=0).fit(make_points(3))
    with pytest.raises(ValueError, match="X has 2 features but the centres have 3"):
        dkmeans.plot_clusters(make_points(2), km)
    assert not plt.get_fignums(), "no empty figure is left behind"


def test_elbow_marks_the_chosen_k():
    inertias = {1: 100.0, 2: 40.0, 3: 12.0, 4: 10.0, 5: 9.0}
    ax = dkmeans.plot_elbow(inertias, chosen_k=3)
    curve, marked = ax.get_lines()
    np.testing.assert_array_equal(curve.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(curve.get_ydata(), [100, 40, 12, 10, 9])
    np.testing.assert_array_equal(marked.get_xdata(), [3])
    np.testing.assert_array_equal(marked.get_ydata(), [12.0])
    assert "chosen k = 3" in [text.get_text() for text in ax.get_legend().get_texts()]
    assert ax.get_xlabel() == "number of clusters k"
    assert list(ax.get_xticks()) == [1, 2, 3, 4, 5]


def test_elbow_without_choice_and_from_dkmeans_elbow():
    X = make_points(2)
    inertias = dkmeans.elbow(X, range(1, 5), random_state=0)
    ax = dkmeans.plot_elbow(inertias)
    (curve,) = ax.get_lines()
    np.testing.assert_allclose(curve.get_ydata(), [inertias[k] for k in range(1, 5)])
    assert ax.get_legend() is None


def test_elbow_bad_input():
    with pytest.raises(ValueError, match="chosen_k=7 is not among"):
        dkmeans.plot_elbow({1: 3.0, 2: 1.0}, chosen_k=7)
    with pytest.raises(ValueError, match="empty"):
        dkmeans.plot_elbow({})


@pytest.mark.parametrize("draw", ["clusters", "elbow"])
def test_missing_matplotlib_names_the_extra(monkeypatch, draw):
    X = make_points(2, n=50)
    km = dkmeans.KMeans(n_clusters=2, random_state=0).fit(X)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'dkmeans\[plot\]'"):
        if draw == "clusters":
            dkmeans.plot_clusters(X, km)
        else:
            dkmeans.plot_elbow({1: 2.0})
