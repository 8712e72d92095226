"""Start or reach a Dask cluster from a small config: a ``cluster_configs/*.yaml`` or a dict.

A config is a mapping whose ``kind`` key picks one entry of :data:`KINDS` (``local``,
``scheduler``, ``ssh``, ``slurm``, ``pbs``, ``kubernetes``); every other key is an
option of that kind, checked against the kind's schema before anything starts. The
cluster managers of the remote kinds are optional extras, imported only when a config
of their kind is used. ``cluster_configs/README.md`` documents every key.

Examples
--------
>>> client = connect({"kind": "local", "n_workers": 1, "dashboard_address": None})  # doctest: +SKIP
>>> client = connect("cluster_configs/slurm.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from distributed import Client
from distributed.security import Security

#: A schema maps every allowed key to the type (or tuple of types) its value may have,
#: or to the nested schema of a mapping value.
Schema = Mapping[str, Any]

#: Where a config came from when it was not read from a file.
DICT_SOURCE = "<config dict>"

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


class ClusterConfigError(ValueError):
    """A cluster config that does not follow the schema of its kind."""


@dataclass(frozen=True)
class ClusterKind:
    """One entry of the factory table: what a config of this kind may hold and how it starts.

    Attributes
    ----------
    schema : Schema
        Allowed keys (besides ``kind``) and their types.
    required : tuple of str
        Keys that must be present.
    start : callable
        ``start(options) -> Client`` with the validated options.
    needs : tuple of str
        Modules the kind imports lazily (the cluster manager and what it runs on).
    extra : str
        The ``pip install 'dkmeans[extra]'`` that provides ``needs``.
    """

    schema: Schema
    required: tuple[str, ...]
    start: Callable[[dict[str, Any]], Client]
    needs: tuple[str, ...] = ()
    extra: str = ""


def import_extra(module: str, purpose: str, extra: str) -> ModuleType:
    """Import an optional dependency, or fail naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the {module!r} package: pip install 'dkmeans[{extra}]'"
        ) from error


# factories ----------------------------------------------------------------------------


#: Where a local cluster's dashboard listens when the config names no host.
LOCAL_DASHBOARD = "127.0.0.1:8787"


def _start_local(options: dict[str, Any]) -> Client:
    # the client starts the LocalCluster itself, so closing the client stops it
    address = options.get("dashboard_address", LOCAL_DASHBOARD)
    if isinstance(address, str) and address.startswith(":"):
        # Dask binds ":8787" to every interface; the dashboard (which can run code on
        # the cluster) stays on this machine unless the config names a host
        address = f"127.0.0.1{address}"
    return Client(**{**options, "dashboard_address": address})


def client_security(options: Mapping[str, Any]) -> Security | None:
    """The TLS :class:`~distributed.security.Security` of a ``scheduler`` config, if any."""
    security = options.get("security")
    return None if security is None else Security(**security)


def _start_scheduler(options: dict[str, Any]) -> Client:
    extra = {"timeout": options["timeout"]} if "timeout" in options else {}
    return Client(options["address"], security=client_security(options), **extra)


def _start_ssh(options: dict[str, Any]) -> Client:
    from distributed import SSHCluster

    return Client(SSHCluster(**options))


def _jobqueue_starter(class_name: str) -> Callable[[dict[str, Any]], Client]:
    def start(options: dict[str, Any]) -> Client:
        jobqueue = importlib.import_module("dask_jobqueue")
        options = dict(options)
        jobs = options.pop("jobs", 1)
        cluster = getattr(jobqueue, class_name)(**options)
        cluster.scale(jobs=jobs)
        return Client(cluster)

    return start


def _start_kubernetes(options: dict[str, Any]) -> Client:
    operator = importlib.import_module("dask_kubernetes.operator")
    return Client(operator.KubeCluster(**options))


# schemas ------------------------------------------------------------------------------

_LOCAL: Schema = {
    "n_workers": int,
    "threads_per_worker": int,
    "processes": bool,
    "memory_limit": (str, int),
    "dashboard_address": (str, type(None)),
    "local_directory": str,
}

_SECURITY: Schema = {
    "tls_ca_file": str,
    "tls_client_cert": str,
    "tls_client_key": str,
    "tls_ciphers": str,
    "require_encryption": bool,
}

_SCHEDULER: Schema = {"address": str, "timeout": (str, int), "security": _SECURITY}

_SSH: Schema = {
    "hosts": list,
    "connect_options": dict,
    "worker_options": dict,
    "scheduler_options": dict,
    "remote_python": str,
}

_JOBQUEUE: Schema = {
    "jobs": int,
    "cores": int,
    "memory": str,
    "processes": int,
    "queue": str,
    "account": str,
    "walltime": str,
    "interface": str,
    "local_directory": str,
    "log_directory": str,
    "job_extra_directives": list,
    "job_script_prologue": list,
    "worker_extra_args": list,
}

_KUBERNETES: Schema = {
    "name": str,
    "namespace": str,
    "image": str,
    "n_workers": int,
    "resources": dict,
    "env": dict,
    "worker_command": str,
    "scheduler_service_type": str,
    "idle_timeout": int,
    "shutdown_on_close": bool,
}

#: The factory table: ``kind`` -> what it accepts and how it starts.
KINDS: dict[str, ClusterKind] = {
    "local": ClusterKind(_LOCAL, (), _start_local),
    "scheduler": ClusterKind(_SCHEDULER, ("address",), _start_scheduler),
    "ssh": ClusterKind(_SSH, ("hosts",), _start_ssh, needs=("asyncssh",), extra="ssh"),
    "slurm": ClusterKind(
        _JOBQUEUE,
        ("cores", "memory"),
        _jobqueue_starter("SLURMCluster"),
        needs=("dask_jobqueue",),
        extra="slurm",
    ),
    "pbs": ClusterKind(
        {**_JOBQUEUE, "resource_spec": str},
        ("cores", "memory"),
        _jobqueue_starter("PBSCluster"),
        needs=("dask_jobqueue",),
        extra="pbs",
    ),
    "kubernetes": ClusterKind(
        _KUBERNETES,
        ("image",),
        _start_kubernetes,
        needs=("dask_kubernetes",),
        extra="kubernetes",
    ),
}


# validation ---------------------------------------------------------------------------


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in _as_tuple(types))


def _has_type(value: Any, types: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in _as_tuple(types)  # YAML's true is not an integer here
    return isinstance(value, types)


def check_options(
    options: Mapping[str, Any], schema: Schema, source: str, prefix: str = ""
) -> None:
    """Check every key of ``options`` against ``schema``.

    Raises
    ------
    ClusterConfigError
        For an unknown key or a value of the wrong type; the message names the key
        (dotted for nested keys) and ``source``.
    """
    for key, value in options.items():
        name = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            raise ClusterConfigError(f"{source}: unknown key {name!r} (allowed here: {allowed})")
        nested = isinstance(schema[key], Mapping)
        expected = dict if nested else schema[key]
        if not _has_type(value, expected):
            raise ClusterConfigError(
                f"{source}: key {name!r} must be {_type_names(expected)}, "
                f"got {type(value).__name__} {value!r}"
            )
        if nested:
            check_options(value, schema[key], source, prefix=f"{name}.")


def validate_config(config: Mapping[str, Any], source: str = DICT_SOURCE) -> dict[str, Any]:
    """Check a config against the schema of its ``kind``; return it as a plain dict.

    Raises
    ------
    ClusterConfigError
        For a missing or unknown ``kind``, an unknown key, a wrong type or a missing
        required key; the message names the key and ``source``.
    """
    if not isinstance(config, Mapping):
        raise ClusterConfigError(
            f"{source}: a cluster config must be a mapping of keys to values, "
            f"got {type(config).__name__}"
        )
    kind_name = config.get("kind")
    if kind_name not in KINDS:
        raise ClusterConfigError(
            f"{source}: key 'kind' must be one of {', '.join(KINDS)}, got {kind_name!r}"
        )
    kind = KINDS[kind_name]
    options = {key: value for key, value in config.items() if key != "kind"}
    check_options(options, kind.schema, source)
    missing = [key for key in kind.required if key not in options]
    if missing:
        raise ClusterConfigError(f"{source}: kind {kind_name!r} needs key {missing[0]!r}")
    return dict(config)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a YAML cluster config (``yaml.safe_load``; needs pyyaml).

    Raises
    ------
    ImportError
        When pyyaml is missing (extra ``cluster``).
    FileNotFoundError
        When there is no file at ``path``.
    ClusterConfigError
        When the file does not follow the schema (see :func:`validate_config`).
    """
    yaml = import_extra("yaml", "reading a YAML cluster config", "cluster")
    source = os.fspath(path)
    with open(source, encoding="utf-8") as stream:
        try:
            config = yaml.safe_load(stream)
        except yaml.YAMLError as error:
            raise ClusterConfigError(f"{source}: not valid YAML: {error}") from error
    return validate_config(config, source)


def load_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A validated config from a YAML path or a mapping."""
    if isinstance(config, Mapping):
        return validate_config(config)
    return read_config(config)


def connect(config: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> Client:
    """A :class:`distributed.Client` for the cluster a config describes.

    Parameters
    ----------
    config : str, path or mapping
        A YAML file with the schema of ``cluster_configs/README.md`` (needs the
        ``cluster`` extra for pyyaml), or the same content as a mapping.
    **overrides
        Keys that replace the config's own (e.g. ``dashboard_address=":0"``),
        validated like them.

    Returns
    -------
    distributed.Client
        Connected and ready. For ``kind: local`` the client owns its cluster and
        ``client.close()`` stops it; for ``ssh``, ``slurm``, ``pbs`` and
        ``kubernetes``, ``client.shutdown()`` stops the cluster that was started
        (otherwise it stops when the interpreter exits); for ``scheduler``,
        ``client.close()`` only disconnects.

    Raises
    ------
    ClusterConfigError
        For a config that does not follow its kind's schema (the message names the
        key and the file).
    ImportError
        When pyyaml or the kind's cluster manager is missing (the message names the
        extra to install).
    """
    spec = load_config(config)
    if overrides:
        source = DICT_SOURCE if isinstance(config, Mapping) else os.fspath(config)
        spec = validate_config({**spec, **overrides}, f"{source} (with overrides)")
    kind_name = spec.pop("kind")
    kind = KINDS[kind_name]
    for module in kind.needs:
        import_extra(module, f"cluster kind {kind_name!r}", kind.extra)
    return kind.start(spec)
