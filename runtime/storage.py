"""Artifact storage: where checkpoints and finished models go.

A small interface (put a directory under a key, get it back, list keys, remove),
so a job preempted on one node resumes on another from what it stored. The default
is the local filesystem under ``<var>/artifacts`` (``TANDEM_ARTIFACT_DIR``), which a
cluster may mount from shared storage; an object store is another implementation
of the same four methods.

A put is atomic: the directory is copied beside its destination and renamed into
place, so a reader never sees half a checkpoint, and a second put of the same key
(a retried step) replaces the first whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from runtime.registry import artifact_dir


class ArtifactStorage(Protocol):
    def put_dir(self, local: Path, key: str) -> str: ...

    def get_dir(self, key: str, local: Path) -> Path: ...

    def list(self, prefix: str) -> list[str]: ...

    def exists(self, key: str) -> bool: ...

    def remove(self, key: str) -> None: ...

    def locate(self, key: str) -> str:
        """Where the artifact can be read from (a path or URL), for the job's record."""
        ...


def _safe_key(key: str) -> str:
    parts = key.strip("/").split("/")
    if not key or any(part in {"", ".", ".."} for part in parts):
        raise ValueError(f"artifact key {key!r} is not a relative path")
    return "/".join(parts)


class LocalStorage:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put_dir(self, local: Path, key: str) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            shutil.copytree(local, staging, dirs_exist_ok=True)
            if target.exists():
                retired = target.with_name(f".{target.name}-old-{os.getpid()}")
                target.rename(retired)
                staging.rename(target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return str(target)

    def get_dir(self, key: str, local: Path) -> Path:
        source = self._path(key)
        if not source.is_dir():
            raise FileNotFoundError(f"no artifact at {key}")
        shutil.copytree(source, local, dirs_exist_ok=True)
        return local

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            f"{_safe_key(prefix)}/{child.name}"
            for child in base.iterdir()
            if not child.name.startswith(".")
        )

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def remove(self, key: str) -> None:
        shutil.rmtree(self._path(key), ignore_errors=True)

    def locate(self, key: str) -> str:
        return str(self._path(key))


def default_storage() -> ArtifactStorage:
    return LocalStorage(artifact_dir())
