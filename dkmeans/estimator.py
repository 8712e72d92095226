"""The scikit-learn estimator: validate, dispatch to the algorithms, keep attributes."""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, Literal, NamedTuple

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .checkpoint import Checkpoint
from .cosine import METRICS, Metric, cosine_distances, inertia_per_squared_distance, unit_centers
from .exceptions import InvalidParameterError
from .frame import (
    SAMPLE_ROWS,
    centers_in_frame,
    centers_in_user_frame,
    check_values,
    choose_shift,
    computing_dtype,
)
from .inputs import Input, make_source, usable_rows
from .io import (
    BFLOAT16,
    check_data,
    check_sample_weight,
    is_lazy_input,
    numpy_row_chunks,
    to_dask_array,
)
from .kernels import center_distances, nearest_centers, pass_statistics, ranked_centers
from .lloyd import IterationReport, LloydResult, lloyd
from .resources import limit_blas
from .seeding import INIT_TOL, SEEDING_ROWS_PER_CENTRE, initial_centers
from .sources import Source, prepared_kernel

Init = Literal["k-means||", "k-means++", "random"]
#: ``init(X, n_clusters, random_state=...)`` returning (n_clusters, n_features) centres.
InitCallable = Callable[..., Any]
#: The floating dtypes NumPy input keeps (anything else becomes float64).
FLOAT_DTYPES = [np.float64, np.float32, np.float16]
#: Runs per k when ``n_init="auto"``: scikit-learn's numbers.
AUTO_RUNS_RANDOM = 10


def _interval(low: float, high: float | None, closed_low: bool = True) -> str:
    left = "[" if closed_low else "("
    return f"in the range {left}{low}, {'inf' if high is None else high}]"


def _check_number(
    name: str,
    value: Any,
    kind: type,
    low: float,
    closed_low: bool = True,
    *,
    or_str: str = "",
    or_none: str = "",
    owner: str = "KMeans",
) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is a number of ``kind`` from
    ``low`` up (or the one string ``or_str``; or None where ``or_none`` says what None
    means); the message names the estimator ``owner``."""
    if (or_str and isinstance(value, str) and value == or_str) or (or_none and value is None):
        return
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok_type = (
        integral if kind is int else isinstance(value, numbers.Real) and not isinstance(value, bool)
    )
    ok_range = ok_type and (value >= low if closed_low else value > low)
    if not ok_range:
        what = "an int" if kind is int else "a float"
        alternative = f"a str among {{{or_str!r}}} or " if or_str else ""
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be {alternative}{what} "
            f"{_interval(low, None, closed_low)}"
            f"{f' or None ({or_none})' if or_none else ''}. Got {value!r} instead."
        )


class CenterModel(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """What :class:`KMeans` and :class:`~dkmeans.MiniBatchKMeans` share: the validation of
    their common parameters and of X, the initial centres given by the user, and
    everything done with fitted centres (``predict``, ``transform``, ``score``; labels
    follow the container rule: NumPy in, NumPy out, else lazy Dask).

    A subclass sets ``cluster_centers_``, ``n_features_in_`` (through :meth:`_check_X`)
    and ``_shift`` (the frame of its fit) when it fits.
    """

    #: Runs when ``n_init="auto"`` and the start is random (scikit-learn's numbers).
    _auto_runs_random = AUTO_RUNS_RANDOM

    # validation -------------------------------------------------------------------

    def _validate_shared_params(self) -> None:
        """Validate the parameters every centre model has, before any work."""
        owner = type(self).__name__
        _check_number("n_clusters", self.n_clusters, int, 1, owner=owner)
        _check_number("n_init", self.n_init, int, 1, or_str="auto", owner=owner)
        _check_number("max_iter", self.max_iter, int, 1, owner=owner)
        _check_number("tol", self.tol, float, 0, owner=owner)
        _check_number(
            "oversampling_factor", self.oversampling_factor, float, 0, closed_low=False, owner=owner
        )
        _check_number("init_rounds", self.init_rounds, int, 1, owner=owner)
        _check_number("init_tol", self.init_tol, float, 0, owner=owner)
        names = ("k-means||", "k-means++", "random")
        if not (
            (isinstance(self.init, str) and self.init in names)
            or callable(self.init)
            or (hasattr(self.init, "__array__") and not isinstance(self.init, str))
            or isinstance(self.init, (list, tuple))
        ):
            raise InvalidParameterError(
                f"The 'init' parameter of {owner} must be a str among "
                "{'k-means||', 'k-means++', 'random'}, a callable or an array-like of shape "
                f"(n_clusters, n_features). Got {self.init!r} instead."
            )
        if not (
            self.random_state is None
            or isinstance(
                self.random_state, (numbers.Integral, np.random.RandomState, np.random.Generator)
            )
        ) or isinstance(self.random_state, bool):
            raise InvalidParameterError(
                f"The 'random_state' parameter of {owner} must be an int, a numpy Generator or "
                f"RandomState, or None. Got {self.random_state!r} instead."
            )
        if not (self.persist == "auto" or isinstance(self.persist, (bool, np.bool_))):
            raise InvalidParameterError(
                f"The 'persist' parameter of {owner} must be 'auto', True or False. "
                f"Got {self.persist!r} instead."
            )
        if not isinstance(self.verbose, (bool, numbers.Integral)):
            raise InvalidParameterError(
                f"The 'verbose' parameter of {owner} must be a bool. Got {self.verbose!r} instead."
            )
        if not (isinstance(self.metric, str) and self.metric in METRICS):
            raise InvalidParameterError(
                f"The 'metric' parameter of {owner} must be a str among "
                "{'euclidean', 'cosine'}. "
                f"Got {self.metric!r} instead."
            )

    def _check_X(self, X: Any, *, reset: bool, sample_weight: Any = None) -> Input:
        """X (and its weights) validated once: NumPy stays NumPy, anything else is lazy."""
        if is_lazy_input(X):
            lazy = check_data(to_dask_array(X))
            if reset:
                self.n_features_in_ = lazy.shape[1]
            elif lazy.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {lazy.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            array, chunks = None, lazy.chunks[0]
        else:
            if getattr(getattr(X, "dtype", None), "name", None) == "bfloat16":
                raise TypeError(BFLOAT16)
            array = validate_data(
                self, X, accept_sparse=False, dtype=FLOAT_DTYPES, order="C", reset=reset
            )
            lazy, chunks = None, numpy_row_chunks(len(array), array.shape[1] * array.itemsize)
            if array.dtype == np.float64:
                # validate_data refused NaN and infinity; float32 and float16 cannot
                # overflow here
                check_values(array)
        weights = check_sample_weight(sample_weight, len(array if lazy is None else lazy), chunks)
        return Input(array, lazy, chunks, weights)

    def _check_init(self, n_features: int) -> np.ndarray | None:
        """The explicit initial centres as float64 (unit vectors for the cosine metric),
        or None for a method or a callable."""
        if isinstance(self.init, str) or callable(self.init):
            return None
        return self._in_metric(_checked_centers(self.init, self.n_clusters, n_features))

    def _in_metric(self, centers: np.ndarray) -> np.ndarray:
        """Centres given by the user as the metric needs them: unit vectors for cosine."""
        if self.metric != "cosine":
            return centers
        try:
            return unit_centers(centers)
        except ValueError as error:
            raise InvalidParameterError(f"The initial {error}") from None

    def _n_runs(self) -> int:
        """Runs per k: ``n_init``, "auto" resolved as scikit-learn resolves it; explicit
        centres make one run (with scikit-learn's warning if more were asked for)."""
        by_name = isinstance(self.init, str)
        if self.n_init == "auto":
            random_start = (by_name and self.init == "random") or callable(self.init)
            return self._auto_runs_random if random_start else 1
        if not by_name and not callable(self.init) and self.n_init != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={self.n_init}.",
                RuntimeWarning,
                stacklevel=4,
            )
            return 1
        return self.n_init

    def _called_init(self, X: np.ndarray | da.Array, k: int, seed: int) -> np.ndarray:
        """The centres a callable ``init`` returns for one run, checked, as float64."""
        centers = self.init(X, k, random_state=np.random.RandomState(seed))
        return self._in_metric(_checked_centers(centers, k, X.shape[1]))

    @property
    def _n_features_out(self) -> int:
        """Columns of ``transform``'s output, for ``get_feature_names_out``."""
        return self.cluster_centers_.shape[0]

    def _seeds(self, n_runs: int) -> np.ndarray:
        if isinstance(self.random_state, np.random.Generator):
            return self.random_state.integers(np.iinfo(np.int32).max, size=n_runs)
        return check_random_state(self.random_state).randint(np.iinfo(np.int32).max, size=n_runs)

    def _warn_if_clusters_missing(self, counts: np.ndarray) -> None:
        """scikit-learn's warning when fewer clusters than ``n_clusters`` have weight."""
        distinct = int(np.count_nonzero(counts))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than "
                f"n_clusters ({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=4,
            )

    # prediction -------------------------------------------------------------------

    def _shift_for(self, dtype: np.dtype) -> np.ndarray | None:
        """The frame that distances to the fitted centres are computed in: the fit's, or
        one chosen from the centres themselves when they were set by hand; none for the
        cosine metric (a shift would change the rows' directions)."""
        if self.metric == "cosine":
            return None
        shift = (
            self._shift if hasattr(self, "_shift") else choose_shift(self.cluster_centers_, dtype)
        )
        return None if shift is None else shift.astype(dtype)

    def _centers_in_frame(self, shift: np.ndarray | None) -> np.ndarray:
        """The fitted centres as the kernels compare rows with them (:func:`_compared`)."""
        return _compared(self.cluster_centers_, shift, self.metric == "cosine")

    def _map_rows(
        self, kernel: Callable[..., np.ndarray], X: Input, **map_kwargs: Any
    ) -> np.ndarray | da.Array:
        """``kernel(rows, centres)`` over the rows, in the fit's frame: NumPy for NumPy
        input (block by block on threads); else a lazy Dask array whose blocks are
        checked as they are read. For the cosine metric the kernel sees unit rows."""
        shift, unit = self._shift_for(X.dtype), self.metric == "cosine"
        centers = self._centers_in_frame(shift)
        if X.array is None:
            return X.lazy.map_blocks(_in_frame, kernel, centers, shift, unit, **map_kwargs)
        source = make_source(X, shift=shift, unit=unit)
        return np.concatenate(source.map_blocks(_rows_kernel, kernel, centers))

    def _labels(self, X: Input) -> np.ndarray | da.Array:
        return self._map_rows(
            _nearest_labels, X, drop_axis=1, dtype=np.int32, meta=np.empty(0, np.int32)
        )

    def predict(self, X: Any, sample_weight: Any = None) -> np.ndarray | da.Array:
        """Index of the nearest centre of every sample (NumPy in, NumPy out; else lazy Dask)."""
        check_is_fitted(self)
        return self._labels(self._check_X(X, reset=False))

    def transform(self, X: Any) -> np.ndarray | da.Array:
        """Distance of every sample to every centre, shape (n_samples, n_clusters):
        Euclidean, or ``1 - cos`` for the cosine metric."""
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        kernel = cosine_distances if self.metric == "cosine" else center_distances
        return self._map_rows(
            kernel, X, chunks=(X.chunks, (self.n_clusters,)), dtype=computing_dtype(X.dtype)
        )

    def nearest_centers(
        self, X: Any, n_nearest: int = 1
    ) -> tuple[np.ndarray, np.ndarray] | tuple[da.Array, da.Array]:
        """The ``n_nearest`` nearest centres of every sample, nearest first.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array, xarray.DataArray or str
            Samples of shape (n_samples, n_features), as for :meth:`predict`.
        n_nearest : int, default=1
            Centres per sample, from 1 to ``n_clusters``.

        Returns
        -------
        indices : ndarray or dask.array.Array of shape (n_samples, n_nearest), int32
            The centres, nearest first; ``indices[:, 0]`` is :meth:`predict`'s label.
            Centres at equal distance come lowest index first (two within float
            rounding of a tie may come in either order).
        distances : ndarray or dask.array.Array of shape (n_samples, n_nearest), float32
            The distances to them, as :meth:`transform` measures (Euclidean, or
            ``1 - cos`` for the cosine metric).

        NumPy input gives NumPy arrays; any other input two lazy Dask arrays that share
        one pass over X (compute or store them together).
        """
        check_is_fitted(self)
        if not (
            isinstance(n_nearest, numbers.Integral)
            and not isinstance(n_nearest, bool)
            and 1 <= n_nearest <= self.n_clusters
        ):
            raise InvalidParameterError(
                f"n_nearest must be an int from 1 to n_clusters={self.n_clusters}, "
                f"got {n_nearest!r}"
            )
        X = self._check_X(X, reset=False)
        packed = self._map_rows(
            partial(_ranked_packed, n_nearest=int(n_nearest)),
            X,
            chunks=(X.chunks, (2 * n_nearest,)),
            dtype=np.float64,
        )
        squared = packed[:, n_nearest:]
        # unit rows and centres: 1 - cos = ||x - c||² / 2
        distances = squared / 2 if self.metric == "cosine" else np.sqrt(squared)
        return packed[:, :n_nearest].astype(np.int32), distances.astype(np.float32)

    def fit_predict(
        self, X: Any, y: Any = None, sample_weight: Any = None
    ) -> np.ndarray | da.Array:
        """Fit and return ``labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def fit_transform(
        self, X: Any, y: Any = None, sample_weight: Any = None
    ) -> np.ndarray | da.Array:
        """Fit and return the distances of X to the centres."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the inertia of X under the fitted centres."""
        check_is_fitted(self)
        X = self._check_X(X, reset=False, sample_weight=sample_weight)
        shift = self._shift_for(X.dtype)
        centers = self._centers_in_frame(shift)
        source = make_source(X, shift=shift, unit=self.metric == "cosine")
        stats = source.map_reduce(
            pass_statistics, centers, np.array([0, len(centers)]), far_capacity=0
        )
        return -float(stats.cluster_inertia.sum()) * inertia_per_squared_distance(self.metric)


class KMeans(CenterModel):
    """K-means clustering of arrays of any size, on Dask.

    Each Lloyd iteration is one pass over the row blocks of X: every block yields
    per-cluster sums, counts and inertia, and these are added up in a tree. X is
    never loaded whole unless it fits comfortably in memory (``persist``).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {"k-means||", "k-means++", "random"}, callable or array, default="k-means||"
        How the initial centres are chosen. ``"k-means||"`` is the scalable
        k-means++ of Bahmani et al. (``init_rounds + 2`` passes over X; with many rows
        per centre, one pass that gathers a uniform sample of ``init_rows_per_center``
        rows per centre, on which it runs in memory);
        ``"k-means++"`` is scikit-learn's greedy k-means++ (``n_clusters + 1`` passes:
        fine in memory, slow when streaming); ``"random"`` picks ``n_clusters`` rows at
        random (one pass). Data of at most 2**20 values (rows times features) is seeded
        for ``"k-means||"`` and ``"k-means++"`` alike by greedy weighted k-means++ on all
        its rows after one pass that gathers them (``dkmeans.seeding.SMALL_DATA_VALUES``).
        An array of shape (n_clusters, n_features) gives the
        centres themselves. A callable is called as in scikit-learn,
        ``init(X, n_clusters, random_state=rs)``, once per run, and returns an
        array-like of shape (n_clusters, n_features): ``X`` is the validated NumPy
        array (float16, float32 or float64) for in-memory input and the validated, lazy Dask
        array (floating, one chunk across features) for any other input, never
        loaded for the callable (it computes what it needs, e.g.
        ``X[:n_clusters].compute()``); ``rs`` is a ``numpy.random.RandomState``
        seeded for the run from ``random_state``. Unlike scikit-learn, which calls it
        on X minus its mean, ``X`` is the user's data as given and the centres are
        read in the same frame. A callable cannot be used with ``checkpoint``.
    n_init : "auto" or int, default=1
        Independent runs; the one with the lowest inertia is kept. All runs share
        their passes over X. ``"auto"`` means what it means in scikit-learn: one run
        for ``"k-means++"``, ``"k-means||"`` (a k-means++ too) and explicit centres,
        ten for ``"random"`` and a callable.
    max_iter : int, default=300
        Maximum Lloyd iterations of a run.
    tol : float, default=1e-4
        Convergence tolerance relative to the mean per-feature variance of X, as in
        scikit-learn.
    oversampling_factor : float, default=2.0
        k-means||: expected candidates per round, in multiples of ``n_clusters``.
    init_rounds : int, default=5
        k-means||: sampling rounds, at most.
    init_tol : float, default=0.1
        k-means||: a run draws no further round once its last round lowered the seeding
        potential (the inertia of the candidates) by less than this fraction; 0 draws
        all ``init_rounds``. In many dimensions the potential soon falls by only a few
        percent a round (structureless rows in 768 dimensions: 14%, then 2.6%) and the
        later rounds cost time for no better centres; well-separated clusters in few
        dimensions keep gaining and draw more rounds.
    init_rows_per_center : int or None, default=128
        k-means||: run on a uniform sample of about this many rows per centre, gathered
        in one pass, where that sample is at most half the rows and 256 MiB; else, and
        with None, on all rows (``init_rounds + 2`` passes). Where k is large against
        the rows, fewer rows per centre (down to 32), so that the rounds on the sample
        cost about two Lloyd passes over X (``dkmeans.seeding.sample_fractions``). The
        sample makes seeding many times cheaper at large k; it may miss rare clusters
        (0.65% more final inertia on 200 clusters of sizes ∝ i^-1.5): None for the most
        careful seeding.
    random_state : int, numpy Generator or RandomState, default=None
        Seeds all randomness. The same seed, chunking and kind of pass (see
        ``persist``) give bitwise-identical results on any scheduler.
    persist : "auto" or bool, default="auto"
        "auto" keeps X in (cluster) memory when it takes under half of the memory
        available, otherwise X is streamed from its source at every pass. This also
        picks the kind of pass: X kept in this process's memory (no distributed client;
        NumPy input always) keeps distance bounds per row between passes, which may
        round a row within the GEMM's rounding of a tie differently from the full
        passes of streamed X or of a cluster, and the fits may then differ slightly
        (README: which results are bitwise identical). ``False`` gives a cluster's
        results on one machine for a Dask array or a store.
    verbose : bool, default=False
        Print one line per iteration (iteration, inertia, centre shift, seconds).
    checkpoint : str or path, default=None
        File where the fit's state (seeds, initial centres, Lloyd state) is saved
        atomically after every Lloyd pass. A later ``fit`` with the same checkpoint,
        parameters and data resumes from it and ends with the same result as an
        uninterrupted fit; one with other parameters or data is refused. A fit
        stopped during initialisation redoes the initialisation's passes.
    metric : {"euclidean", "cosine"}, default="euclidean"
        How rows are compared. ``"cosine"`` is spherical k-means: rows are compared by
        direction (each is divided by its norm as it is read; X is not copied), a
        centre is the normalised weighted mean of its rows, ``inertia_`` is
        ``Σ w (1 - cos(x, c))``, ``predict`` picks the most similar centre and
        ``transform`` gives cosine distances ``1 - cos``. A row of zeros has no
        direction: it raises a ``ValueError`` naming it. ``tol`` is then relative to
        the mean per-feature variance of the normalised rows.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Centres, in the floating dtype of X, float32 for float16 X (unit vectors for
        ``metric="cosine"``).
    labels_ : ndarray or dask.array.Array of shape (n_samples,)
        Labels of the training data: NumPy for NumPy input (kept by Lloyd's final pass,
        which measures ``cluster_centers_`` as stored: what ``predict(X)`` gives), a
        lazy Dask array otherwise.
    inertia_ : float
        Sum over samples of (weight times) the squared distance to the nearest centre of
        ``cluster_centers_``; for ``metric="cosine"``, of the cosine distance ``1 - cos``.
    n_iter_ : int
        Lloyd iterations run by the best run.
    n_features_in_ : int
        Number of features seen during fit.

    Raises
    ------
    InvalidParameterError
        From ``fit``, before any work, for a parameter of the wrong type or out of
        range; it is both a ``ValueError`` and a ``TypeError``, as scikit-learn's.

    Notes
    -----
    ``get_feature_names_out`` gives ``["kmeans0", "kmeans1", ...]`` (the columns of
    ``transform``), so that ``set_output(transform="pandas")`` works, alone and in a
    ``Pipeline``; a pandas or polars output is in memory, so Dask input is computed
    there. Sparse input is refused with a ``TypeError``. ``transform`` keeps the
    floating dtype of its input: float32 rows give float32 distances even after a
    float64 fit, where scikit-learn upcasts to float64 (the values agree to float32
    rounding, at half the memory of the (n_samples, n_clusters) result). float16 X stays
    float16 (in memory and in its store): the kernels widen it to float32 one cached
    sub-block of rows at a time; its centres and ``transform`` are float32. bfloat16 is
    refused with a ``TypeError`` (NumPy and Zarr 3 have no bfloat16).

    See Also
    --------
    sklearn.cluster.KMeans : in-memory k-means with the same semantics.

    Examples
    --------
    >>> import numpy as np
    >>> from dkmeans import KMeans
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
    >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
    >>> sorted(km.cluster_centers_[:, 0].tolist())
    [1.0, 10.0]
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Init | np.ndarray | InitCallable = "k-means||",
        n_init: int | Literal["auto"] = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        oversampling_factor: float = 2.0,
        init_rounds: int = 5,
        init_tol: float = INIT_TOL,
        init_rows_per_center: int | None = SEEDING_ROWS_PER_CENTRE,
        random_state: int | np.random.Generator | np.random.RandomState | None = None,
        persist: Literal["auto"] | bool = "auto",
        verbose: bool = False,
        checkpoint: str | os.PathLike | None = None,
        metric: Metric = "euclidean",
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.oversampling_factor = oversampling_factor
        self.init_rounds = init_rounds
        self.init_tol = init_tol
        self.init_rows_per_center = init_rows_per_center
        self.random_state = random_state
        self.persist = persist
        self.verbose = verbose
        self.checkpoint = checkpoint
        self.metric = metric

    # validation -------------------------------------------------------------------

    def _validate_params(self) -> None:
        self._validate_shared_params()
        _check_number(
            "init_rows_per_center", self.init_rows_per_center, int, 1, or_none="seed from all rows"
        )
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise InvalidParameterError(
                "The 'checkpoint' parameter of KMeans must be a path or None. "
                f"Got {self.checkpoint!r} instead."
            )
        if self.checkpoint is not None and callable(self.init):
            raise InvalidParameterError(
                "A checkpoint needs 'init' to be a str or an array: a callable init cannot "
                "be recognised when the fit resumes."
            )

    # fitting ----------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array, xarray.DataArray or str
            Training data of shape (n_samples, n_features); a string is a Zarr path
            or fsspec URL.
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of every sample.

        Returns
        -------
        self : KMeans
        """
        fits = fit_runs(self, X, [self.n_clusters], sample_weight, keep_labels=True)
        self._store_result(fits.best[self.n_clusters], fits.X)
        return self

    def _initial_centers(
        self,
        source: Source,
        init: np.ndarray | None,
        runs: list[tuple[int, int]],
        X: np.ndarray | da.Array,
    ) -> list[np.ndarray]:
        """Initial centres of every run ``(k, seed)``, in the source's frame.

        ``X`` is what a callable ``init`` is given: the validated NumPy array of in-memory
        input, else the validated Dask array.
        """
        if init is not None:
            return [centers_in_frame(init, source.shift)]
        if callable(self.init):
            return [
                centers_in_frame(self._called_init(X, k, seed), source.shift) for k, seed in runs
            ]
        return initial_centers(
            source,
            self.init,
            [k for k, _ in runs],
            np.array([seed for _, seed in runs]),
            oversampling_factor=self.oversampling_factor,
            init_rounds=self.init_rounds,
            init_tol=self.init_tol,
            rows_per_center=self.init_rows_per_center,
            metric=self.metric,
        )

    def _open_checkpoint(self, X: Input, k_values: list[int]) -> Checkpoint | None:
        """The fit's checkpoint, identified by its parameters and its data (by name for
        lazy data, by contents for NumPy data)."""
        if self.checkpoint is None:
            return None
        params = {
            name: value.tolist() if isinstance(value, np.ndarray) else value
            for name, value in self.get_params().items()
            if name not in ("verbose", "checkpoint", "persist")
        }
        if not isinstance(params["random_state"], (int, type(None))):
            raise InvalidParameterError("checkpoint needs random_state to be an int (or None)")
        values = X.values
        first, last = dask.compute(values[:1], values[-1:])
        fingerprint = {
            "params": params,
            "k_values": list(k_values),
            "data_shape": list(X.shape),
            "data_dtype": str(X.dtype),
            "data_chunks": list(X.chunks),
            "data_name": X.lazy.name if X.array is None else tokenize(X.array),
            "data_rows": tokenize(first, last),
            "data_weights": None if X.weights is None else tokenize(X.weights),
        }
        return Checkpoint(self.checkpoint, fingerprint)

    def _report(self, report: IterationReport) -> None:
        print(
            f"run {report.run} iteration {report.iteration}: inertia {report.inertia:.6g}, "
            f"centre shift {report.center_shift:.3g}, {report.seconds:.3f} s",
            file=sys.stderr,
        )

    def _store_result(self, result: LloydResult, X: Input) -> None:
        self.cluster_centers_ = result.centers.astype(computing_dtype(X.dtype))
        self.inertia_ = result.inertia
        self.n_iter_ = result.n_iter
        # NumPy in: computed here on threads, even when a distributed client is active,
        # unless the final pass kept them (from these centres: what predict gives)
        self.labels_ = self._labels(X) if result.labels is None else result.labels
        self._warn_if_clusters_missing(result.counts)


def _checked_centers(centers: Any, k: int, n_features: int) -> np.ndarray:
    """Initial centres given by the user (or a callable) as float64 (k, d), or raise
    :class:`InvalidParameterError` naming what is wrong."""
    centers = np.asarray(centers, dtype=np.float64)
    if centers.shape != (k, n_features):
        # scikit-learn's wording, so that code matching its messages works with dkmeans
        mismatch = (
            f"the number of clusters {k}"
            if centers.ndim != 2 or len(centers) != k
            else f"the number of features of the data {n_features}"
        )
        raise InvalidParameterError(
            f"The shape of the initial centers {centers.shape} does not match {mismatch}: "
            f"expected ({k}, {n_features})."
        )
    if not np.isfinite(centers).all():
        raise InvalidParameterError("The initial centers contain NaN or infinity.")
    return centers


class Fits(NamedTuple):
    """What :func:`fit_runs` found."""

    X: Input  # the validated input
    best: dict[int, LloydResult]  # the best run of every k, centres in the user's frame


def fit_runs(
    params: KMeans,
    X: Any,
    k_values: list[int],
    sample_weight: Any = None,
    *,
    keep_labels: bool = False,
) -> Fits:
    """Fit every k of ``k_values`` (``n_init`` runs each, as ``params`` says) with shared
    passes over X; ``KMeans.fit`` fits one k, :func:`~dkmeans.elbow` many.

    Parameters
    ----------
    params : KMeans
        The estimator whose parameters to use (its ``n_clusters`` is ignored); it is
        validated, and ``n_features_in_`` set, as a fit does.
    X : any input of :meth:`KMeans.fit`
    k_values : list of int
    sample_weight : array-like of shape (n_samples,), optional
    keep_labels : bool
        Keep the labels of NumPy input from the final pass of Lloyd's algorithm, where
        it has one (``LloydResult.labels``, see :func:`~dkmeans.lloyd.lloyd`).

    Returns
    -------
    Fits
    """
    params._validate_params()
    X = params._check_X(X, reset=True, sample_weight=sample_weight)
    n_samples, n_features = X.shape
    for k in k_values:
        if n_samples < k:
            raise InvalidParameterError(f"n_samples={n_samples} should be >= n_clusters={k}.")
    init = params._check_init(n_features)
    n_init = params._n_runs()
    checkpoint = params._open_checkpoint(X, k_values)
    saved = None if checkpoint is None else checkpoint.load()
    cosine = params.metric == "cosine"
    source = make_source(X, persist=params.persist, unit=cosine)
    # unit rows have no frame: a shift would change their directions
    shift = None if cosine else choose_shift(usable_rows(source.head(SAMPLE_ROWS)), X.dtype)
    source.shift = shift
    params._shift = shift
    seeds, initial, resume = (params._seeds(n_init), None, None) if saved is None else saved
    # run i * n_init + j is (k_values[i], seeds[j]), in the order of the initial centres
    runs = [(k, int(seed)) for k in k_values for seed in seeds]
    with limit_blas():
        if initial is None:
            initial = params._initial_centers(source, init, runs, X.values)
        save = None if checkpoint is None else partial(checkpoint.save, seeds, initial)
        results = lloyd(
            source,
            initial,
            max_iter=params.max_iter,
            tol=params.tol,
            on_iteration=params._report if params.verbose else None,
            resume=resume,
            on_pass=save,
            metric=params.metric,
            stored=partial(_as_stored, shift=shift, dtype=computing_dtype(X.dtype), cosine=cosine),
            keep_labels=keep_labels and X.array is not None,
        )
    best: dict[int, LloydResult] = {}
    for (k, _), result in zip(runs, results, strict=True):
        # strictly lower inertia wins; ties keep the earlier run
        if k not in best or result.inertia < best[k].inertia:
            best[k] = replace(result, centers=centers_in_user_frame(result.centers, shift))
    return Fits(X, best)


def _as_stored(
    centers: np.ndarray, *, shift: np.ndarray | None, dtype: np.dtype, cosine: bool
) -> np.ndarray:
    """Centres found in the frame of ``shift`` as the fitted estimator compares rows with
    them: stored in ``dtype`` in the user's frame (``cluster_centers_``), then moved
    back to the frame (:meth:`KMeans._centers_in_frame`)."""
    return _compared(centers_in_user_frame(centers, shift).astype(dtype), shift, cosine)


def _compared(stored: np.ndarray, shift: np.ndarray | None, cosine: bool) -> np.ndarray:
    """Stored centres as the kernels compare rows with them (float64): in the frame of
    ``shift``, or scaled to unit norm for the cosine metric (centres stored in float32,
    or set by hand, are unit vectors only up to rounding)."""
    return unit_centers(stored) if cosine else centers_in_frame(stored, shift)


def _in_frame(
    block: np.ndarray,
    kernel: Callable[..., np.ndarray],
    centers: np.ndarray,
    shift: np.ndarray | None,
    unit: bool,
    block_info: dict | None = None,
) -> np.ndarray:
    """``kernel`` on one block of lazy data as a source runs it: in the frame of
    ``shift`` or on unit rows, the block's values checked as it is read."""
    where = block_info[0]
    run = prepared_kernel(_rows_kernel, shift, check=True, unit=unit)
    return run(
        block, None, where["array-location"][0][0], where["chunk-location"][0], kernel, centers
    )


def _rows_kernel(
    block: np.ndarray, weights: Any, row_offset: int, block_index: int, kernel, centers
) -> np.ndarray:
    """``kernel(block, centers)`` with a source's kernel signature."""
    return kernel(block, centers)


def _ranked_packed(block: np.ndarray, centers: np.ndarray, n_nearest: int) -> np.ndarray:
    """:func:`~dkmeans.kernels.ranked_centers` of a block as one float64 array (the
    indices, then the squared distances), so that both come from one lazy pass."""
    indices, squared = ranked_centers(block, centers, n_nearest)
    return np.concatenate([indices, squared], axis=1)


def _nearest_labels(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    labels, _ = nearest_centers(block, centers)
    return labels[:, 0].astype(np.int32)
