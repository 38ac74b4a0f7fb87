"""Paths and filesystems: one way to open local paths, ``s3://`` (any S3-compatible endpoint) and URLs.

Everything goes through fsspec, so the same code reads a manifest from a laptop folder or a bucket. Ray
Data gets the same filesystem wrapped as a pyarrow filesystem. Credentials come from the environment
(``AWS_ACCESS_KEY_ID`` ...), never from job files.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from typing import IO, Any

import fsspec
import pyarrow.fs as pafs

from vidtune.config import StorageConfig


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def storage_options(uri: str, endpoint_url: str | None) -> dict[str, Any]:
    if uri.startswith(("s3://", "s3a://")) and endpoint_url:
        return {"client_kwargs": {"endpoint_url": endpoint_url}}
    return {}


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it (no scheme)."""
    if not is_remote(uri):
        uri = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, endpoint_url))
    return fs, path


def open_uri(uri: str, mode: str = "rb", endpoint_url: str | None = None) -> IO:
    fs, path = filesystem(uri, endpoint_url)
    return fs.open(path, mode)


_FETCHED: dict[tuple[str, str | None], str] = {}


def local_folder(uri: str, endpoint_url: str | None = None) -> str:
    """A folder a process can read with ``from_pretrained``: local paths and hub ids as they are, an
    ``s3://`` folder copied once per process. Training workers and preprocessing tasks on other nodes
    get the model this way, since a path on the driver's disk is not on theirs."""
    if not is_remote(uri):
        return uri
    key = (uri, endpoint_url)
    if key not in _FETCHED:
        fs, path = filesystem(uri, endpoint_url)
        dst = os.path.join(tempfile.mkdtemp(prefix="vidtune-fetch-"), posixpath.basename(path.rstrip("/")))
        os.makedirs(dst)
        for f in fs.ls(path.rstrip("/"), detail=False):
            fs.get(f, os.path.join(dst, posixpath.basename(f)), recursive=True)
        _FETCHED[key] = dst
    return _FETCHED[key]


def join(base: str, *parts: str) -> str:
    """Join for local paths and URIs alike (``posixpath`` keeps ``s3://`` intact)."""
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def resolve(path: str, root: str | None) -> str:
    """A manifest's video path: absolute paths and URLs as they are, others under ``root``."""
    if is_remote(path) or os.path.isabs(path) or not root:
        return path
    return join(root, path)


class Storage:
    """The job's ``storage.root``: datasets, staging areas, checkpoints and models live under it."""

    def __init__(self, cfg: StorageConfig):
        self.cfg = cfg
        self.root = cfg.root if is_remote(cfg.root) else os.path.abspath(os.path.expanduser(cfg.root))
        self.fs, self.base = filesystem(self.root, cfg.endpoint_url)

    @property
    def endpoint_url(self) -> str | None:
        return self.cfg.endpoint_url

    def uri(self, *parts: str) -> str:
        """What to show a user (``s3://bucket/x`` or ``/abs/x``)."""
        return join(self.root, *parts)

    def path(self, *parts: str) -> str:
        """The path inside :attr:`fs` (no scheme), for fsspec and Ray Data calls."""
        return posixpath.join(self.base, *parts)

    def arrow_fs(self) -> pafs.FileSystem:
        """The filesystem for Ray Data's readers and writers (picklable, so workers get it too)."""
        if not is_remote(self.root):
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write atomically: a reader sees the old file or the whole new one, never a part.

        Locally that is a write to a temporary name and a rename; an S3 object appears only once its
        upload completes, so a plain put already has that property.
        """
        target = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if is_remote(self.root):
            self.fs.pipe_file(target, data)
            return target
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target

    def move(self, src: str, dst: str) -> None:
        """Move one file (paths inside :attr:`fs`); a rename locally, a server-side copy on S3."""
        self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
        if is_remote(self.root):
            self.fs.copy(src, dst)
            self.fs.rm(src)
        else:
            os.replace(src, dst)

    def remove(self, path: str, recursive: bool = False) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)

    def list(self, *parts: str) -> list[str]:
        p = self.path(*parts)
        return sorted(self.fs.ls(p, detail=False)) if self.fs.exists(p) else []
