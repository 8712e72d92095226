"""The scikit-learn estimator of mini-batch k-means: validate, dispatch, keep attributes."""

from __future__ import annotations

import sys
from typing import Any, Literal

import numpy as np

from .cosine import Metric, inertia_per_squared_distance
from .estimator import CenterModel, Init, InitCallable, _check_number
from .exceptions import InvalidParameterError
from .frame import (
    SAMPLE_ROWS,
    centers_in_frame,
    centers_in_user_frame,
    choose_shift,
    computing_dtype,
)
from .inputs import Input, make_source, usable_rows
from .io import ZERO_WEIGHTS
from .kernels import pass_statistics
from .lloyd import stack_centers
from .minibatch import (
    EpochReport,
    MiniBatchResult,
    MiniBatchState,
    epoch,
    minibatch_kmeans,
)
from .resources import limit_blas
from .row_memory import labels_memory, labels_of_run
from .seeding import INIT_TOL, initial_centers, recluster, weighted_draws
from .sources import InMemorySource, Source

#: Runs when ``n_init="auto"`` and the start is random: scikit-learn's MiniBatchKMeans's.
AUTO_RUNS_RANDOM = 3


class MiniBatchKMeans(CenterModel):
    """Mini-batch k-means (Sculley 2010) of arrays of any size, streamed in one pass per
    epoch.

    X is read block by block in the order of a seeded shuffle (the blocks in a random
    order, the rows of every block permuted; a few blocks are read ahead while the
    client works), and cut into batches of ``batch_size`` rows. Every batch costs one
    GEMM (nearest centres, per-centre weighted sums) and moves every centre it gave
    rows to the weighted mean of all rows that centre has been given:
    ``c ← (n_c c + Σ w x) / (n_c + Σ w)`` (Sculley's per-centre learning rate, with
    scikit-learn's counts ``n_c``). Centres of low count are reassigned onto rows of the
    batch, and a fit stops early on scikit-learn's rules (``max_no_improvement``,
    ``tol``). So one epoch is one read of X, and memory is bounded by a few blocks, not
    by X. scikit-learn instead draws every batch at random from X in memory.

    One rule is dkmeans's own: after batches 1, 2, 4, ..., 1024 and then every 1,024
    batches, the centre whose removal costs that batch least is moved into the cluster of
    largest inertia, split in two by 2-means, if that lowers the inertia of both halves
    of the batch (the move of ELBG, Patanè and Russo 2001; :mod:`dkmeans.relocation`),
    and again while it does. From k random rows, scikit-learn's fits keep the start's
    mistakes (two centres in one cluster, one between two; its reassignment moves only
    centres of almost no count): on 200,000 rows of a mixture of 16 clusters, from ten
    such starts, they end at 2.3-4.0 times the optimal inertia, and dkmeans's within
    0.1% of it. ``reassignment_ratio=0`` turns the relocations off.

    A fit makes these passes over X: one that draws the ``init_size`` rows that the
    initial centres are chosen from (none for explicit centres, ``n_init=1`` and
    ``tol=0``), the epochs, and one for ``inertia_`` (``compute_labels``).

    Parameters
    ----------
    n_clusters : int, default=8
    init : {"k-means||", "k-means++", "random"}, callable or array, default="k-means||"
        How the initial centres are chosen from ``init_size`` rows drawn at random
        from X (weighted by ``sample_weight``, one pass): as in :class:`KMeans`, on
        those rows; a callable is called on them (in the user's frame, as NumPy); an
        array gives the centres themselves.
    max_iter : int, default=100
        Epochs (full reads of X) at most.
    batch_size : int, default=1024
        Rows per mini-batch (scikit-learn's default). A batch may span two blocks of X.
    verbose : bool, default=False
        Print one line per epoch (batches so far, smoothed batch inertia, seconds).
    compute_labels : bool, default=True
        After the fit, compute ``inertia_`` of X in one more pass and set ``labels_``
        (lazy for lazy X; of NumPy X, kept by that pass). Without, ``inertia_`` is the
        smoothed batch inertia times ``n_samples`` (as in scikit-learn) and there are no
        ``labels_``.
    random_state : int, numpy Generator or RandomState, default=None
        Seeds the initial sample, the initialisation, the order of the epochs and the
        reassignments. The same seed and chunking give bitwise-identical results on
        any scheduler (all updates happen on the client, in order).
    tol : float, default=0.0
        Stop when a batch moves the centres by at most ``tol`` times the mean feature
        variance of X (squared; the variance is measured on the initial sample).
        0 turns this off, as in scikit-learn.
    max_no_improvement : int or None, default=10
        Stop when the smoothed batch inertia has not improved for this many batches.
    init_size : int or None, default=None
        Rows the initial centres are chosen from: ``3 * batch_size`` by default (at
        least ``3 * n_clusters``, at most ``n_samples``).
    n_init : "auto" or int, default="auto"
        Initialisations tried, each on its own sample; the one with the lowest inertia
        on one more sample of ``init_size`` rows is kept. "auto": 3 for ``"random"``
        and a callable, else 1 (scikit-learn's).
    reassignment_ratio : float, default=0.01
        Centres whose count is below this fraction of the largest are moved onto rows
        of the batch (drawn with probability proportional to weight). 0 also turns off
        the relocations (above).
    shuffle : bool, default=True
        Read every epoch in a seeded random order (blocks, and rows within a block);
        False reads X in its order: then ``partial_fit`` over consecutive row slices
        of ``batch_size`` rows, from the same initial centres, equals one epoch of
        ``fit`` with ``max_no_improvement=None`` and ``tol=0``.
    oversampling_factor : float, default=2.0
        k-means|| on the initial sample: candidates per round, in multiples of k.
    init_rounds : int, default=5
        k-means|| on the initial sample: rounds, at most.
    init_tol : float, default=0.1
        k-means|| on the initial sample: no further round once one lowered the seeding
        potential by less than this fraction, as in :class:`KMeans`.
    persist : "auto" or bool, default="auto"
        As in :class:`KMeans`: keep X in (cluster) memory for the epochs when it
        takes under half the memory available; else every epoch reads its source.
    metric : {"euclidean", "cosine"}, default="euclidean"
        ``"cosine"``: spherical mini-batch k-means, as :class:`KMeans`'s: rows are seen
        divided by their norms, every updated centre is scaled back to unit norm, and
        ``inertia_`` is ``Σ w (1 - cos)``.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray or dask.array.Array of shape (n_samples,)
        With ``compute_labels``: NumPy for NumPy input, a lazy Dask array otherwise.
    inertia_ : float
    n_iter_ : int
        Epochs started.
    n_steps_ : int
        Batches processed.
    n_features_in_ : int

    Notes
    -----
    ``checkpoint`` is not offered: an epoch is one read of X, and ``partial_fit``
    lets a caller keep its own progress. ``partial_fit(X)`` processes X in order in
    batches of ``batch_size`` rows (scikit-learn makes one step of all of X); for up
    to ``batch_size`` rows the two agree, but for the relocations.

    See Also
    --------
    KMeans : Lloyd's algorithm, one pass of X per iteration.
    sklearn.cluster.MiniBatchKMeans : in memory, batches drawn at random.

    Examples
    --------
    >>> import numpy as np
    >>> from dkmeans import MiniBatchKMeans
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
    >>> mb = MiniBatchKMeans(n_clusters=2, batch_size=3, random_state=0).fit(X)
    >>> sorted(mb.cluster_centers_[:, 0].round().tolist())
    [1.0, 10.0]
    """

    _auto_runs_random = AUTO_RUNS_RANDOM

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Init | np.ndarray | InitCallable = "k-means||",
        max_iter: int = 100,
        batch_size: int = 1024,
        verbose: bool = False,
        compute_labels: bool = True,
        random_state: int | np.random.Generator | np.random.RandomState | None = None,
        tol: float = 0.0,
        max_no_improvement: int | None = 10,
        init_size: int | None = None,
        n_init: int | Literal["auto"] = "auto",
        reassignment_ratio: float = 0.01,
        shuffle: bool = True,
        oversampling_factor: float = 2.0,
        init_rounds: int = 5,
        init_tol: float = INIT_TOL,
        persist: Literal["auto"] | bool = "auto",
        metric: Metric = "euclidean",
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.verbose = verbose
        self.compute_labels = compute_labels
        self.random_state = random_state
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.n_init = n_init
        self.reassignment_ratio = reassignment_ratio
        self.shuffle = shuffle
        self.oversampling_factor = oversampling_factor
        self.init_rounds = init_rounds
        self.init_tol = init_tol
        self.persist = persist
        self.metric = metric

    # validation -------------------------------------------------------------------

    def _validate_params(self) -> None:
        self._validate_shared_params()
        owner = type(self).__name__
        _check_number("batch_size", self.batch_size, int, 1, owner=owner)
        _check_number("reassignment_ratio", self.reassignment_ratio, float, 0, owner=owner)
        if self.max_no_improvement is not None:
            _check_number("max_no_improvement", self.max_no_improvement, int, 0, owner=owner)
        if self.init_size is not None:
            _check_number("init_size", self.init_size, int, 1, owner=owner)
        for name in ("compute_labels", "shuffle"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InvalidParameterError(
                    f"The '{name}' parameter of {owner} must be a bool. "
                    f"Got {getattr(self, name)!r} instead."
                )

    def _sample_size(self, n_samples: int, batch_size: int) -> int:
        """scikit-learn's ``init_size``: ``3 * batch_size`` by default, at least
        ``3 * n_clusters`` when smaller than ``n_clusters``, at most ``n_samples``."""
        size = 3 * batch_size if self.init_size is None else self.init_size
        if size < self.n_clusters:
            size = 3 * self.n_clusters
        return min(size, n_samples)

    # fitting ----------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MiniBatchKMeans:
        """Compute the centres with mini-batches, in epochs over X.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array, xarray.DataArray or str
            Training data of shape (n_samples, n_features); a string is a Zarr path
            or fsspec URL.
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : MiniBatchKMeans
        """
        self._validate_params()
        X = self._check_X(X, reset=True, sample_weight=sample_weight)
        batch_size = min(self.batch_size, X.shape[0])
        with limit_blas():
            source, tol = self._start(X, batch_size, persist=self.persist)
            result = minibatch_kmeans(
                source,
                self._state,
                batch_size=batch_size,
                max_iter=self.max_iter,
                tol=tol,
                max_no_improvement=self.max_no_improvement,
                reassignment_ratio=self.reassignment_ratio,
                shuffle=self.shuffle,
                on_epoch=self._report if self.verbose else None,
            )
            if not self._state.counts.any():
                # lazy weights are known to be zero everywhere only once read
                raise ValueError(ZERO_WEIGHTS)
            self._store(source, X, result)
        return self

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MiniBatchKMeans:
        """Update the centres with the rows of X, in order, in batches of ``batch_size``.

        The first call chooses the initial centres from X (as ``fit`` does); every call
        keeps the centres' counts, so that a stream of calls continues one run.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array, xarray.DataArray or str
            One chunk of the data (lazy data is read once, block by block).
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : MiniBatchKMeans
        """
        first = not hasattr(self, "_state")
        if first:
            self._validate_params()
        X = self._check_X(X, reset=first, sample_weight=sample_weight)
        with limit_blas():
            if first:
                source, _ = self._start(X, self.batch_size, persist=False)
            else:
                source = make_source(X, shift=self._shift, unit=self._state.unit)
            epoch(
                source,
                self._state,
                batch_size=self.batch_size,
                reassignment_ratio=self.reassignment_ratio,
            )
            self._store(source, X, None)
        return self

    def _start(
        self, X: Input, batch_size: int, *, persist: Literal["auto"] | bool
    ) -> tuple[Source, float]:
        """The source of X in its frame and the absolute tolerance; the state at the
        initial centres becomes ``_state``."""
        n_samples, n_features = X.shape
        if n_samples < self.n_clusters:
            raise InvalidParameterError(
                f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}."
            )
        init = self._check_init(n_features)
        n_runs = self._n_runs()
        cosine = self.metric == "cosine"
        source = make_source(X, persist=persist, unit=cosine)
        # unit rows have no frame: a shift would change their directions
        shift = None if cosine else choose_shift(usable_rows(source.head(SAMPLE_ROWS)), X.dtype)
        source.shift = self._shift = shift
        # every run's sample, the validation sample, the batches' stream
        seeds = self._seeds(n_runs + 2)
        if init is not None and self.tol == 0:
            centers, tol = centers_in_frame(init, source.shift), 0.0
        else:
            centers, tol = self._initial_centers(source, init, seeds[:-1], batch_size, X)
        self._state = MiniBatchState.start(centers, int(seeds[-1]), unit=cosine)
        return source, tol

    def _initial_centers(
        self,
        source: Source,
        init: np.ndarray | None,
        seeds: np.ndarray,
        batch_size: int,
        X: Input,
    ) -> tuple[np.ndarray, float]:
        """The best run's initial centres (in the source's frame) and the absolute
        tolerance, from samples of ``init_size`` rows drawn in one pass: one per run
        (``seeds[:-1]``) and one on which the runs are compared (``seeds[-1]``)."""
        size = self._sample_size(X.shape[0], batch_size)
        *samples, validation = [sample.rows for sample in weighted_draws(source, size, seeds)]
        runs = []
        for rows, seed in zip(samples, seeds[:-1], strict=True):
            if init is not None:
                runs.append(centers_in_frame(init, source.shift))
            elif callable(self.init):
                user_rows = centers_in_user_frame(rows, source.shift)
                called = self._called_init(user_rows, self.n_clusters, int(seed))
                runs.append(centers_in_frame(called, source.shift))
            elif self.init == "k-means||":
                # the sample plays the candidates' part: reclustered in memory
                centers = recluster(
                    rows, np.ones(len(rows)), self.n_clusters, int(seed), self.metric
                )
                runs.append(centers)
            else:
                (centers,) = initial_centers(
                    InMemorySource.of_array(rows),
                    self.init,
                    [self.n_clusters],
                    [int(seed)],
                    oversampling_factor=self.oversampling_factor,
                    init_rounds=self.init_rounds,
                    init_tol=self.init_tol,
                    metric=self.metric,
                )
                runs.append(centers)
        stacked, bounds = stack_centers(runs)
        stats = pass_statistics(validation, None, 0, 0, stacked, bounds, far_capacity=0)
        inertia = np.add.reduceat(stats.cluster_inertia, bounds[:-1])
        tol = self.tol * float(np.mean(np.var(validation, axis=0)))
        return runs[int(np.argmin(inertia))], tol

    def _report(self, report: EpochReport) -> None:
        smoothed = "-" if report.ewa_inertia is None else f"{report.ewa_inertia:.6g}"
        print(
            f"epoch {report.epoch}: {report.steps} batches, smoothed batch inertia "
            f"{smoothed}, {report.seconds:.3f} s",
            file=sys.stderr,
        )

    def _store(self, source: Source, X: Input, result: MiniBatchResult | None) -> None:
        """Keep the centres (``result``: of a fit, None: of ``partial_fit``), and
        ``inertia_`` and ``labels_`` as asked."""
        state = self._state
        self.cluster_centers_ = centers_in_user_frame(state.centers, source.shift).astype(
            computing_dtype(X.dtype)
        )
        self.n_steps_ = state.n_steps
        per_squared_distance = inertia_per_squared_distance(self.metric)
        if result is not None:
            self.n_iter_ = result.n_iter
        labels = None
        if self.compute_labels or (result is not None and result.ewa_inertia is None):
            # one pass for the inertia and, of NumPy input, the labels: the centres as
            # stored and as predict compares rows with them
            if self.compute_labels and X.array is not None:
                labels = labels_memory(source.in_process, source.n_rows, 1)
            centers = self._centers_in_frame(source.shift)
            stats = source.map_reduce(
                pass_statistics,
                centers,
                np.array([0, len(centers)]),
                far_capacity=0,
                row_results=labels,
            )
            self.inertia_ = float(stats.cluster_inertia.sum()) * per_squared_distance
            if result is not None:
                self._warn_if_clusters_missing(stats.counts)
        elif result is not None:
            self.inertia_ = result.ewa_inertia * X.shape[0] * per_squared_distance
        if self.compute_labels:
            self.labels_ = self._labels(X) if labels is None else labels_of_run(labels, 0)
