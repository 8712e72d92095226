"""Local paths and fsspec URLs behind one small interface, and object-store failures in
one line.

Local paths (and ``file://`` URLs) are handled with :mod:`os`, where a rename is
atomic; every other URL goes through fsspec, whose file system the URL's protocol
picks. Credentials and endpoints of object stores come from fsspec's configuration:
the usual environment variables of each backend (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for s3fs), ``FSSPEC_<PROTOCOL>_<KEY>``
variables, or :func:`set_storage_options`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StorageAccessError(OSError):
    """An object store refused the credentials, or could not be reached."""


def is_url(path: str | os.PathLike) -> bool:
    """True for fsspec URLs other than ``file://``."""
    path = os.fspath(path)
    return "://" in path and not path.startswith("file://")


class LocalFileSystem:
    """The few file operations dkmeans needs, on local paths (``os``: renames are atomic)."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)

    @staticmethod
    def rm(path: str, recursive: bool = True) -> None:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    @staticmethod
    def mv(source: str, target: str) -> None:
        os.replace(source, target)

    @staticmethod
    def makedirs(path: str, exist_ok: bool = True) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    @staticmethod
    def ls(path: str, detail: bool = False) -> list[str]:
        return [os.path.join(path, name) for name in os.listdir(path)]

    @staticmethod
    def cat_file(path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    @staticmethod
    def pipe_file(path: str, value: bytes, mode: str = "overwrite") -> None:
        with open(path, "xb" if mode == "create" else "wb") as file:
            file.write(value)


def filesystem(path: str | os.PathLike) -> tuple[Any, str]:
    """A file system and the path inside it: :class:`LocalFileSystem` and an absolute
    path for local paths, fsspec's for URLs.

    Raises
    ------
    ImportError
        If the URL's protocol needs a package that is not installed.
    """
    path = os.fspath(path)
    if not is_url(path):
        return LocalFileSystem(), os.path.abspath(path.removeprefix("file://"))
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(path)
    except ImportError as error:
        protocol = path.split("://", 1)[0]
        raise ImportError(
            f"{path!r} needs the fsspec backend of {protocol!r}: pip install 'dkmeans[cloud]' "
            f"({error})"
        ) from error


def unparse(original: str | os.PathLike, inner: str) -> str:
    """``inner`` (a path from :func:`filesystem`) with the protocol of ``original``."""
    original = os.fspath(original)
    if is_url(original):
        return f"{original.split('://', 1)[0]}://{inner.lstrip('/')}"
    return inner


def location(path: str | os.PathLike) -> str:
    """A canonical name of ``path`` for comparisons: the real path of a local path,
    ``protocol://path`` of a URL; no trailing slash."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.realpath(path.removeprefix("file://"))
    fs, inner = filesystem(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{inner.strip('/')}"


def within(inner: str, outer: str) -> bool:
    """Whether canonical location ``inner`` is ``outer`` or lies inside it."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def set_storage_options(options: dict[str, Any], urls: list[str]) -> None:
    """Give ``options`` (credentials, ``endpoint_url``, ...) to fsspec for the protocol
    of every URL in ``urls``: every file system dkmeans, Zarr or Dask opens for them
    then uses these options (fsspec's configuration, ``fsspec.config.conf``)."""
    from fsspec.config import conf

    for url in urls:
        if is_url(url):
            conf.setdefault(url.split("://", 1)[0], {}).update(options)


#: Names of the exception classes (botocore's, aiohttp's) that say an object store
#: could not be reached or refused the credentials; matched by name so that no backend
#: has to be imported.
_STORE_FAILURES = {
    "BotoCoreError",
    "NoCredentialsError",
    "EndpointConnectionError",
    "ClientConnectorError",
    "ServerTimeoutError",
    "ClientOSError",
}


def describe_storage_error(error: BaseException, path: str | None = None) -> str | None:
    """One line on an object store's refusal or absence, or None for other errors."""
    where = f" for {path}" if path else ""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & _STORE_FAILURES:
        return (
            f"cannot use the object store{where}: {error}; check the endpoint and the "
            "credentials (environment variables or --storage-options)"
        )
    if path is not None and is_url(path) and isinstance(error, PermissionError):
        return (
            f"the object store refused access{where} ({error}): check the credentials "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --storage-options) and "
            "the permissions of the bucket"
        )
    if path is not None and is_url(path) and isinstance(error, (ConnectionError, TimeoutError)):
        return f"cannot reach the object store{where}: {error}; check the endpoint"
    return None


@contextmanager
def storage_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an object store's refusal or absence while using ``path`` into a
    :class:`StorageAccessError` with one clear line; other errors pass unchanged."""
    try:
        yield
    except StorageAccessError:
        raise
    except Exception as error:
        message = describe_storage_error(error, os.fspath(path))
        if message is None:
            raise
        raise StorageAccessError(message) from error
