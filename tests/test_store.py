"""Result stores: layout, attributes, atomic writes and refusal to overwrite."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess

import dask.array as da
import fsspec
import numpy as np
import pytest
import zarr

import dkmeans
from dkmeans import KMeans
from dkmeans import store as result_store
from dkmeans.store import (
    OutputBusyError,
    OutputExistsError,
    OutputNotWritableError,
    UnsafeOutputError,
    claim_output,
    output_kind,
    read_centers,
    write_labels,
    write_result,
)

from .test_io import tree_digest


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(300, 2)) + rng.integers(3, size=(300, 1)) * 8).astype(np.float32)
    path = str(tmp_path / "in.zarr")
    zarr.create_array(store=path, data=data, chunks=(7, 2))
    return path, data


@pytest.fixture
def fitted(source):
    path, _ = source
    return KMeans(3, random_state=0).fit(path)


def test_result_layout_and_attributes(tmp_path, source, fitted):
    path, data = source
    out = tmp_path / "out.zarr"
    write_result(out, fitted, path)
    group = zarr.open_group(str(out), mode="r")
    assert sorted(group.array_keys()) == ["cluster_centers", "labels"]
    centers, labels = group["cluster_centers"], group["labels"]
    assert centers.shape == (3, 2) and centers.dtype == np.float32
    np.testing.assert_array_equal(centers[...], fitted.cluster_centers_)
    assert labels.shape == (300,) and labels.dtype == np.int32 and labels.chunks == (7,)
    np.testing.assert_array_equal(labels[...], fitted.labels_.compute())
    attrs = group.attrs.asdict()
    assert attrs["inertia"] == pytest.approx(fitted.inertia_)
    assert attrs["n_iter"] == fitted.n_iter_ and attrs["n_clusters"] == 3
    assert attrs["params"] == fitted.get_params()
    assert attrs["dkmeans_version"] == dkmeans.__version__
    np.testing.assert_array_equal(read_centers(out), fitted.cluster_centers_)


def test_params_are_stored_as_json(tmp_path, source):
    path, data = source
    init = data[:3].astype(np.float64)
    km = KMeans(3, init=init, random_state=np.random.default_rng(0)).fit(data)
    km.set_params(checkpoint=tmp_path / "c")  # a path object
    write_result(tmp_path / "out.zarr", km, data)
    params = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["params"]
    json.dumps(params)
    assert params["init"] == init.tolist()
    assert params["checkpoint"] == str(tmp_path / "c")
    assert params["random_state"].startswith("Generator")


def test_existing_result_is_refused_then_replaced(tmp_path, source, fitted):
    path, _ = source
    out = tmp_path / "out.zarr"
    write_result(out, fitted, path)
    with pytest.raises(OutputExistsError, match="exists; choose another path or pass --overwrite"):
        write_result(out, fitted, path)
    again = KMeans(2, random_state=0).fit(path)
    write_result(out, again, path, overwrite=True)
    assert read_centers(out).shape == (2, 2)
    assert output_kind(out) == "fit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]


@pytest.mark.parametrize("make", ["folder", "file", "zarr array", "empty folder"])
def test_what_dkmeans_did_not_write_is_never_replaced(tmp_path, source, fitted, make):
    path, _ = source
    out = tmp_path / "out.zarr"
    if make == "folder":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif make == "file":
        out.write_text("mine")
    elif make == "zarr array":
        zarr.create_array(store=str(out), data=np.arange(3))
    else:
        out.mkdir()
    before = tree_digest(tmp_path)
    assert output_kind(out) == "other"
    with pytest.raises(OutputExistsError, match="not a dkmeans result.*even with --overwrite"):
        write_result(out, fitted, path, overwrite=True)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("out", "inputs", "relation"),
    [
        ("in.zarr", ["in.zarr"], "is"),
        ("in.zarr/result.zarr", ["in.zarr"], "lies inside"),
        ("group.zarr", ["group.zarr/x"], "is"),  # an array inside a group: the group counts
        ("group.zarr/r.zarr", ["group.zarr/x"], "lies inside"),
        (".", ["in.zarr"], "contains"),
        ("..", ["group.zarr/x"], "contains"),
    ],
)
def test_output_may_not_touch_an_input(tmp_path, source, monkeypatch, out, inputs, relation):
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("x", data=np.zeros((4, 2)))
    monkeypatch.chdir(tmp_path)
    before = tree_digest(tmp_path)
    with pytest.raises(
        UnsafeOutputError, match=f"the output {re.escape(out)} {relation} the input"
    ):
        with claim_output(out, overwrite=True, inputs=inputs):
            pass
    assert tree_digest(tmp_path) == before


def test_a_second_writer_is_refused_while_the_first_holds_the_claim(tmp_path, source, fitted):
    path, _ = source
    out = tmp_path / "out.zarr"
    with claim_output(out) as first:
        with pytest.raises(
            OutputBusyError, match=rf"being written by another dkmeans \(process {os.getpid()}"
        ):
            write_result(out, fitted, path)
        with pytest.raises(OutputBusyError):
            write_result(out, fitted, path, overwrite=True)
        write_result(first, fitted, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_result(out, fitted, path)  # finished: the later run refuses without --overwrite


def test_a_claim_taken_over_meanwhile_writes_nothing(tmp_path, source, fitted):
    path, _ = source
    out = tmp_path / "out.zarr"
    with claim_output(out) as first:
        claim = tmp_path / ".out.zarr.dkmeans-claim"
        claim.write_text(json.dumps({"token": "other", "pid": 1, "host": "elsewhere"}))
        with pytest.raises(OutputBusyError, match="took over the claim"):
            write_result(first, fitted, path)
    assert not out.exists() and claim.exists()  # the other process's claim is kept


def test_claims_and_leftovers_of_killed_runs_are_cleaned_up(tmp_path, source, fitted):
    path, _ = source
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = finished.pid  # a process of this machine that no longer runs
    (tmp_path / ".out.zarr.dkmeans-claim").write_text(
        json.dumps({"token": "x", "pid": dead, "host": socket.gethostname()})
    )
    ours = tmp_path / ".out.zarr.tmp-0123abcd"
    ours.mkdir()
    (ours / ".dkmeans-incomplete").write_text("x")
    (ours / "zarr.json").write_text("{}")
    foreign = tmp_path / ".out.zarr.tmp-deadbeef"  # the name alone is not enough
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    write_result(tmp_path / "out.zarr", fitted, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.zarr.tmp-deadbeef", "in.zarr", "out.zarr",
    ]  # fmt: skip


def test_claim_of_a_live_process_elsewhere_is_respected(tmp_path, source, fitted):
    path, _ = source
    claim = tmp_path / ".out.zarr.dkmeans-claim"
    claim.write_text(json.dumps({"token": "x", "pid": 1, "host": "other-host", "started": "t"}))
    with pytest.raises(OutputBusyError, match=f"process 1 on other-host since t.*delete {claim}"):
        write_result(tmp_path / "out.zarr", fitted, path)


def test_output_in_a_folder_that_cannot_be_made(tmp_path, source, fitted):
    path, _ = source
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputNotWritableError, match="cannot write"):
        write_result(tmp_path / "file" / "out.zarr", fitted, path)
    with pytest.raises(OutputNotWritableError, match="is not a folder"):
        write_result(tmp_path / "file" / "out.zarr", fitted, path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_is_refused_before_any_work(tmp_path, source, fitted):
    path, _ = source
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    with pytest.raises(OutputNotWritableError, match="Permission denied"):
        write_result(folder / "out.zarr", fitted, path)


def test_incomplete_output_is_refused_by_readers_and_replaceable(tmp_path, source, fitted):
    path, _ = source
    out = tmp_path / "out.zarr"
    write_result(out, fitted, path)
    (out / ".dkmeans-incomplete").write_text("x")  # as an interrupted copy leaves it
    assert output_kind(out) == "incomplete"
    with pytest.raises(ValueError, match="incomplete dkmeans result"):
        read_centers(out)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_result(out, fitted, path)
    write_result(out, fitted, path, overwrite=True)
    np.testing.assert_array_equal(read_centers(out), fitted.cluster_centers_)


def test_failed_write_leaves_nothing(tmp_path, source, fitted, monkeypatch):
    path, _ = source

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(result_store, "_store_labels", broken)
    with pytest.raises(OSError, match="No space left"):
        write_result(tmp_path / "out.zarr", fitted, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]
    with pytest.raises(OSError, match="No space left"):
        write_result("memory://dkmeans-failed/out.zarr", fitted, path)
    assert fsspec.filesystem("memory").find("/dkmeans-failed") == []


def test_failed_overwrite_keeps_the_old_output(tmp_path, source, fitted, monkeypatch):
    path, _ = source
    out = tmp_path / "out.zarr"
    write_result(out, fitted, path)
    monkeypatch.setattr(result_store, "_store_labels", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_result(out, fitted, path, overwrite=True)
    np.testing.assert_array_equal(read_centers(out), fitted.cluster_centers_)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]


def test_memory_url_output(source, fitted):
    path, _ = source
    out = "memory://dkmeans-store-test/out.zarr"
    write_result(out, fitted, path)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_result(out, fitted, path)
    write_result(out, KMeans(2, random_state=0).fit(path), path, overwrite=True)
    assert read_centers(out).shape == (2, 2)
    fs = fsspec.filesystem("memory")
    assert sorted(fs.ls("/dkmeans-store-test", detail=False)) == ["/dkmeans-store-test/out.zarr"]
    assert not fs.exists("/dkmeans-store-test/out.zarr/.dkmeans-incomplete")


def test_labels_chunked_like_input_rows_even_from_other_blocks(tmp_path, source):
    path, data = source
    labels = da.from_array(np.arange(300) % 3, chunks=50)  # 50 is not a multiple of 7
    write_labels(tmp_path / "labels.zarr", labels, path)
    written = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert written.chunks == (7,) and written.dtype == np.int32
    np.testing.assert_array_equal(written[...], np.arange(300) % 3)


@pytest.mark.parametrize("make", ["nothing", "array", "group"])
def test_read_centers_of_something_else(tmp_path, make):
    path = tmp_path / "thing.zarr"
    if make == "array":
        zarr.create_array(store=str(path), data=np.zeros((3, 2)))
    elif make == "group":
        zarr.open_group(str(path), mode="w")
    with pytest.raises(ValueError, match="not a dkmeans fit result"):
        read_centers(path)
