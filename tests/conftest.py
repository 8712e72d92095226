import dask
import matplotlib
import numpy as np
import pytest

from dkmeans import engine

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """3,000 points around 5 well-separated centres in 4 dimensions (float64)."""
    rng = np.random.default_rng(42)
    centers = rng.uniform(-10, 10, size=(5, 4))
    labels = rng.integers(5, size=3000)
    return centers[labels] + rng.normal(size=(3000, 4)), centers


@pytest.fixture(scope="session")
def overlapping() -> np.ndarray:
    """2,000 points in 3 overlapping clusters: Lloyd needs many iterations."""
    rng = np.random.default_rng(7)
    labels = rng.integers(3, size=2000)
    return rng.normal(size=(2000, 3)) * 1.5 + labels[:, None] * np.array([2.0, 1.0, 0.0])


@pytest.fixture(params=engine.available())
def implementation(request):
    """Run a test on every engine (:mod:`dkmeans.engine`): numba (when installed), NumPy."""
    with dask.config.set({engine.CONFIG_KEY: request.param}):
        yield request.param


@pytest.fixture(scope="module")
def kmeans_parallel_on_small_data():
    """Seed ``"k-means||"`` and ``"k-means++"`` as on big data, for a module of tests of
    those initialisers on a few thousand rows (``dkmeans.seeding.SMALL_DATA_VALUES``:
    small data is otherwise seeded by k-means++ on all its rows). Module-scoped, so that
    the module's own fixtures fit with it too."""
    from dkmeans import seeding

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(seeding, "SMALL_DATA_VALUES", 0)
        yield
