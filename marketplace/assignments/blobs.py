"""Blobs that nodes read and write: datasets (GET), checkpoints and final models (PUT,
then GET to resume). One interface, ``BlobStore``; the filesystem behind it on the
embedded default.

Keys: ``files/<storage key>`` is a buyer's uploaded file (the workloads file store),
``blobs/sha256/<hex>`` an upload from a node (content addressed: the key is the hash
of the bytes, so a retried or repeated upload lands on the same blob).

Signed URLs are scoped to **one lease, one key and one method**, and expire after
``ASSIGNMENT_URL_TTL_SECONDS`` (minutes). The filesystem store signs a token with
Django's signing (``SECRET_KEY``, salted) that its own view checks
(``GET|PUT /api/v1/agent/blob?token=…``); the view also refuses a URL whose lease is
no longer active, so a dead node's URLs stop working when its lease ends. A PUT
token names the SHA-256 and size declared for the upload: the view hashes the body
as it streams it to a temporary file and renames it into place only when both
match, so a blob under its hash is always those bytes.

An S3-compatible bucket stands behind the same interface when
``TANDEM_BLOB_STORE=s3`` (``s3blobs.py``): presigned URLs with the same scope, the
PUT's checksum checked by the store, the commit's by ``head`` and the download.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.conf import settings

from marketplace.assignments.blob_files import (
    CHUNK,
    SALT,
    SHA256,
    URL_PATH,
    BlobHead,
    BlobMismatch,
    BlobStore,
    FileSystemBlobStore,
    Grant,
    blob_key,
    grant_check,
    grant_sign,
    spool_checked,
)
from marketplace.assignments.s3blobs import S3BlobStore

__all__ = [
    "CHUNK",
    "SALT",
    "SHA256",
    "URL_PATH",
    "BlobHead",
    "BlobMismatch",
    "BlobStore",
    "FileSystemBlobStore",
    "Grant",
    "blob_key",
    "blob_store",
    "grant_check",
    "grant_sign",
    "spool_checked",
]


def blob_store() -> BlobStore:
    """The store the settings name (``TANDEM_BLOB_STORE``)."""
    files = FileSystemBlobStore(
        files_root=Path(settings.WORKLOADS_STORAGE_DIR),
        blobs_root=Path(settings.ASSIGNMENT_BLOB_DIR),
    )
    if settings.TANDEM_BLOB_STORE != "s3":
        return files
    return _s3_store(
        files_root=files.files_root,
        cache_root=files.blobs_root,
        ttl=settings.ASSIGNMENT_URL_TTL_SECONDS,
        bucket=settings.BLOB_S3_BUCKET,
        endpoint_url=settings.BLOB_S3_ENDPOINT_URL,
        region=settings.BLOB_S3_REGION,
        access_key=settings.BLOB_S3_ACCESS_KEY_ID,
        secret_key=settings.BLOB_S3_SECRET_ACCESS_KEY,
    )


@lru_cache(maxsize=8)  # one boto3 client per configuration, not one per call
def _s3_store(
    *,
    files_root: Path,
    cache_root: Path,
    ttl: int,
    bucket: str,
    endpoint_url: str,
    region: str,
    access_key: str,
    secret_key: str,
) -> BlobStore:
    from storages.backends.s3 import S3Storage

    storage = S3Storage(
        bucket_name=bucket,
        endpoint_url=endpoint_url or None,
        region_name=region,
        access_key=access_key or None,
        secret_key=secret_key or None,
        signature_version="s3v4",
        # a custom endpoint (MinIO, Ceph, R2, a local server) is addressed by path
        addressing_style="path" if endpoint_url else None,
        querystring_expire=ttl,
        file_overwrite=True,
    )
    files = FileSystemBlobStore(files_root=files_root, blobs_root=cache_root)
    return S3BlobStore(storage=storage, files=files, cache_root=cache_root, ttl=ttl)
