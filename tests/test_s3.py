"""Inputs, outputs and checkpoints on a real S3-compatible server: moto's, in this
process, on 127.0.0.1 only, with an IAM user of its own whose key the tests use.

moto checks credentials only in the tests about them: its signature check also
rejects s3fs's valid listing requests (moto 5.2, server mode)."""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from dkmeans import KMeans
from dkmeans.cli import main
from dkmeans.fs import StorageAccessError
from dkmeans.io import open_zarr_array
from dkmeans.store import read_centers

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

BUCKET = "dkmeans-test"
INPUT = f"s3://{BUCKET}/in.zarr"


@contextmanager
def checking_credentials() -> Iterator[None]:
    """moto checks the credentials of every request in the block."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    previous = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


@pytest.fixture(scope="module")
def s3():
    """The server, the environment that reaches it, and an s3fs file system on it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="dkmeans")
    everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    iam.put_user_policy(
        UserName="dkmeans",
        PolicyName="all",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [everything]}),
    )
    key = iam.create_access_key(UserName="dkmeans")["AccessKey"]
    env = {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    fs = s3fs.S3FileSystem(
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=endpoint,
        skip_instance_cache=True,
    )
    fs.mkdir(BUCKET)
    rng = np.random.default_rng(4)
    data = (rng.normal(size=(900, 3)) + rng.integers(0, 3, size=(900, 1)) * 6).astype(np.float32)
    options = {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"]}
    zarr.create_array(
        store=INPUT,
        data=data,
        chunks=(300, 3),
        storage_options={**options, "endpoint_url": endpoint},
    )
    try:
        yield SimpleNamespace(endpoint=endpoint, env=env, fs=fs, data=data)
    finally:
        server.stop()


@pytest.fixture
def env(s3, monkeypatch):
    """This process reaches the server through the environment, as a user's would;
    fsspec's configuration and cached file systems are restored afterwards."""
    from fsspec.config import conf

    saved = copy.deepcopy(conf)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    before = digest(s3.fs, f"{BUCKET}/in.zarr")
    yield s3
    assert digest(s3.fs, f"{BUCKET}/in.zarr") == before  # every command left the input alone
    conf.clear()
    conf.update(saved)
    s3fs.S3FileSystem.clear_instance_cache()
    for name in s3.fs.ls(BUCKET, refresh=True):
        if not name.endswith("/in.zarr"):
            s3.fs.rm(name, recursive=True)


def digest(fs, prefix: str) -> str:
    """Hash of every object's name and bytes under ``prefix``."""
    fs.invalidate_cache()
    hashed = hashlib.sha256()
    for name in sorted(fs.find(prefix)):
        hashed.update(name.encode())
        hashed.update(fs.cat_file(name))
    return hashed.hexdigest()


def bucket(s3) -> list[str]:
    return sorted(name.rsplit("/", 1)[1] for name in s3.fs.ls(BUCKET, refresh=True))


def run(*args: str) -> tuple[int, list[str]]:
    """``dkmeans ARGS`` in this process: exit status and the lines of stderr."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    gc.collect()  # file systems of earlier tests say "Unclosed client session" when collected
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        status = main([*args, "--quiet"])
    return status, err.getvalue().splitlines()


def test_fit_and_predict_from_s3_to_s3(s3, env, tmp_path, monkeypatch, capsys):
    """Credentials and endpoint from the environment, as a user's."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", INPUT, "--n-clusters", "3", "--seed", "0", "--json", "--quiet"]
    assert main([*args, "--out", f"s3://{BUCKET}/r.zarr"]) == 0
    expected = KMeans(3, random_state=0).fit(s3.data)
    summary = json.loads(capsys.readouterr().out)
    assert summary["inertia"] == pytest.approx(expected.inertia_, rel=1e-6)
    np.testing.assert_allclose(read_centers(f"s3://{BUCKET}/r.zarr"), expected.cluster_centers_)
    status, err = run("predict", f"s3://{BUCKET}/r.zarr", INPUT, "--out", f"s3://{BUCKET}/l.zarr")
    assert status == 0, err
    labels = zarr.open_array(f"s3://{BUCKET}/l.zarr", mode="r")
    result = zarr.open_group(f"s3://{BUCKET}/r.zarr", mode="r")
    np.testing.assert_array_equal(labels[...], result["labels"][...])
    assert labels.attrs["dkmeans_result"] == "labels" and labels.chunks == (300,)
    assert bucket(s3) == ["in.zarr", "l.zarr", "r.zarr"]  # no claim, no temporary
    assert not s3.fs.exists(f"{BUCKET}/r.zarr/.dkmeans-incomplete")
    assert list(tmp_path.iterdir()) == []


def test_s3_output_is_replaced_only_when_it_is_a_dkmeans_result(s3, env):
    out = f"s3://{BUCKET}/r.zarr"
    assert run("fit", INPUT, "--n-clusters", "3", "--seed", "0", "--out", out)[0] == 0
    assert run("fit", INPUT, "--n-clusters", "2", "--out", out) == (
        2,
        [f"dkmeans fit: error: {out} exists; choose another path or pass --overwrite"],
    )
    assert run("fit", INPUT, "--n-clusters", "2", "--out", out, "--overwrite")[0] == 0
    assert read_centers(out).shape == (2, 3)
    assert s3.fs.find(f"{BUCKET}/r.zarr/labels") and bucket(s3) == ["in.zarr", "r.zarr"]
    s3.fs.pipe_file(f"{BUCKET}/other/notes.txt", b"mine")
    for target, message in [
        (INPUT, f"the output {INPUT} is the input {INPUT}"),
        (f"{INPUT}/r.zarr", "lies inside the input"),
        (f"s3://{BUCKET}", "contains the input"),
        (f"s3://{BUCKET}/other", "exists and is not a dkmeans result"),
    ]:
        status, err = run("fit", INPUT, "--n-clusters", "2", "--out", target, "--overwrite")
        assert status == 2 and len(err) == 1 and message in err[0], err
    assert s3.fs.cat_file(f"{BUCKET}/other/notes.txt") == b"mine"


def test_interrupted_s3_write_is_refused_by_predict_and_repaired(s3, env):
    out = f"s3://{BUCKET}/r.zarr"
    assert run("fit", INPUT, "--n-clusters", "3", "--seed", "0", "--out", out)[0] == 0
    s3.fs.pipe_file(f"{BUCKET}/r.zarr/.dkmeans-incomplete", b"x")  # as a killed copy leaves it
    status, err = run("predict", out, INPUT, "--out", f"s3://{BUCKET}/l.zarr")
    assert status == 2 and "is an incomplete dkmeans result" in err[0] and len(err) == 1
    # a killed run's temporary output (marked) goes; an unmarked look-alike stays
    s3.fs.pipe_file(f"{BUCKET}/.r.zarr.tmp-0123abcd/.dkmeans-incomplete", b"x")
    s3.fs.pipe_file(f"{BUCKET}/.r.zarr.tmp-0123abcd/labels/c/0", b"x")
    s3.fs.pipe_file(f"{BUCKET}/.r.zarr.tmp-deadbeef/notes.txt", b"mine")
    assert run("fit", INPUT, "--n-clusters", "3", "--out", out, "--overwrite")[0] == 0
    assert read_centers(out).shape == (3, 3)
    assert bucket(s3) == [".r.zarr.tmp-deadbeef", "in.zarr", "r.zarr"]


def test_second_writer_of_an_s3_output_is_refused(s3, env):
    claim = {"token": "t", "pid": 7, "host": "elsewhere", "started": "2026-01-01 00:00:00"}
    s3.fs.pipe_file(f"{BUCKET}/.r.zarr.dkmeans-claim", json.dumps(claim).encode())
    status, err = run("fit", INPUT, "--n-clusters", "2", "--out", f"s3://{BUCKET}/r.zarr")
    assert status == 2 and len(err) == 1
    assert "is being written by another dkmeans (process 7 on elsewhere" in err[0]
    assert bucket(s3) == [".r.zarr.dkmeans-claim", "in.zarr"]


def test_checkpoint_on_s3(s3, env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"s3://{BUCKET}/ck.npz"
    args = ("fit", INPUT, "--n-clusters", "3", "--seed", "0", "--checkpoint", url)
    assert run(*args)[0] == 0
    assert s3.fs.exists(f"{BUCKET}/ck.npz") and list(tmp_path.iterdir()) == []
    assert run(*args)[0] == 0  # resumed from the finished checkpoint
    s3.fs.pipe_file(f"{BUCKET}/ck.npz", b"junk")
    assert run(*args) == (
        2,
        [f"dkmeans fit: error: checkpoint {url} is damaged: not a NumPy .npz archive; "
         "delete it or choose another path"],
    )  # fmt: skip


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("failure", ["wrong key", "wrong secret", "closed port"])
def test_object_store_failures_in_one_line(s3, env, tmp_path, monkeypatch, where, failure):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # an unreachable endpoint fails at once
    options = {
        "wrong key": {"key": "AKIAWRONGWRONGWRONG0", "secret": "wrong"},
        "wrong secret": {"key": s3.env["AWS_ACCESS_KEY_ID"], "secret": "wrong"},
        "closed port": {"endpoint_url": f"http://127.0.0.1:{closed_port()}"},
    }[failure]
    local = tmp_path / "in.zarr"
    zarr.create_array(store=str(local), data=s3.data, chunks=(300, 3))
    source = INPUT if where == "input" else str(local)
    with checking_credentials():
        status, err = run(
            "fit", source, "--n-clusters", "2", "--out", f"s3://{BUCKET}/r.zarr",
            "--storage-options", json.dumps(options),
        )  # fmt: skip
    assert status == 2 and len(err) == 1, err
    expected = "Could not connect" if failure == "closed port" else "refused access"
    assert err[0].startswith("dkmeans fit: error: ") and expected in err[0]
    assert "credentials" in err[0] or "endpoint" in err[0]
    assert bucket(s3) == ["in.zarr"]


def test_python_gets_a_storage_access_error(s3, env):
    with (
        checking_credentials(),
        pytest.raises(StorageAccessError, match="refused access for s3://.*credentials"),
    ):
        open_zarr_array(INPUT, storage_options={"key": "AKIAWRONGWRONGWRONG0", "secret": "x"})


def test_wrong_secret_in_the_environment_exits_2_in_one_line(s3, tmp_path):
    """As a user meets it: no traceback, not even of the reads the failure left pending."""
    with checking_credentials():
        run = subprocess.run(
            [sys.executable, "-m", "dkmeans.cli", "fit", INPUT, "--n-clusters", "2"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, **s3.env, "AWS_SECRET_ACCESS_KEY": "wrong"},
        )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"dkmeans fit: error: the object store refused access for {INPUT} (Forbidden): check "
        "the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --storage-options) "
        "and the permissions of the bucket"
    ]
