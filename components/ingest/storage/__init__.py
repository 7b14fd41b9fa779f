"""Object-storage zones for ingest: staging → quarantine | clean, on the local filesystem or GCS.

``open_zone_store(uri)`` opens a store from a local path, ``file:///path`` or ``gs://bucket/prefix``.
See docs/ingest-storage.md.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlparse

from components.ingest.storage.base import (
    ZONES,
    ChecksumMismatch,
    NameConflict,
    ObjectInfo,
    ObjectNotFound,
    SignedUpload,
    StorageError,
    UploadResult,
    Zone,
    ZoneStore,
)
from components.ingest.storage.checksums import Checksums, StreamingHasher, upload_id_for
from components.ingest.storage.local import LocalZoneStore

__all__ = [
    "ZONES",
    "ChecksumMismatch",
    "Checksums",
    "LocalZoneStore",
    "NameConflict",
    "ObjectInfo",
    "ObjectNotFound",
    "SignedUpload",
    "StorageError",
    "StreamingHasher",
    "UploadResult",
    "Zone",
    "ZoneStore",
    "open_zone_store",
    "upload_id_for",
]


def open_zone_store(uri: str | os.PathLike[str], **options: Any) -> ZoneStore:
    """Opens the zone store a URI names.

    Args:
        uri: A local path, ``file:///path`` (the embedded default) or ``gs://bucket[/prefix]``.
        **options: Backend options (``chunk_bytes``, ``resumable_threshold``; for GCS also ``client``,
            ``resume_dir``, ``signing_key_file``, ``max_signed_url_seconds``).

    Returns:
        The store.

    Raises:
        StorageError: An unsupported scheme or a ``gs://`` URI without a bucket.
    """
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme == "gs":
        if not parsed.netloc:
            raise StorageError(f"{text}: a gs:// store needs a bucket, e.g. gs://my-bucket/ingest")
        from components.ingest.storage.gcs import GCSZoneStore  # google-cloud-storage only when used

        return GCSZoneStore(parsed.netloc, parsed.path.strip("/"), **options)
    if parsed.scheme == "file":
        return LocalZoneStore(unquote(parsed.path), **options)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise StorageError(f"{text}: unsupported store URI; use a local path, file:///path or gs://bucket/prefix")
    return LocalZoneStore(text, **options)
