"""Checkpoint and resume: atomic, pickle-free, bitwise-identical after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr

from dkmeans import KMeans
from dkmeans.checkpoint import CheckpointMismatchError

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
