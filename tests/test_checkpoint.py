"""Checkpoint and resume: atomic, pickle-free, bitwise-identical after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile

import fsspec
import numpy as np
import pytest
import zarr

from dkmeans import KMeans
from dkmeans.checkpoint import CheckpointError, CheckpointMismatchError
from dkmeans.cli import main

FIT = """
import sys
from dkmeans import KMeans
KMeans(4, random_state=3, tol=0, max_iter={max_iter}, persist=False, verbose=True,
       checkpoint=sys.argv[2]).fit(sys.argv[1])
"""


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory):
    """Overlapping clusters: Lloyd takes many iterations with tol=0."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60_000, 6)) + rng.integers(0, 3, size=(60_000, 1)) * 0.7
    path = tmp_path_factory.mktemp("data") / "x.zarr"
    z = zarr.create_array(store=str(path), shape=X.shape, chunks=(6000, 6), dtype="f8")
    z[:] = X
    return str(path)


def header(path) -> dict:
    with np.load(path, allow_pickle=False) as saved:
        return json.loads(saved["header"].tobytes().decode())


def test_resume_after_sigkill_is_bitwise_identical(slow_store, tmp_path):
    checkpoint = tmp_path / "fit.npz"
    uninterrupted = KMeans(4, random_state=3, tol=0, max_iter=120, persist=False).fit(slow_store)
    assert uninterrupted.n_iter_ > 20
    process = subprocess.Popen(
        [sys.executable, "-c", FIT.format(max_iter=120), slow_store, str(checkpoint)],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:
        if "iteration 5:" in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = header(checkpoint)
    # the line is printed just before the pass is saved
    assert 4 <= saved["iteration"] < uninterrupted.n_iter_  # killed in the middle
    resumed = KMeans(4, random_state=3, tol=0, max_iter=120, persist=False, checkpoint=checkpoint)
    resumed.fit(slow_store)
    np.testing.assert_array_equal(resumed.cluster_centers_, uninterrupted.cluster_centers_)
    assert resumed.inertia_ == uninterrupted.inertia_
    assert resumed.n_iter_ == uninterrupted.n_iter_
    assert header(checkpoint)["iteration"] == uninterrupted.n_iter_
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_finished_checkpoint_gives_the_result_without_lloyd_passes(slow_store, tmp_path):
    checkpoint = tmp_path / "fit.npz"
    first = KMeans(4, random_state=1, max_iter=10, persist=False, checkpoint=checkpoint).fit(
        slow_store
    )
    again = KMeans(4, random_state=1, max_iter=10, persist=False, checkpoint=checkpoint)
    again.fit(slow_store)
    np.testing.assert_array_equal(again.cluster_centers_, first.cluster_centers_)
    assert again.inertia_ == first.inertia_


def test_checkpoint_for_other_parameters_or_data_is_refused(slow_store, tmp_path, blobs):
    checkpoint = tmp_path / "fit.npz"
    KMeans(4, random_state=1, max_iter=3, checkpoint=checkpoint).fit(slow_store)
    with pytest.raises(CheckpointMismatchError, match="other parameters.*n_clusters|params"):
        KMeans(5, random_state=1, max_iter=3, checkpoint=checkpoint).fit(slow_store)
    with pytest.raises(CheckpointMismatchError, match="other data"):
        KMeans(4, random_state=1, max_iter=3, checkpoint=checkpoint).fit(blobs[0][:, :4])


def test_checkpoint_holds_no_pickle(slow_store, tmp_path):
    checkpoint = tmp_path / "fit.npz"
    KMeans(4, random_state=1, max_iter=3, checkpoint=checkpoint).fit(slow_store)
    with np.load(checkpoint, allow_pickle=False) as saved:
        assert all(saved[name].dtype != object for name in saved.files)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    rng = np.random.default_rng(2)
    path = tmp_path_factory.mktemp("small") / "x.zarr"
    zarr.create_array(store=str(path), data=rng.normal(size=(2000, 3)), chunks=(500, 3))
    return str(path)


PARAMS = {"n_clusters": 4, "random_state": 1, "max_iter": 3, "tol": 0, "persist": False}


@pytest.fixture(scope="module")
def finished(small_store, tmp_path_factory):
    """The bytes of the checkpoint of a finished 3-iteration fit, and the fit."""
    checkpoint = tmp_path_factory.mktemp("finished") / "fit.npz"
    km = KMeans(**PARAMS, checkpoint=checkpoint).fit(small_store)
    return checkpoint.read_bytes(), km


@pytest.fixture
def saved(finished, tmp_path):
    """A copy of that checkpoint for the test to spoil, and the fit."""
    checkpoint = tmp_path / "fit.npz"
    checkpoint.write_bytes(finished[0])
    return checkpoint, finished[1]


def rewrite(path, change) -> None:
    """Apply ``change(arrays, header)`` to a checkpoint's contents and save it again."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}
    head = json.loads(arrays.pop("header").tobytes().decode())
    change(arrays, head)
    np.savez(path, header=np.frombuffer(json.dumps(head).encode(), np.uint8), **arrays)


def _set(mapping, key, value):
    mapping[key] = value


DAMAGES = {
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), "unreadable .npz archive"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(2000)), "not a NumPy .npz archive"),
    "a zip of text": (
        lambda p: zipfile.ZipFile(p, "w").writestr("header.npy", "hello"),
        "unreadable .npz archive",
    ),
    "no header": (lambda p: rewrite(p, lambda a, h: h.clear()), "format"),
    "header not JSON": (
        lambda p: np.savez(p, header=np.frombuffer(b"\xff{", np.uint8)),
        "its header is not JSON",
    ),
    "three centres for four clusters": (
        lambda p: rewrite(p, lambda a, h: _set(a, "centers_0", a["centers_0"][:3])),
        "'centers_0' has shape (3, 3) and dtype float64 where the fit needs floating point "
        "of shape (4, 3)",
    ),
    "NaN centres": (
        lambda p: rewrite(
            p, lambda a, h: _set(a, "final_centers_0", a["final_centers_0"] * np.nan)
        ),
        "'final_centers_0' holds NaN or infinity",
    ),
    "integer centres": (
        lambda p: rewrite(p, lambda a, h: _set(a, "initial_0", a["initial_0"].astype(int))),
        "'initial_0' has shape (4, 3) and dtype int64",
    ),
    "missing array": (
        lambda p: rewrite(p, lambda a, h: a.pop("final_counts_0")),
        "the array 'final_counts_0' is missing",
    ),
    "two runs": (lambda p: rewrite(p, lambda a, h: _set(h, "runs", 2)), "it holds 2 runs"),
    "iteration past max_iter": (
        lambda p: rewrite(p, lambda a, h: _set(h, "iteration", 99)),
        "iteration 99 is not in 0..max_iter=3",
    ),
    "n_iter missing": (
        lambda p: rewrite(p, lambda a, h: h.pop("n_iter")),
        "'n_iter' is not a list of 1 counts",
    ),
    "a result of another run": (
        lambda p: rewrite(p, lambda a, h: _set(h, "final", {"5": [1.0, 2]})),
        "'final' names run '5' of 1",
    ),
    "object seeds": (
        lambda p: rewrite(p, lambda a, h: _set(a, "seeds", a["seeds"].astype(float))),
        "'seeds' is not a non-empty array of integers",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_is_refused_in_one_line(small_store, saved, damage):
    checkpoint, _ = saved
    spoil, problem = DAMAGES[damage]
    spoil(checkpoint)
    with pytest.raises(CheckpointError) as raised:
        KMeans(**PARAMS, checkpoint=checkpoint).fit(small_store)
    message = str(raised.value)
    assert message.startswith(f"checkpoint {checkpoint} is damaged: ") or "format" in message
    assert str(checkpoint) in message and problem in message
    assert "pickle" not in message and "\n" not in message


def test_damaged_checkpoint_exits_2_from_the_command_line(small_store, saved, capsys):
    checkpoint, _ = saved
    checkpoint.write_bytes(os.urandom(100))
    args = ["fit", small_store, "--n-clusters", "4", "--seed", "1", "--max-iter", "3"]
    assert main([*args, "--tol", "0", "--persist", "false", "--checkpoint", str(checkpoint)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"dkmeans fit: error: checkpoint {checkpoint} is damaged: not a NumPy .npz archive; "
        "delete it or choose another path"
    ]


def test_checkpoint_at_a_url(small_store, saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "memory://dkmeans-checkpoints/fit.npz"
    first = KMeans(**PARAMS, checkpoint=url).fit(small_store)
    assert fsspec.filesystem("memory").exists("/dkmeans-checkpoints/fit.npz")
    again = KMeans(**PARAMS, checkpoint=url).fit(small_store)  # resumes, finished
    np.testing.assert_array_equal(again.cluster_centers_, first.cluster_centers_)
    np.testing.assert_array_equal(first.cluster_centers_, saved[1].cluster_centers_)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.npz"]  # no ./memory: folder


def test_checkpoint_that_cannot_be_written_is_refused_before_any_work(small_store, tmp_path):
    (tmp_path / "file").write_text("x")
    checkpoint = tmp_path / "file" / "fit.npz"
    with pytest.raises(PermissionError, match=f"cannot write checkpoint {checkpoint}"):
        KMeans(**PARAMS, checkpoint=checkpoint, init="random").fit(small_store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
