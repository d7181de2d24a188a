"""The object store behind workspace snapshots (packs and manifests under string keys).

``WorkspaceStore`` is the plugin contract; ``FsspecStore`` serves a local directory or any fsspec filesystem
(s3://, gs://, ...), which covers the stores we know of. Blocking calls (callers run them in a thread).

Required methods of a store:
    ``put(key, data)``           write an object whole; it appears atomically
    ``upload(key)``              an object written in parts (``write``/``commit``/``abort``), appearing on commit
    ``get(key)``                 the object's bytes; FileNotFoundError when missing
    ``read_ranges(key, ranges)`` the (offset, length) ranges, concatenated
    ``delete(key)``              remove it; a missing object is not an error
    ``list(prefix)``             the keys under a prefix, recursively
"""

from __future__ import annotations

import abc
import os
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from berth.ids import new_id
from berth.private_files import ensure_private_dir, open_private


class WorkspaceStore(abc.ABC):
    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def upload(self, key: str) -> Upload: ...

    @abc.abstractmethod
    def get(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> bytes: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]: ...


def open_store(url: str) -> WorkspaceStore:
    """The store for a `store_url` setting: a plain path, file://, or any fsspec URL."""
    return FsspecStore(url)


class FsspecStore(WorkspaceStore):
    """Objects appear atomically: by rename on a local disk, by a single PUT on object stores. A local store
    holds every project's workspace contents: its directories are 0700 and its files (temp upload files
    included) 0600, whatever the umask."""

    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            ensure_private_dir(self.root)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        if self.local:
            _private_makedirs(os.path.dirname(path))
            tmp = f"{path}.tmp-{new_id()}"
            with open_private(tmp, exclusive=True) as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, bytes(data))

    def upload(self, key: str) -> Upload:
        """An object written in parts as they arrive; it appears only on commit()."""
        return Upload(self, key)

    def get(self, key: str) -> bytes:
        """Raises FileNotFoundError when the object is missing."""
        return self.fs.cat_file(self._path(key))

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> bytes:
        """The given (offset, length) ranges, concatenated; short when the object is truncated."""
        opener = open if self.local else self.fs.open
        with opener(self._path(key), "rb") as f:
            parts = []
            for offset, length in ranges:
                f.seek(offset)
                parts.append(f.read(length))
        return b"".join(parts)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (recursive)."""
        base = self._path(prefix).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        return [p[len(root):] if p.startswith(root) else p for p in (self.fs._strip_protocol(f) for f in found)]


def local_root(url: str) -> Path | None:
    """The directory of a local store URL (plain path or file://); None for other filesystems."""
    fs, root = fsspec.core.url_to_fs(url)
    return Path(root) if isinstance(fs, LocalFileSystem) else None


def _private_makedirs(path: str) -> None:
    ensure_private_dir(path, private_parents=True)  # inside the private root: every level 0700


class Upload:
    def __init__(self, store: FsspecStore, key: str):
        self.store, self.key = store, key
        self.parts: list = []
        self.file = None
        if store.local:
            self.path = store._path(key)
            _private_makedirs(os.path.dirname(self.path))
            self.tmp = f"{self.path}.tmp-{new_id()}"
            self.file = open_private(self.tmp, exclusive=True)

    def write(self, parts: list) -> None:
        if self.file is not None:
            self.file.writelines(parts)
        else:  # object stores take one PUT: keep the parts until commit
            self.parts += parts

    def commit(self) -> None:
        if self.file is not None:
            self.file.close()
            os.replace(self.tmp, self.path)
        else:
            self.store.fs.pipe_file(self.store._path(self.key), b"".join(self.parts))
            self.parts = []

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
        self.parts = []
