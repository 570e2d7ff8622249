"""The blob store on an S3-compatible bucket (``TANDEM_BLOB_STORE=s3``), through
django-storages' ``S3Storage`` (its boto3 client, configured from ``BLOB_S3_*``).

Node uploads (``blobs/sha256/<hex>``) live in the bucket and travel between the node
and the bucket directly:

- **GET** is a presigned ``get_object`` URL, **PUT** a presigned ``put_object`` URL
  carrying the declared SHA-256 (``ChecksumSHA256``: the node must send it as the
  signed ``x-amz-checksum-sha256`` header, with ``x-amz-sdk-checksum-algorithm``;
  ``upload_headers``), so the store refuses a body of any other bytes and keeps the
  checksum. Both expire after ``ASSIGNMENT_URL_TTL_SECONDS``; the
  signature covers the method and the key, so a URL is good for that one operation
  on that one key. The lease scope is that short life plus the claim handing out only
  the keys of the lease's own work (there is no view of ours in the path to refuse a
  URL once its lease ends, as the filesystem store's view does).
- **Commit** checks the object through ``head_object``: its size, and its
  ``ChecksumSHA256`` where the store kept one; the control plane's download for
  unpacking (``local_path``) hashes the bytes again, and an object whose bytes are not
  its key's hash is deleted and refused (``BlobMismatch``), whatever store let it in.

Buyers' files (``files/…``) are kept by the workloads file store on this server's
disk (``WORKLOADS_STORAGE_DIR``); they are served as on the filesystem store, through
this server's signed blob view, until that store moves to the bucket too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, FlexibleChecksumError
from storages.backends.s3 import S3Storage

from core.errors import NotFound
from marketplace.assignments.blob_files import (
    CHUNK,
    BlobHead,
    BlobMismatch,
    FileSystemBlobStore,
    Grant,
    _key_check,
    spool_checked,
)


def sha256_base64(hex_digest: str) -> str:
    """The SHA-256 as S3 writes it (``ChecksumSHA256``): base64 of the 32 bytes."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def _sha256_hex(value: str) -> str:
    """S3's base64 ``ChecksumSHA256`` as hex; "" for a composite (multipart) one."""
    if "-" in value:
        return ""
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return ""


def _missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3BlobStore:
    """Uploads in one bucket, presigned URLs; buyers' files through ``files``."""

    def __init__(
        self, *, storage: S3Storage, files: FileSystemBlobStore, cache_root: Path, ttl: int
    ) -> None:
        self.storage = storage
        self.bucket = storage.bucket_name
        self.client: Any = storage.bucket.meta.client
        self.files = files
        self.cache_root = Path(cache_root)
        self.ttl = ttl

    def _local(self, key: str) -> bool:
        return _key_check(key).startswith("files/")

    def url(self, grant: Grant, *, base_url: str) -> str:
        if self._local(grant.key):
            return self.files.url(grant, base_url=base_url)
        params = {"Bucket": self.bucket, "Key": grant.key}
        if grant.method == "PUT":
            params.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_base64(grant.sha256))
        operation = {"GET": "get_object", "PUT": "put_object"}[grant.method]
        return str(
            self.client.generate_presigned_url(
                operation, Params=params, ExpiresIn=self.ttl, HttpMethod=grant.method
            )
        )

    def upload_headers(self, grant: Grant) -> dict[str, str]:
        if self._local(grant.key) or grant.method != "PUT":
            return {}
        return {
            "x-amz-sdk-checksum-algorithm": "SHA256",
            "x-amz-checksum-sha256": sha256_base64(grant.sha256),
        }

    def head(self, key: str) -> BlobHead | None:
        if self._local(key):
            return self.files.head(key)
        try:
            found = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as error:
            if _missing(error):
                return None
            raise
        checksum = _sha256_hex(str(found.get("ChecksumSHA256") or ""))
        return BlobHead(size=int(found["ContentLength"]), sha256=checksum)

    def stat(self, key: str) -> int | None:
        head = self.head(key)
        return None if head is None else head.size

    def open(self, key: str) -> Iterator[bytes]:
        if self._local(key):
            yield from self.files.open(key)
            return
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as error:
            if _missing(error):
                raise NotFound(f"no blob {key}") from None
            raise
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def write(self, key: str, chunks: Iterable[bytes], *, sha256: str, size: int) -> None:
        if self._local(key):
            self.files.write(key, chunks, sha256=sha256, size=size)
            return
        self.cache_root.mkdir(parents=True, exist_ok=True)
        spooled = spool_checked(chunks, directory=self.cache_root, sha256=sha256, size=size)
        with spooled as path, path.open("rb") as body:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=size,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=sha256_base64(sha256),
            )

    def delete(self, key: str) -> None:
        if self._local(key):
            self.files.delete(key)
            return
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def local_path(self, key: str) -> Path:
        """The blob downloaded into the cache (once: uploads are content addressed),
        its bytes hashed on the way; bytes that are not their key's hash are deleted
        from the bucket and refused."""
        if self._local(key):
            return self.files.local_path(key)
        target = self.cache_root / key.removeprefix("blobs/")
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        expected = key.rsplit("/", 1)[-1]
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in self.open(key):
                        digest.update(chunk)
                        out.write(chunk)
                found = digest.hexdigest()
            except FlexibleChecksumError:  # boto3 checks the bytes against the store's checksum
                found = "not the checksum the store keeps"
            if found != expected:
                self.delete(key)
                raise BlobMismatch(f"{key}: the stored bytes' SHA-256 is {found}; deleted")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target
