"""The benchmarks' command lines (the benchmarks themselves need the ``bench`` extra)."""

from __future__ import annotations

from benchmarks import cosine_faiss, shapes

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
