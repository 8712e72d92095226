"""The benchmarks' command lines (most benchmarks need the ``bench`` extra; init_tol does not)."""

from __future__ import annotations

import json

from benchmarks import cosine_faiss, init_tol, shapes

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
