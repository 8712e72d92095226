"""The ``dkmeans`` command, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr

from dkmeans import KMeans
from dkmeans.cli import count, main, reuse_freed_memory
from dkmeans.store import claim_output

from .test_io import tree_digest


def dkmeans(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dkmeans.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture(scope="module")
def blobs_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "blobs.zarr"
    run = dkmeans(
        "make-blobs", path, "--n-samples", "2_000", "--n-features", 3, "--centers", 4,
        "--chunk-rows", 7, "--seed", 3,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return path


@pytest.fixture(autouse=True)
def input_store_unchanged(request):
    """Every command of every test leaves the shared input store's bytes and listing as
    they were."""
    if "blobs_store" not in request.fixturenames:
        yield
        return
    path = request.getfixturevalue("blobs_store")
    before = tree_digest(path)
    yield
    assert tree_digest(path) == before, "a command changed the input store"


def test_count_accepts_scientific_and_underscored():
    assert count("1e9") == 10**9
    assert count("32_000_000") == 32_000_000
    with pytest.raises(Exception, match="whole number"):
        count("1.5")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_commands_make_glibc_reuse_freed_blocks():
    assert reuse_freed_memory()


def test_make_blobs_store(blobs_store):
    array = zarr.open_array(str(blobs_store), mode="r")
    assert array.shape == (2000, 3) and array.chunks == (7, 3) and array.dtype == np.float32
    assert array.compressors == ()


def test_fit_json_output_store_and_predict(tmp_path, blobs_store):
    before = tree_digest(blobs_store)
    out = tmp_path / "model.zarr"
    run = dkmeans("fit", blobs_store, "--n-clusters", 4, "--seed", 0, "--out", out, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)  # exactly one JSON object, nothing else on stdout
    assert {"n_clusters", "inertia", "n_iter", "seconds", "n_samples", "n_features"} <= set(summary)
    assert (summary["n_clusters"], summary["n_samples"], summary["n_features"]) == (4, 2000, 3)
    assert "iteration 1: inertia" in run.stderr  # per-iteration progress
    assert tree_digest(blobs_store) == before

    expected = KMeans(4, random_state=0).fit(str(blobs_store))
    assert summary["inertia"] == pytest.approx(expected.inertia_, rel=1e-9)
    group = zarr.open_group(str(out), mode="r")
    labels = group["labels"]
    assert labels.dtype == np.int32 and labels.chunks == (7,)
    np.testing.assert_array_equal(labels[...], expected.labels_.compute())
    assert group.attrs["n_iter"] == summary["n_iter"]
    assert group.attrs["params"]["random_state"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zarr"]  # no temporaries left

    predicted = tmp_path / "labels.zarr"
    run = dkmeans("predict", out, blobs_store, "--out", predicted)
    assert run.returncode == 0, run.stderr
    relabelled = zarr.open_array(str(predicted), mode="r")
    assert relabelled.dtype == np.int32 and relabelled.chunks == (7,)
    np.testing.assert_array_equal(relabelled[...], labels[...])


def test_human_summary_and_refusal_to_overwrite(tmp_path, blobs_store):
    out = tmp_path / "model.zarr"
    args = ("fit", blobs_store, "--n-clusters", 2, "--seed", 0, "--out", out, "--quiet")
    assert main(list(map(str, args))) == 0
    refused = dkmeans(*args)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"dkmeans fit: error: {out} exists; choose another path or pass --overwrite"
    ]
    checkpoint = tmp_path / "state.npz"
    run = dkmeans(*args, "--overwrite", "--checkpoint", checkpoint)
    assert run.returncode == 0, run.stderr
    assert checkpoint.is_file()
    assert "inertia" in run.stdout and "k=2" in run.stdout and f"wrote {out}" in run.stdout
    assert run.stderr == ""  # --quiet
    assert read_group_keys(out) == ["cluster_centers", "labels"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zarr", "state.npz"]


@pytest.fixture(scope="module")
def workspace_template(tmp_path_factory, blobs_store):
    """A copy of the blobs store, a fit result of it and a folder of files."""
    folder = tmp_path_factory.mktemp("workspace")
    shutil.copytree(blobs_store, folder / "in.zarr")
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("mine")
    args = ["fit", str(folder / "in.zarr"), "--n-clusters", "3", "--seed", "0", "--quiet"]
    assert main([*args, "--out", str(folder / "m.zarr")]) == 0
    return folder


@pytest.fixture
def workspace(tmp_path, workspace_template, monkeypatch):
    """A copy of the template: the current directory during the test."""
    folder = tmp_path / "workspace"
    shutil.copytree(workspace_template, folder)
    monkeypatch.chdir(folder)
    return folder


def listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fit", "in.zarr", "--out", "in.zarr"), "the output in.zarr is the input in.zarr"),
        (("fit", "in.zarr", "--out", "in.zarr/r.zarr"), "lies inside the input in.zarr"),
        (("fit", "in.zarr", "--out", "."), "the output . contains the input in.zarr"),
        (("fit", "in.zarr", "--out", "mine"), "mine exists and is not a dkmeans result"),
        (("fit", "in.zarr", "--out", "mine/notes.txt"), "is not a dkmeans result"),
        (("predict", "m.zarr", "in.zarr", "--out", "in.zarr"), "is the input in.zarr"),
        (("predict", "m.zarr", "in.zarr", "--out", "m.zarr"), "is the input m.zarr"),
        (("predict", "m.zarr", "in.zarr", "--out", ".."), "contains the input"),
    ],
)
def test_overwrite_never_touches_what_dkmeans_did_not_write(workspace, capsys, args, message):
    """Refused before any work (no fit: no progress lines), in one line, nothing changed."""
    before, files = tree_digest(workspace), listing(workspace)
    options = ["--n-clusters", "3"] if args[0] == "fit" else []
    assert main([*args, *options, "--overwrite"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dkmeans {args[0]}: error: ")
    assert message in lines[0]
    assert tree_digest(workspace) == before and listing(workspace) == files


def test_overwrite_replaces_a_dkmeans_result(workspace, capsys):
    before = tree_digest(workspace / "in.zarr")
    assert main(["predict", "m.zarr", "in.zarr", "--out", "l.zarr", "--quiet"]) == 0
    assert main(["predict", "m.zarr", "in.zarr", "--out", "l.zarr", "--quiet"]) == 2
    assert "l.zarr exists; choose another path or pass --overwrite" in capsys.readouterr().err
    assert main(["predict", "m.zarr", "in.zarr", "--out", "l.zarr", "--overwrite", "--quiet"]) == 0
    assert zarr.open_array("l.zarr", mode="r").attrs["dkmeans_result"] == "labels"
    assert tree_digest(workspace / "in.zarr") == before
    assert sorted(p.name for p in workspace.iterdir()) == ["in.zarr", "l.zarr", "m.zarr", "mine"]


def test_a_second_writer_of_the_same_output_fails_and_says_so(tmp_path, blobs_store):
    out = tmp_path / "r.zarr"
    with claim_output(out):  # this process is writing r.zarr
        run = dkmeans("fit", blobs_store, "--n-clusters", 2, "--out", out, "--overwrite")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"dkmeans fit: error: {out} is being written by another dkmeans (process "
        f"{os.getpid()} on {socket.gethostname()} since {run.stderr.split(' since ')[1][:19]}): "
        f"wait for it to finish, or delete {tmp_path / '.r.zarr.dkmeans-claim'} if that "
        "process is gone"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written, the claim released


def read_group_keys(path) -> list[str]:
    return sorted(zarr.open_group(str(path), mode="r").array_keys())


def run_in_process(args, capsys) -> tuple[int, str]:
    """The command's exit status and standard error, run in this process."""
    try:
        status = main(list(map(str, args)))
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fit", "missing.zarr", "--n-clusters", 2), "no Zarr array found"),
        (
            ("fit", "BLOBS", "--n-clusters", 5000, "--out", "o.zarr"),  # fails after opening
            "n_samples=2000 should be >= n_clusters=5000",
        ),
        (("predict", "BLOBS", "BLOBS", "--out", "l.zarr"), "not a dkmeans fit result"),
        (("elbow", "BLOBS", "--k-min", 3, "--k-max", 2), "--k-min <= --k-max"),
        (("fit", "BLOBS", "--n-clusters", 2, "--cluster", "c.yaml"), "c.yaml"),
    ],
)
def test_user_errors_exit_2_in_one_line(tmp_path, blobs_store, args, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, stderr = run_in_process((blobs_store if a == "BLOBS" else a for a in args), capsys)
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dkmeans {args[0]}: error: ")
    assert message in lines[0]
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no output, no temporary


def test_a_user_error_ends_the_process_with_one_line(tmp_path):
    # the process itself: exit status 2, and nothing after the line as it shuts down
    run = dkmeans("fit", tmp_path / "missing.zarr", "--n-clusters", 2, cwd=tmp_path)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("dkmeans fit: error: no Zarr array found")
    assert list(tmp_path.iterdir()) == []


def test_fit_on_a_cluster_from_a_config(tmp_path, blobs_store):
    pytest.importorskip("yaml")
    config = tmp_path / "local.yaml"
    config.write_text(
        "kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\n"
        'dashboard_address: ":0"\n'
    )
    run = dkmeans("fit", blobs_store, "--n-clusters", 4, "--seed", 0, "--json", "--cluster", config)
    assert run.returncode == 0, run.stderr
    assert "dkmeans: dashboard at http" in run.stderr
    expected = KMeans(4, random_state=0).fit(str(blobs_store))
    assert json.loads(run.stdout)["inertia"] == pytest.approx(expected.inertia_, rel=1e-9)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    # --debug lets the error propagate, so Python prints its traceback
    args = ["fit", str(tmp_path / "missing.zarr"), "--n-clusters", "2"]
    with pytest.raises(ValueError, match="no Zarr array found"):
        main(["--debug", *args] if where == "before" else [*args, "--debug"])


def test_elbow_json_and_plot(tmp_path, blobs_store):
    plot = tmp_path / "elbow.png"
    run = dkmeans(
        "elbow", blobs_store, "--k-min", 1, "--k-max", 4, "--seed", 0, "--json", "--plot", plot
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    inertia = {int(k): v for k, v in result["inertia"].items()}
    assert sorted(inertia) == [1, 2, 3, 4]
    assert inertia[1] > inertia[2] > inertia[4]
    single = KMeans(3, random_state=0).fit(str(blobs_store))
    assert inertia[3] == pytest.approx(single.inertia_, rel=1e-9)
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("zarr.json", "{broken"),
        ("zarr.json", "[1]"),
        ("zarr.json", '{"zarr_format": 3, "node_type": "array"}'),
    ],
)
def test_damaged_metadata_of_the_input_is_named(tmp_path, blobs_store, capsys, file, text):
    store = tmp_path / "in.zarr"
    shutil.copytree(blobs_store, store)
    (store / file).write_text(text)
    assert main(["fit", str(store), "--n-clusters", "2", "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"dkmeans fit: error: damaged Zarr metadata in {store / file} (")


def test_make_blobs_overwrites_only_what_make_blobs_wrote(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    other = tmp_path / "other.zarr"
    zarr.create_array(str(other), shape=(3, 2), dtype="f8")[:] = 1.0
    for path in (folder, other):
        before = sorted(p.name for p in path.iterdir())
        args = ["make-blobs", str(path), "--n-samples", "100", "--n-features", "2"]
        assert main([*args, "--centers", "2", "--overwrite"]) == 2
        assert "not written by dkmeans make-blobs" in capsys.readouterr().err
        assert sorted(p.name for p in path.iterdir()) == before
    blobs = str(tmp_path / "blobs.zarr")
    args = ["make-blobs", blobs, "--n-features", "2", "--centers", "2"]
    assert main([*args, "--n-samples", "100"]) == 0
    assert main([*args, "--n-samples", "200", "--overwrite"]) == 0
    assert zarr.open_array(blobs, mode="r").shape == (200, 2)
