"""dkmeans: k-means clustering for arrays of any size, on Dask."""

from .connect import connect
from .elbow import elbow
from .estimator import KMeans
from .exceptions import InvalidParameterError
from .metrics import silhouette_score
from .minibatch_kmeans import MiniBatchKMeans
from .placement import persist_in_runs
from .plot import plot_clusters, plot_elbow

__version__ = "0.1.0"

__all__ = [
    "InvalidParameterError",
    "KMeans",
    "MiniBatchKMeans",
    "__version__",
    "connect",
    "elbow",
    "persist_in_runs",
    "plot_clusters",
    "plot_elbow",
    "silhouette_score",
]
