"""Where workload files live: a small interface, and the local filesystem behind it.

Datasets are read by the runtime (validation, token counts, training) and handed
back to their owner on download; checkpoints the runtime writes are read back for
Together's download endpoint. The interface is the few operations those need, so a
bucket store can stand in for the filesystem without touching callers.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from django.conf import settings

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
CHUNK = 1024 * 1024


class StorageFull(Exception):
    """The content is larger than the limit the caller set."""


@dataclass(frozen=True, slots=True)
class Stored:
    key: str
    bytes: int
    sha256: str


class FileStorage(Protocol):
    def save(self, key: str, chunks: Iterable[bytes], *, max_bytes: int) -> Stored: ...
    def open_chunks(self, key: str) -> Iterator[bytes]: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


class LocalFileStorage:
    """Files under one root directory. A save writes to a temporary file in the same
    directory and renames it into place, so a reader never sees half a file and a
    crash mid-upload leaves nothing under the key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    def save(self, key: str, chunks: Iterable[bytes], *, max_bytes: int) -> Stored:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise StorageFull(f"content is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Stored(key=key, bytes=size, sha256=digest.hexdigest())

    def open_chunks(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def file_storage() -> FileStorage:
    return LocalFileStorage(Path(settings.WORKLOADS_STORAGE_DIR))
