"""The benchmarks' command lines (most benchmarks need the ``bench`` extra; init_tol does not)."""

from __future__ import annotations

import json

from benchmarks import cosine_faiss, init_tol, placement, shapes

#: What benchmarks.shapes chooses itself and benchmarks.cosine_faiss fixes instead.
SHAPES_ONLY = {"shapes", "scale", "data", "libraries", "scratch"}


def test_cosine_faiss_gives_run_case_every_setting_of_the_shapes_command():
    # cosine_faiss runs benchmarks.shapes.run_case with its own arguments: a setting that
    # shapes gained and cosine_faiss lacked broke it (AttributeError: 'modes')
    theirs = set(vars(shapes.parse_args([])))
    ours = vars(cosine_faiss.parse_args([]))
    assert theirs - SHAPES_ONLY <= set(ours)
    assert ours["modes"] == list(shapes.MODES)
    assert cosine_faiss.parse_args(["--modes", "default"]).modes == ["default"]


def test_init_tol_benchmark_counts_the_rounds_each_tolerance_draws(tmp_path):
    """A smoke run on structureless rows in 768 dimensions (5,000 rows: enough for k-means||,
    not the small-data path): every round at init_tol=0, fewer at 0.1, and a final
    inertia near scikit-learn's either way."""
    out = tmp_path / "init_tol.json"
    init_tol.main(
        ["--data", "noise 768-d", "--scale", "0.1", "--seeds", "1", "--tols", "0,0.1",
         "--out", str(out)]
    )  # fmt: skip
    every, early = json.loads(out.read_text())["rows"]
    assert (every["init_tol"], early["init_tol"]) == (0, 0.1)
    assert every["rounds"] == 5 > early["rounds"] >= 1
    assert every["seeding_seconds"] > 0 and early["seeding_seconds"] > 0
    assert every["ratio"] < 1.01 and early["ratio"] < 1.01


def test_placement_benchmark_moves_no_block_of_what_the_fit_persists(tmp_path):
    """A smoke run on 2 worker processes: the fits that persist the store themselves move
    (almost) nothing between workers; every placement's records have time, bytes, runs."""
    out = tmp_path / "placement.json"
    placement.main(
        ["--rows", "200000", "--chunk-rows", "10000", "--workers", "2", "--iterations", "2",
         "--scratch", str(tmp_path), "--out", str(out)]
    )  # fmt: skip
    fits = json.loads(out.read_text())["fits"]
    assert [(f["placement"], f["repeat"]) for f in fits] == [
        ("dkmeans", 0), ("dkmeans", 1), ("user", 0), ("user", 1),
        ("persist_in_runs", 0), ("persist_in_runs", 1),
    ]  # fmt: skip
    for fit in fits:
        assert fit["seconds"] > 0 and fit["runs"] >= 1 and fit["n_iter"] == 2
    # (the fit merges these small chunks into one block: only its own persist moves none)
    assert all(f["moved_bytes"] < 2**20 for f in fits if f["placement"] == "dkmeans")
