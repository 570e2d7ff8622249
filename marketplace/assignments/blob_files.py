"""What every blob store shares (keys, grants, heads, the ``BlobStore`` interface, a
checked spool of a download) and the filesystem store with its signed grants: the
embedded default, and the S3 store's local files and cache (s3blobs.py). The rules
are written at the top of blobs.py, which re-exports these names."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.core import signing

from core.errors import Forbidden, InvalidInput, NotFound

SALT = "tandem.assignments.blob"
CHUNK = 1024 * 1024
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_KEY = re.compile(r"^files/[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
_BLOB_KEY = re.compile(r"^blobs/sha256/[0-9a-f]{64}$")
URL_PATH = "/api/v1/agent/blob"


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a signed URL allows: one method on one key, for one lease."""

    lease_id: int
    key: str
    method: str  # GET | PUT
    sha256: str = ""  # PUT: the bytes must hash to this
    size: int = -1  # PUT: and be this long


@dataclass(frozen=True, slots=True)
class BlobHead:
    size: int
    sha256: str = ""  # the SHA-256 the store keeps for the blob; "" when it keeps none


class BlobMismatch(InvalidInput):
    code = "blob_mismatch"


class BlobStore(Protocol):
    def url(self, grant: Grant, *, base_url: str) -> str:
        """A URL that lets its holder do ``grant.method`` on ``grant.key`` for a few
        minutes (``base_url``: this server, for a store that serves the URL itself)."""
        ...

    def upload_headers(self, grant: Grant) -> dict[str, str]:
        """Headers a PUT through ``url(grant)`` must carry (a bucket's checksum)."""
        ...

    def head(self, key: str) -> BlobHead | None:
        """The blob's size and the hash the store vouches for; None when there is none."""
        ...

    def stat(self, key: str) -> int | None:
        """The blob's size, or None when there is none."""
        ...

    def open(self, key: str) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...

    def write(self, key: str, chunks: Iterable[bytes], *, sha256: str, size: int) -> None:
        """Store ``chunks`` under ``key`` if they hash to ``sha256`` and are ``size``
        bytes long (else BlobMismatch, and nothing is stored)."""
        ...

    def local_path(self, key: str) -> Path:
        """A path to read the blob from on this machine (a download for a remote store)."""
        ...


def _key_check(key: str) -> str:
    if not (_FILE_KEY.match(key) or _BLOB_KEY.match(key)) or ".." in key.split("/"):
        raise InvalidInput(f"blob key {key[:80]!r} is not a file or an upload")
    return key


class FileSystemBlobStore:
    """Buyers' files under ``WORKLOADS_STORAGE_DIR``, uploads under ``ASSIGNMENT_BLOB_DIR``;
    URLs served by this server's blob view."""

    def __init__(self, *, files_root: Path, blobs_root: Path) -> None:
        self.files_root = Path(files_root)
        self.blobs_root = Path(blobs_root)

    def local_path(self, key: str) -> Path:
        _key_check(key)
        if key.startswith("files/"):
            return self.files_root / key.removeprefix("files/")
        return self.blobs_root / key.removeprefix("blobs/")

    def url(self, grant: Grant, *, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{URL_PATH}?token={grant_sign(grant)}"

    def upload_headers(self, grant: Grant) -> dict[str, str]:
        return {}

    def head(self, key: str) -> BlobHead | None:
        # No hash kept: the bytes were hashed as they were written (``write``).
        size = self.stat(key)
        return None if size is None else BlobHead(size=size)

    def stat(self, key: str) -> int | None:
        path = self.local_path(key)
        return path.stat().st_size if path.is_file() else None

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def open(self, key: str) -> Iterator[bytes]:
        path = self.local_path(key)
        if not path.is_file():
            raise NotFound(f"no blob {key}")
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def write(self, key: str, chunks: Iterable[bytes], *, sha256: str, size: int) -> None:
        path = self.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with spool_checked(chunks, directory=path.parent, sha256=sha256, size=size) as tmp:
            os.replace(tmp, path)


@contextlib.contextmanager
def spool_checked(
    chunks: Iterable[bytes], *, directory: Path, sha256: str, size: int
) -> Iterator[Path]:
    """``chunks`` in a temporary file in ``directory``, yielded only when they are
    ``size`` bytes hashing to ``sha256`` (else BlobMismatch); removed afterwards
    unless the caller moved it."""
    digest = hashlib.sha256()
    written = 0
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                written += len(chunk)
                if written > size:
                    raise BlobMismatch(f"the body is longer than the {size} bytes declared")
                digest.update(chunk)
                out.write(chunk)
        if written != size:
            raise BlobMismatch(f"the body is {written} bytes, {size} were declared")
        if digest.hexdigest() != sha256:
            raise BlobMismatch(f"the body's SHA-256 is {digest.hexdigest()}, {sha256} was declared")
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


# --- signed grants (the filesystem store's URLs) ------------------------------------


def grant_sign(grant: Grant) -> str:
    return signing.dumps(
        {
            "l": grant.lease_id,
            "k": grant.key,
            "m": grant.method,
            "s": grant.sha256,
            "n": grant.size,
        },
        salt=SALT,
        compress=True,
    )


def grant_check(token: str, *, method: str) -> Grant:
    """The grant a token carries, if its signature holds, it has not expired and it
    is for ``method``; Forbidden saying which check failed otherwise."""
    try:
        raw = signing.loads(token, salt=SALT, max_age=settings.ASSIGNMENT_URL_TTL_SECONDS)
    except signing.SignatureExpired:
        raise Forbidden(
            "token: this signed URL has expired; claim again or ask for a new one"
        ) from None
    except signing.BadSignature:
        raise Forbidden("token: not a valid signed URL") from None
    grant = Grant(
        lease_id=int(raw["l"]),
        key=_key_check(str(raw["k"])),
        method=str(raw["m"]),
        sha256=str(raw.get("s") or ""),
        size=int(raw.get("n", -1)),
    )
    if grant.method != method:
        raise Forbidden(f"token: this URL is for {grant.method}, not {method}")
    return grant
