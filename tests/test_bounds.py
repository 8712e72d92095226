"""Lloyd passes that skip the rows whose centre cannot have changed (distance bounds
kept between passes) give the statistics of full passes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkmeans import engine, resources
from dkmeans import lloyd as lloyd_module
from dkmeans.kernels import nearest_centers, pass_statistics
from dkmeans.lloyd import RowBounds, fresh_skipped_fraction, lloyd
from dkmeans.row_memory import skipped_fraction
from dkmeans.sources import InMemorySource


@st.composite
def lloyd_problems(draw, max_centers: int = 12):
    """Integer-valued rows in a few clumps (every GEMM is exact, ties are common), cut
    into blocks, and the initial centres of one or two runs of up to ``max_centers``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # 16 or more float32 features: one run's GEMM is laid out rows by centres
    n_rows = draw(st.integers(2, 3000))
    n_features = draw(st.one_of(st.integers(1, 5), st.integers(16, 20)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    clumps = rng.integers(-20, 21, size=(draw(st.integers(1, 6)), n_features))
    x = clumps[rng.integers(len(clumps), size=n_rows)] + rng.integers(
        -3, 4, size=(n_rows, n_features)
    )
    x = x.astype(dtype)
    cuts = sorted(set(draw(st.lists(st.integers(1, n_rows - 1), max_size=3))))
    chunks = np.diff([0, *cuts, n_rows])
    sizes = [draw(st.integers(1, min(max_centers, n_rows))) for _ in range(draw(st.integers(1, 2)))]
    runs = [x[rng.choice(n_rows, k, replace=False)].astype(float) for k in sizes]
    return x, tuple(int(c) for c in chunks), runs


def bounds_on_any_data(monkeypatch, min_skipped: float = 0.0) -> None:
    """Keep bounds even on tiny data, and use them when the last pass predicts at
    least ``min_skipped`` of the rows to be skipped."""
    monkeypatch.setattr(lloyd_module, "BOUNDS_MIN_WORK", 0)
    monkeypatch.setattr(lloyd_module, "BOUNDS_MIN_SAVING", 0)
    monkeypatch.setattr(lloyd_module, "BOUNDS_MIN_SKIPPED", min_skipped)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    problem=lloyd_problems(),
    max_iter=st.integers(1, 8),
    min_skipped=st.sampled_from([0.0, 0.5, 0.9, 1.01]),
)
def test_bounded_passes_equal_full_passes(problem, max_iter, min_skipped, monkeypatch):
    """Whether every pass uses the bounds, or some passes are full ones between passes
    that use (and renew) them, the statistics are those of full passes."""
    bounds_on_any_data(monkeypatch, min_skipped)
    bounded = fit_problem(problem, max_iter)
    monkeypatch.undo()
    assert_same_fits(bounded, fit_problem(problem, max_iter))


def fit_problem(problem, max_iter: int) -> list:
    """Lloyd on a :func:`lloyd_problems` example, its blocks on two threads."""
    x, chunks, runs = problem
    source = InMemorySource.of_array(x, chunks=chunks, threads=2)
    return lloyd(source, runs, max_iter=max_iter, tol=0)


def assert_same_fits(bounded: list, full: list) -> None:
    """The runs ended with the same centres, counts, inertia and iterations, bitwise."""
    for a, b in zip(bounded, full, strict=True):
        np.testing.assert_array_equal(a.centers, b.centers)
        np.testing.assert_array_equal(a.counts, b.counts)
        assert a.inertia == b.inertia and a.n_iter == b.n_iter


def test_bounds_are_kept_only_where_they_can_pay(monkeypatch):
    """A pass of fewer than BOUNDS_MIN_WORK row-centre-feature products takes about a
    millisecond, and rows with fewer than BOUNDS_MIN_SAVING centre-feature products
    save less than the screening costs: no bounds. Nor where they do not fit."""
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=(3_000, 16)), rng.normal(size=(20_000, 32))
    assert not RowBounds(InMemorySource.of_array(small), [small[:16]]).allowed
    assert not RowBounds(InMemorySource.of_array(large[:, :2]), [large[:16, :2]]).allowed
    assert RowBounds(InMemorySource.of_array(large), [large[:16], large[:8]]).allowed
    monkeypatch.setattr(resources, "ROW_MEMORY_FRACTION", 0.0)
    assert not RowBounds(InMemorySource.of_array(large), [large[:16]]).allowed


def jumping_centres_passes(predict_renewals: bool) -> tuple[list[bool], RowBounds]:
    """Passes over structureless data whose centres jump far for 13 passes, then come
    back to where the bounds were last used; whether each pass used bounds."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40_000, 32))
    centers = x[:16].copy()
    source = InMemorySource.of_array(x, chunks=(15_000, 25_000))
    row_bounds = RowBounds(source, [centers])
    if not predict_renewals:  # as for group bounds and streamed data
        row_bounds.sample = None
    run_bounds = np.array([0, 16])
    used = []
    for step in range(16):
        stacked = centers + (rng.normal(size=centers.shape) if step < 13 else 0.0)
        distance_bounds = row_bounds.for_pass([0], stacked, run_bounds)
        used.append(distance_bounds is not None)
        source.map_reduce(pass_statistics, stacked, run_bounds, distance_bounds=distance_bounds)
        if distance_bounds is not None:
            centers = stacked
    return used, row_bounds


def test_passes_use_the_bounds_only_while_they_skip_enough_rows():
    """Where no sample predicts a renewal: the bounds predict few skips, so the passes
    are full ones, but for a renewal after BOUNDS_RENEWED_AFTER passes, a wait that
    doubles with every renewal that did not pay. Once the centres are back where the
    bounds were made, every row is predicted skipped and the bounds are used."""
    used, row_bounds = jumping_centres_passes(predict_renewals=False)
    run_bounds = np.array([0, 16])
    wait = lloyd_module.BOUNDS_RENEWED_AFTER
    # made; renewed after `wait` full passes, and did not pay: the next renewal would
    # wait twice as long (pass 14, not 10), but the centres are back where the bounds were
    # renewed: every row predicted skipped, and the bounds used
    assert used == [True] + [False] * wait + [True] + [False] * 7 + [True] * 3
    assert skipped_fraction(row_bounds.memory, np.zeros(16), run_bounds) > 0.99
    assert skipped_fraction(row_bounds.memory, np.full(16, 100.0), run_bounds) == 0.0


def test_kept_bounds_are_not_measured_again_after_larger_drifts(monkeypatch):
    """Bounds that did not pay after one drift cannot pay after a drift at least as
    large for every centre: the rows' bounds are not measured again then, and are
    measured again once any centre has drifted less."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40_000, 32))
    centers = x[:16].copy()
    source = InMemorySource.of_array(x)
    row_bounds = RowBounds(source, [centers])
    row_bounds.sample = None  # no renewal predicted: every pass measures the kept bounds
    run_bounds = np.array([0, 16])
    made = row_bounds.for_pass([0], centers, run_bounds)
    source.map_reduce(pass_statistics, centers, run_bounds, distance_bounds=made)
    measured = []

    def counted(*args, **kwargs):
        measured.append(kwargs.get("drift", args[1]).copy())
        return skipped_fraction(*args, **kwargs)

    monkeypatch.setattr(lloyd_module, "skipped_fraction", counted)
    direction = rng.normal(size=centers.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    drifts = (1.0, 2.0, 1.5, 0.5)
    used = [
        row_bounds.for_pass([0], centers + drift * direction, run_bounds) is not None
        for drift in drifts
    ]
    assert used[:3] == [False] * 3
    np.testing.assert_allclose([m.max() for m in measured], [1.0, 0.5])
    assert len(row_bounds.memory.blocks) == 1  # the bounds are still those of the first pass


@pytest.mark.parametrize("near_paying", [False, True])
def test_renewals_that_would_not_pay_are_predicted_and_skipped(near_paying, monkeypatch):
    """Data in memory: a renewal of Hamerly's bounds is first predicted on a sample of
    the rows; while the centres jump, fresh bounds would skip nothing, so no pass renews
    them (it would cost more than a full pass), and the bounds still serve once the
    centres come back. A prediction far from paying doubles the wait before the next,
    as a renewal that did not pay does; one near paying (here forced to 0.6) does not."""
    predictions = []
    predict = lloyd_module.fresh_skipped_fraction

    def counted(rows, stacked, bounds, drift):
        predictions.append(True)
        skipped = predict(rows, stacked, bounds, drift)
        assert skipped < lloyd_module.HAMERLY_MIN_SKIPPED / 2
        return 0.6 if near_paying else skipped

    monkeypatch.setattr(lloyd_module, "fresh_skipped_fraction", counted)
    used, _ = jumping_centres_passes(predict_renewals=True)
    assert used == [True] + [False] * 12 + [True] * 3
    wait = lloyd_module.BOUNDS_RENEWED_AFTER
    # made at pass 1, then full passes: predicted after `wait` of them, then after twice
    # as many (far from paying), or at every pass from then on (near paying)
    assert len(predictions) == (12 - wait + 1 if near_paying else 2)


@pytest.mark.parametrize("step", [0.0, 0.02, 0.1, 1.0])
def test_prediction_of_fresh_bounds_matches_the_bounds_a_pass_makes(step, monkeypatch):
    """The fraction fresh_skipped_fraction predicts on all rows equals what the bounds a
    pass makes at those centres predict for the same drift (up to their rounding)."""
    bounds_on_any_data(monkeypatch)
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(3_000, 8)), 4 + rng.normal(size=(3_000, 8))])
    centers = np.concatenate([x[:6], x[3_000:3_006]])
    run_bounds = np.array([0, 5, 12])
    source = InMemorySource.of_array(x)
    row_bounds = RowBounds(source, [centers[:5], centers[5:]])
    distance_bounds = row_bounds.for_pass([0, 1], centers, run_bounds)
    assert distance_bounds is not None
    source.map_reduce(pass_statistics, centers, run_bounds, distance_bounds=distance_bounds)
    drift = np.full(len(centers), step)
    made = skipped_fraction(row_bounds.memory, drift, run_bounds, sample_every=1)
    predicted = fresh_skipped_fraction(x, centers, run_bounds, drift)
    assert abs(predicted - made) <= 2 / len(x)
    assert (predicted > 0.5) == (step < 0.5)


def test_bounds_are_renewed_as_soon_as_the_centres_settle():
    """After the centres moved far from where the bounds were made (full passes), a
    small step renews the bounds at once rather than after BOUNDS_RENEWED_AFTER passes."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40_000, 32))
    source = InMemorySource.of_array(x)
    run_bounds = np.array([0, 16])
    row_bounds = RowBounds(source, [x[:16]])
    far = x[:16] + rng.normal(size=(16, 32))
    steps = [x[:16], far, far + 1e-3, far + 2e-3]
    used = []
    for stacked in steps:
        distance_bounds = row_bounds.for_pass([0], stacked, run_bounds)
        used.append(distance_bounds is not None)
        source.map_reduce(pass_statistics, stacked, run_bounds, distance_bounds=distance_bounds)
    assert used == [True, False, True, True]


def test_bounds_skip_most_rows_once_the_centres_settle(blobs, monkeypatch):
    bounds_on_any_data(monkeypatch)
    x, centers = blobs
    row_bounds = RowBounds(InMemorySource.of_array(x), [centers])
    assert row_bounds.allowed
    drifted = centers + 0.01
    stacked = centers.astype(float)
    for step in (stacked, drifted):
        distance_bounds = row_bounds.for_pass([0], step, np.array([0, 5]))
        pass_statistics(x, None, 0, 0, step, np.array([0, 5]), distance_bounds=distance_bounds)
    labels, distances, lower = row_bounds.memory.blocks[0]
    # well-separated blobs: after a small drift every row's bounds stay apart
    upper = np.sqrt(distances[:, 0])
    assert (upper + 0.1 < lower[:, 0]).mean() > 0.95


def test_bounded_and_full_passes_differ_only_at_near_ties(monkeypatch) -> None:
    """Where the GEMM rounds: float32 rows on the bisector of two centres are ties up to
    rounding, and the GEMM of a few gathered rows (laid out centres by rows) may round
    some of them the other way than the GEMM of a full pass (here rows by centres).
    Pass by pass, the bounded labels are the exact nearest centres but within the GEMM's
    rounding of a tie, the counts differ by those rows only, and the inertia by far less
    than 1e-6 (README: which results are bitwise identical). Since a pass that measures
    every row lays its GEMM out as a full pass does, these passes happen to agree
    bitwise here; that is not promised, as gathered rows go through other GEMMs."""
    rng = np.random.default_rng(0)
    k, d = 8, 16  # float32, k < d: the full pass's GEMM is laid out rows by centres
    centers = rng.normal(size=(k, d)) * 3
    across = (centers[1] - centers[0]) / np.linalg.norm(centers[1] - centers[0])
    along = rng.normal(size=(20_000, d))
    along -= (along @ across)[:, None] * across
    x = np.concatenate(
        [(centers[0] + centers[1]) / 2 + along / 2, rng.normal(size=(20_000, d)) * 3]
    )
    x = x.astype(np.float32)
    x64, bounds = x.astype(np.float64), np.array([0, k])
    bounds_on_any_data(monkeypatch)
    row_bounds = RowBounds(InMemorySource.of_array(x), [centers])
    assert row_bounds.allowed
    for _ in range(3):
        distance_bounds = row_bounds.for_pass([0], centers, bounds)
        bounded = pass_statistics(x, None, 0, 0, centers, bounds, distance_bounds=distance_bounds)
        full = pass_statistics(x, None, 0, 0, centers, bounds)
        # the kernels' allowance for the rounding of a float32 GEMM (DistanceBounds.screen)
        eps = 2 * (d + 4) * np.finfo(np.float32).eps
        slack = eps * ((x64**2).sum(axis=1) + (centers**2).sum(axis=1).max())
        exact = ((x64[:, None, :] - centers[None]) ** 2).sum(axis=2)
        best_two = np.sort(exact, axis=1)[:, :2]
        near_tie = best_two[:, 1] - best_two[:, 0] <= 2 * slack
        labels = row_bounds.memory.blocks[0][0][:, 0]
        assert (labels == exact.argmin(axis=1))[~near_tie].all()
        assert np.abs(bounded.counts - full.counts).sum() <= 2 * near_tie.sum()
        inertia, full_inertia = bounded.cluster_inertia.sum(), full.cluster_inertia.sum()
        assert abs(inertia - full_inertia) <= 1e-6 * full_inertia
        centers = centers + rng.normal(size=centers.shape) * 1e-7


def test_streamed_passes_keep_bounds_where_the_arithmetic_dominates(tmp_path, monkeypatch):
    """A Zarr store streamed every pass keeps bounds in this process when a run has
    many centres and the bounds are small next to X; the statistics are those of full
    passes."""
    import dask.array as da
    import zarr

    from dkmeans.sources import DaskSource

    rng = np.random.default_rng(2)
    clumps = rng.normal(size=(40, 64)) * 4
    x = clumps[rng.integers(len(clumps), size=6_000)] + rng.normal(size=(6_000, 64))
    store = zarr.create_array(
        str(tmp_path / "x.zarr"), shape=x.shape, chunks=(1_000, 64), dtype="f8"
    )
    store[:] = x
    runs = [x[rng.choice(len(x), 128, replace=False)]]

    def source():
        return DaskSource(da.from_zarr(str(tmp_path / "x.zarr")))

    assert RowBounds(source(), runs).allowed
    assert not RowBounds(source(), [runs[0][:64]]).allowed  # too few centres per run
    narrow = DaskSource(da.from_array(x[:, :8].astype(np.float32), chunks=(1_000, 8)))
    assert not RowBounds(narrow, [runs[0][:, :8]]).allowed  # bounds as big as X
    made = []
    original = lloyd_module.distance_bounds_memory  # 128 centres: Hamerly's
    monkeypatch.setattr(
        lloyd_module, "distance_bounds_memory", lambda *n: made.append(n) or original(*n)
    )
    bounded = lloyd(source(), runs, max_iter=6, tol=0)[0]
    assert made  # the passes kept bounds
    monkeypatch.setattr(lloyd_module, "STREAMED_BOUNDS_MIN_CENTERS", 10**9)
    full = lloyd(source(), runs, max_iter=6, tol=0)[0]
    np.testing.assert_array_equal(bounded.centers, full.centers)
    np.testing.assert_array_equal(bounded.counts, full.counts)
    assert bounded.inertia == full.inertia


def group_bounds_on_any_data(monkeypatch) -> list[tuple[int, int]]:
    """Keep Yinyang's group bounds (groups of 3 centres) on tiny data, and use them at
    every pass; returns a list that receives (runs, groups) of every group memory made."""
    bounds_on_any_data(monkeypatch)
    monkeypatch.setattr(lloyd_module, "GROUP_BOUNDS_MIN_CENTERS", 2)
    monkeypatch.setattr(lloyd_module, "CENTERS_PER_GROUP", 3)
    monkeypatch.setattr(lloyd_module, "MIN_GROUPS", 1)
    monkeypatch.setattr(lloyd_module, "GROUP_BOUNDS_FRACTION", 1e6)
    made = []
    original = lloyd_module.group_bounds_memory
    monkeypatch.setattr(
        lloyd_module, "group_bounds_memory", lambda *n: made.append(n) or original(*n)
    )
    return made


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(problem=lloyd_problems(max_centers=40), max_iter=st.integers(1, 8))
def test_group_bounded_fits_equal_full_fits(problem, max_iter, implementation, monkeypatch):
    """Lloyd with group bounds ends with the centres, counts, inertia and iterations of
    full passes, bitwise, float32 and float64, on both engines (the NumPy engine makes
    full passes whatever the bounds)."""
    made = group_bounds_on_any_data(monkeypatch)
    bounded = fit_problem(problem, max_iter)
    assert bool(made) == (max(len(r) for r in problem[2]) >= 3)  # groups of 3
    monkeypatch.undo()
    assert_same_fits(bounded, fit_problem(problem, max_iter))


@pytest.mark.skipif("numba" not in engine.available(), reason="bounds need the compiled loops")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_bounded_passes_give_the_labels_of_full_passes(dtype, monkeypatch):
    """Pass by pass, as the centres of two runs drift (some far, most not at all), the
    group-bounded passes give the labels and statistics of full passes, bitwise.
    Integer rows and centres on a grid of 1/4: every GEMM value is exact, so exact ties
    are many and the lowest index must win them, across groups too."""
    rng = np.random.default_rng(5)
    clumps = rng.integers(-12, 13, size=(8, 3))
    x = (clumps[rng.integers(8, size=4_000)] + rng.integers(-3, 4, size=(4_000, 3))).astype(dtype)
    runs = [x[rng.choice(len(x), k, replace=False)].astype(float) for k in (40, 25)]
    bounds = np.array([0, 40, 65])
    source = InMemorySource.of_array(x, chunks=(1_500, 2_500))
    made = group_bounds_on_any_data(monkeypatch)
    row_bounds = RowBounds(source, runs)
    stacked = np.concatenate(runs)
    for step in range(6):
        distance_bounds = row_bounds.for_pass([0, 1], stacked, bounds)
        assert distance_bounds is not None and distance_bounds.groups is not None
        bounded = source.map_reduce(
            pass_statistics, stacked, bounds, distance_bounds=distance_bounds
        )
        full = source.map_reduce(pass_statistics, stacked, bounds)
        np.testing.assert_array_equal(bounded.sums, full.sums)
        np.testing.assert_array_equal(bounded.counts, full.counts)
        np.testing.assert_array_equal(bounded.cluster_inertia, full.cluster_inertia)
        kept = np.concatenate([row_bounds.memory.blocks[b][0] for b in (0, 1)])
        np.testing.assert_array_equal(kept, nearest_centers(x, stacked, bounds)[0])
        moving = rng.random(len(stacked)) < (0.5 if step == 0 else 0.1)
        stacked = stacked + moving[:, None] * rng.integers(-8, 9, size=stacked.shape) / 4
    assert made == [(2, row_bounds.groups.n_groups)]


def test_group_bounds_are_chosen_for_many_centres(tmp_path):
    """Runs of GROUP_BOUNDS_MIN_CENTERS centres or more keep group bounds, about one group
    per CENTERS_PER_GROUP centres, as many as take up to GROUP_BOUNDS_FRACTION of X's
    bytes (1/8 when X is streamed); fewer than MIN_GROUPS: Hamerly's bounds."""
    import dask.array as da

    from dkmeans.sources import DaskSource

    rng = np.random.default_rng(4)

    def groups(n_features, k, dtype=np.float32, streamed=False):
        x = rng.normal(size=(2_000, n_features)).astype(dtype)
        source = (
            DaskSource(da.from_array(x, chunks=(500, n_features)))
            if streamed
            else InMemorySource.of_array(x)
        )
        row_bounds = RowBounds(source, [np.zeros((k, n_features))])
        return row_bounds.groups_per_run if row_bounds.allowed else None

    assert groups(64, 1023) == 0  # Hamerly's
    assert groups(768, 1024) == 102  # k / 10
    assert groups(64, 1024) == 28  # (256 / 2 - 16) / 4 bytes per group
    assert groups(128, 4096) == 60
    assert groups(8, 1024, np.float64) == 4
    assert groups(4, 1024, np.float64) == 0  # room for fewer than MIN_GROUPS groups
    assert groups(64, 1024, streamed=True) == 4  # (256 / 8 - 16) / 4
    assert groups(32, 1024, streamed=True) is None  # no room for any bounds
