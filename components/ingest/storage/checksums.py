"""One-pass checksums (CRC32C, MD5, SHA-256) and stable upload ids.

CRC32C and MD5 are kept in the form GCS reports them (base64 of the big-endian digest) so a
backend's answer can be compared byte for byte; SHA-256 is hex, like the ingest manifest.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import BinaryIO

import google_crc32c

UPLOAD_ID_NAMESPACE = "clinflow-upload-v1"
READ_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Checksums:
    """The three digests of one object's bytes.

    Attributes:
        size: Number of bytes.
        crc32c: Base64 of the big-endian CRC32C (GCS ``crc32c`` form).
        md5: Base64 of the MD5 digest (GCS ``md5Hash`` form).
        sha256: Hex SHA-256.
    """

    size: int
    crc32c: str
    md5: str
    sha256: str


class StreamingHasher:
    """Feeds every chunk to CRC32C, MD5 and SHA-256 at once, so a stream is read only once."""

    def __init__(self) -> None:
        self._crc32c = google_crc32c.Checksum()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        """Adds ``data`` to all three digests."""
        self._crc32c.update(data)
        self._md5.update(data)
        self._sha256.update(data)
        self.size += len(data)

    def result(self) -> Checksums:
        """Returns the digests of everything fed so far."""
        return Checksums(
            size=self.size,
            crc32c=base64.b64encode(self._crc32c.digest()).decode("ascii"),
            md5=base64.b64encode(self._md5.digest()).decode("ascii"),
            sha256=self._sha256.hexdigest(),
        )


def checksums_of_stream(stream: BinaryIO) -> Checksums:
    """Reads a binary stream to its end and returns its checksums."""
    hasher = StreamingHasher()
    while chunk := stream.read(READ_BYTES):
        hasher.update(chunk)
    return hasher.result()


def checksums_of_file(path: str) -> Checksums:
    """Returns the checksums of a file's bytes."""
    with open(path, "rb") as handle:
        return checksums_of_stream(handle)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def upload_id_for(idempotency_key: str) -> str:
    """Derives the stable upload id of an idempotency key (32 hex characters).

    The same key always gives the same id, so a retried upload or registration finds the first
    one instead of creating a duplicate. The key itself is never stored (it may name a source
    path); only this one-way id is.

    Args:
        idempotency_key: The caller's key, e.g. ``"<source>:<sha256>"``.

    Returns:
        The upload id.
    """
    return hashlib.sha256(f"{UPLOAD_ID_NAMESPACE}\0{idempotency_key}".encode()).hexdigest()[:32]


def content_key(name: str, sha256: str) -> str:
    """The default idempotency key when the caller gives none: same content under the same name."""
    return f"content:{name}:{sha256}"
