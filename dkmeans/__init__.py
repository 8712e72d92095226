"""dkmeans: k-means clustering for arrays of any size, on Dask."""

from .estimator import KMeans

__version__ = "0.1.0"

__all__ = ["KMeans", "__version__"]
