"""cluster_configs/*.yaml and dkmeans.connect: schema, errors, and real clients.

Cluster managers that are not installed here (dask-jobqueue, asyncssh,
dask-kubernetes) are replaced by a recording stand-in that starts an empty
in-process LocalCluster, so that the factory of every kind runs for real; their
absence is also simulated to check the ImportError that names the extra.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import distributed
import pytest
import yaml
from distributed import Client, LocalCluster

import dkmeans
from dkmeans.connect import (
    KINDS,
    ClusterConfigError,
    client_security,
    connect,
    load_config,
    read_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "cluster_configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))
#: Kinds whose manager is an optional extra, with the modules it needs.
MANAGED = {kind: spec.needs for kind, spec in KINDS.items() if spec.needs}
SCHEDULER = "kind: scheduler\naddress: tcp://a:1\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def local_client() -> Iterator[Client]:
    """A client from cluster_configs/local.yaml, on a free dashboard port."""
    with connect(CONFIGS / "local.yaml", dashboard_address=":0") as client:
        yield client


# the files ----------------------------------------------------------------------------


def test_there_is_one_file_per_kind() -> None:
    assert sorted(path.stem for path in CONFIG_FILES) == sorted(KINDS)
    assert (CONFIGS / "README.md").is_file()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_every_file_follows_the_schema_of_its_kind(path: Path) -> None:
    config = read_config(path)
    assert config["kind"] == path.stem
    assert set(config) - {"kind"} <= set(KINDS[path.stem].schema)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_readme_documents_every_key(path: Path) -> None:
    readme = (CONFIGS / "README.md").read_text()
    for key in KINDS[path.stem].schema:
        assert f"`{key}`" in readme


@pytest.mark.parametrize("kind", sorted(MANAGED))
def test_missing_manager_names_the_extra(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in MANAGED[kind]:
        monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'dkmeans\[{KINDS[kind].extra}\]'"):
        connect(CONFIGS / f"{kind}.yaml")


class RecordingCluster(LocalCluster):
    """Stands in for a cluster manager: keeps its options, starts an empty local cluster."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.jobs: int | None = None
        super().__init__(n_workers=0, processes=False, dashboard_address=":0")

    def scale(self, n: int = 0, jobs: int | None = None, **kwargs: Any) -> None:
        self.jobs = jobs


def install_recording_managers(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("asyncssh", "dask_kubernetes"):
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    jobqueue = types.SimpleNamespace(SLURMCluster=RecordingCluster, PBSCluster=RecordingCluster)
    monkeypatch.setitem(sys.modules, "dask_jobqueue", jobqueue)
    operator = types.SimpleNamespace(KubeCluster=RecordingCluster)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", operator)
    monkeypatch.setattr(distributed, "SSHCluster", RecordingCluster)


@pytest.mark.parametrize("kind", sorted(MANAGED))
def test_managed_kind_starts_its_manager_with_the_file_options(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_recording_managers(monkeypatch)
    expected = read_config(CONFIGS / f"{kind}.yaml")
    del expected["kind"]
    client = connect(CONFIGS / f"{kind}.yaml")
    try:
        cluster = client.cluster
        if kind in ("slurm", "pbs"):
            assert cluster.jobs == expected.pop("jobs")
        assert cluster.options == expected
    finally:
        client.shutdown()


def test_scheduler_file_gives_tls_security() -> None:
    config = read_config(CONFIGS / "scheduler.yaml")
    security = client_security(config)
    assert config["address"].startswith("tls://")
    assert security.require_encryption is True
    assert security.tls_ca_file == config["security"]["tls_ca_file"]
    assert security.tls_client_key == config["security"]["tls_client_key"]


# errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("kind: local\nn_worker: 2\n", "'n_worker'"),
        ("kind: local\nn_workers: two\n", "'n_workers'"),
        ("kind: local\nn_workers: true\n", "'n_workers'"),
        ("kind: local\nprocesses: 1\n", "'processes'"),
        (
            "kind: scheduler\naddress: tcp://a:1\nsecurity: {tls_ca_file: 3}\n",
            "'security.tls_ca_file'",
        ),
        ("kind: scheduler\naddress: tcp://a:1\nsecurity: {tls_key: k.pem}\n", "'security.tls_key'"),
        ("kind: scheduler\naddress: tcp://a:1\nsecurity: yes\n", "'security'"),
        ("kind: slurm\ncores: 8\n", "'memory'"),
        ("kind: slurm\ncores: 8\nmemory: 8GiB\njobs: 2.5\n", "'jobs'"),
        ("kind: ssh\nhosts: node0\n", "'hosts'"),
        ("kind: yarn\n", "'kind'"),
        ("n_workers: 2\n", "'kind'"),
    ],
)
def test_bad_file_is_an_error_naming_key_and_file(text: str, key: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ClusterConfigError) as error:
        connect(path)
    assert key in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("text", ["", "- kind\n- local\n", "kind: local\n  bad: [indent\n"])
def test_file_that_is_not_a_mapping_is_an_error(text: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ClusterConfigError, match=str(path)):
        read_config(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        connect(tmp_path / "nowhere.yaml")


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ClusterConfigError, match=r"local\.yaml.*'n_workers'"):
        connect(CONFIGS / "local.yaml", n_workers="2")


def test_yaml_files_are_read_safely(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ClusterConfigError, match="not valid YAML"):
        read_config(path)


def test_without_pyyaml_files_need_the_extra_and_dicts_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, yaml.safe_dump({"kind": "local"}))
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ImportError, match=r"pip install 'dkmeans\[cluster\]'"):
        connect(path)
    assert load_config({"kind": "local", "n_workers": 1}) == {"kind": "local", "n_workers": 1}


def test_dict_errors_name_the_key_and_the_dict() -> None:
    with pytest.raises(ClusterConfigError, match=r"<config dict>: unknown key 'workers'"):
        connect({"kind": "local", "workers": 2})


# real clients -------------------------------------------------------------------------


def test_local_file_gives_a_working_client(local_client: Client) -> None:
    assert isinstance(local_client.dashboard_link, str)
    assert local_client.dashboard_link.startswith("http")
    workers = local_client.scheduler_info(n_workers=-1)["workers"].values()
    assert [w["nthreads"] for w in workers] == [1, 1]
    assert {w["memory_limit"] for w in workers} == {4 * 2**30}
    total = da.arange(1000, chunks=100).sum().compute(scheduler=local_client)
    assert total == 999 * 1000 // 2


def test_local_dashboard_listens_on_this_machine_only(local_client: Client) -> None:
    """local.yaml says ":8787" (here ":0"): no host, so 127.0.0.1, as the link says."""
    server = local_client.cluster.scheduler.http_server
    hosts = {sock.getsockname()[0] for sock in server._sockets.values()}
    assert hosts == {"127.0.0.1"}
    assert local_client.dashboard_link.startswith("http://127.0.0.1:")


def test_scheduler_kind_connects_to_a_running_scheduler(local_client: Client) -> None:
    config = {"kind": "scheduler", "address": local_client.scheduler.address, "timeout": "10s"}
    with connect(config) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
    # closing a scheduler-kind client only disconnects: the cluster still works
    assert local_client.submit(sum, [4, 5]).result() == 9


def test_dict_config_gives_a_working_client() -> None:
    config = {"kind": "local", "n_workers": 1, "processes": False, "dashboard_address": None}
    with dkmeans.connect(config) as client:
        assert isinstance(client, Client)
        assert client.submit(len, "abc").result() == 3
        cluster = client.cluster
    assert cluster.status.name == "closed"  # the client owned its local cluster
