"""The zone store interface shared by the local and GCS backends.

A store holds three zones: ``staging`` (uploads land here), ``quarantine`` (set aside with a
reason) and ``clean`` (promoted, what later stages read). An object name is unique across the
three zones: promote and quarantine move it, they never copy it.
"""

from __future__ import annotations

import abc
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal, Union

from clinflow.errors import UserError
from components.ingest.storage.checksums import (
    Checksums,
    StreamingHasher,
    checksums_of_file,
    content_key,
    upload_id_for,
)

Zone = Literal["staging", "quarantine", "clean"]
ZONES: tuple[Zone, ...] = ("staging", "quarantine", "clean")
ZONE_STATE: dict[str, str] = {"staging": "uploaded", "quarantine": "quarantined", "clean": "promoted"}
Source = Union[str, "os.PathLike[str]", BinaryIO]

DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
DEFAULT_RESUMABLE_THRESHOLD = 8 * 1024 * 1024
GCS_CHUNK_MULTIPLE = 256 * 1024
# Manifest-entry keys the store owns; callers' metadata may not set them.
RESERVED_KEYS = frozenset({"upload_id", "sha256", "bytes", "state", "reason_code", "reason", "content_type"})
_NAME_PART = re.compile(r"^[A-Za-z0-9_@+=,~-][A-Za-z0-9._@+=,~-]*$")
_META_KEY = re.compile(r"^[a-z0-9_-]{1,64}$")


class StorageError(UserError):
    """A zone-store operation failed in a way the operator can act on."""


class ObjectNotFound(StorageError):  # noqa: N818 - reads as the condition it reports
    """The named object is not in the zone."""


class ChecksumMismatch(StorageError):  # noqa: N818
    """Bytes stored or received differ from the bytes read from the source."""


class NameConflict(StorageError):  # noqa: N818
    """The name is taken by an object with another upload id and other content."""


class AlreadyExists(Exception):  # noqa: N818
    """Internal: a backend's no-overwrite precondition failed (another writer won the name)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object and its upload manifest entry.

    Attributes:
        zone: The zone holding it.
        name: Object name inside the zone (``/`` separated, relative).
        size: Bytes.
        crc32c: Base64 CRC32C (GCS form).
        md5: Base64 MD5 (GCS form).
        sha256: Hex SHA-256.
        content_type: The stored content type.
        metadata: The manifest entry: ``original_name``, ``source``, ``lane``, ``upload_id``, ``sha256``,
            ``bytes``, ``content_type``, ``state`` and, once set aside, ``reason_code`` and ``reason``.
        generation: Backend version (GCS generation, local inode change time), for preconditions.
    """

    zone: str
    name: str
    size: int
    crc32c: str
    md5: str
    sha256: str
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    generation: str | None = None

    @property
    def upload_id(self) -> str | None:
        """The upload id the object was stored under, if known."""
        return self.metadata.get("upload_id")

    @property
    def checksums(self) -> Checksums:
        """The object's digests."""
        return Checksums(self.size, self.crc32c, self.md5, self.sha256)


@dataclass(frozen=True)
class UploadResult:
    """What an upload did.

    Attributes:
        info: The stored object.
        upload_id: The stable id derived from the idempotency key.
        created: False when the object already existed and was returned as is (idempotent retry).
        resumed_from: Byte offset an interrupted upload resumed from (0 when it started fresh).
        bytes_sent: Bytes written to the backend by this call.
    """

    info: ObjectInfo
    upload_id: str
    created: bool
    resumed_from: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True)
class SignedUpload:
    """A V4 signed URL a client uses to PUT one object straight into the staging zone.

    Attributes:
        url: The signed URL.
        method: Always ``PUT``.
        headers: Headers the client must send verbatim (they are bound into the signature).
        expires_at: When the URL stops working (UTC).
        zone: Always ``staging``.
        name: The object name inside the zone.
    """

    url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime
    zone: str
    name: str


def check_zone(zone: str) -> Zone:
    """Returns ``zone`` when it is a known zone, else raises a UserError."""
    if zone not in ZONES:
        raise StorageError(f"zone {zone!r}: unknown zone; use one of {', '.join(ZONES)}")
    return zone


def check_name(name: str) -> str:
    """Returns ``name`` when it is a safe relative object name, else raises a UserError.

    Parts are separated by ``/``; each starts with a letter, digit or one of ``_@+=,~-`` (never a dot,
    so ``..`` and the store's own ``.uploads``/``.meta`` folders cannot be named).
    """
    parts = name.split("/")
    if not name or len(name) > 900 or not all(_NAME_PART.match(part) for part in parts):
        raise StorageError(
            f"object name {name!r}: not a safe relative name; use parts of letters, digits and ._@+=,~- "
            "separated by '/', none starting with '.'"
        )
    return name


def check_caller_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Validates the caller's part of the manifest entry (string keys/values, no reserved key)."""
    entry: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not _META_KEY.match(key) or key in RESERVED_KEYS:
            raise StorageError(
                f"metadata key {key!r}: use lower-case letters, digits, '_' or '-' and none of "
                f"{', '.join(sorted(RESERVED_KEYS))}"
            )
        if not isinstance(value, str):
            raise StorageError(f"metadata {key!r}: values must be strings, got {type(value).__name__}")
        entry[key] = value
    return entry


@contextmanager
def open_source(source: Source) -> Iterator[tuple[BinaryIO, int]]:
    """Opens a path or takes a binary stream, yielding ``(stream, size)``.

    A stream that cannot seek is first spooled to a temporary file so its size is known. A stream
    is read from its current position; the caller keeps ownership and it is not closed.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise StorageError(f"{path}: not a readable file to upload")
        with open(path, "rb") as handle:
            yield handle, path.stat().st_size
        return
    stream = source
    if stream.seekable():
        start = stream.tell()
        size = stream.seek(0, io.SEEK_END) - start
        stream.seek(start)
        yield stream, size
        return
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(stream, spool)
        size = spool.tell()
        spool.seek(0)
        yield spool, size


def read_exact(stream: BinaryIO, size: int) -> bytes:
    """Reads up to ``size`` bytes, looping over short reads; fewer only at end of stream."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        data = stream.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def replay_prefix(stream: BinaryIO, hasher: StreamingHasher, length: int, chunk_bytes: int) -> None:
    """Reads and hashes the first ``length`` bytes that an interrupted upload already stored."""
    while hasher.size < length:
        data = read_exact(stream, min(chunk_bytes, length - hasher.size))
        if not data:
            raise StorageError(
                f"source is shorter ({hasher.size} bytes) than the part already uploaded ({length} bytes); "
                "the source changed since the interrupted upload: upload it under a new idempotency key"
            )
        hasher.update(data)


class ZoneStore(abc.ABC):
    """Staging, quarantine and clean zones over one backend (see ``LocalZoneStore``, ``GCSZoneStore``)."""

    uri: str
    chunk_bytes: int
    resumable_threshold: int

    # ------------------------------------------------------------------ backend primitives

    @abc.abstractmethod
    def stat(self, zone: str, name: str) -> ObjectInfo:
        """Returns an object's size, checksums and manifest entry; raises ``ObjectNotFound``."""

    @abc.abstractmethod
    def list(self, zone: str) -> list[ObjectInfo]:
        """Returns every object in a zone, sorted by name."""

    @abc.abstractmethod
    def open(self, zone: str, name: str) -> BinaryIO:
        """Opens an object for binary reading (the caller closes it)."""

    @abc.abstractmethod
    def delete(self, zone: str, name: str) -> None:
        """Removes an object (no error when absent)."""

    @abc.abstractmethod
    def _move(self, name: str, source_zone: Zone, target_zone: Zone, updates: dict[str, str]) -> ObjectInfo:
        """Moves an object between zones, updating its manifest entry; idempotent after a crash."""

    @abc.abstractmethod
    def _write(
        self,
        zone: Zone,
        name: str,
        stream: BinaryIO,
        size: int,
        upload_id: str,
        entry: dict[str, str],
        content_type: str,
    ) -> tuple[ObjectInfo, int, int, str]:
        """Stores a new object without overwriting.

        Returns ``(info, resumed_from, bytes_sent, sha256)``, the last being the SHA-256 computed from the
        bytes read (the metadata may carry the caller's expected one).

        Raises:
            AlreadyExists: Another writer stored the name first.
            ChecksumMismatch: What the backend holds differs from what was read.
        """

    @abc.abstractmethod
    def signed_upload_url(
        self,
        name: str,
        *,
        content_type: str,
        expires_in_seconds: int = 900,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
    ) -> SignedUpload:
        """Returns a V4 signed URL for a direct client PUT into the staging zone."""

    # ------------------------------------------------------------------ shared operations

    def find(self, name: str) -> ObjectInfo | None:
        """Returns the object named ``name`` in whichever zone holds it (staging first), or None."""
        check_name(name)
        for zone in ZONES:
            try:
                return self.stat(zone, name)
            except ObjectNotFound:
                continue
        return None

    def exists(self, zone: str, name: str) -> bool:
        """Whether ``zone`` holds ``name``."""
        try:
            self.stat(zone, name)
        except ObjectNotFound:
            return False
        return True

    def read(self, zone: str, name: str) -> bytes:
        """Returns an object's bytes."""
        with self.open(zone, name) as handle:
            return handle.read()

    def download_to(self, zone: str, name: str, path: str | os.PathLike[str]) -> ObjectInfo:
        """Copies an object to a local file, verifying its checksums; writes under a temporary name first.

        Raises:
            ChecksumMismatch: The bytes read differ from the stored checksums (the file is not left behind).
        """
        info = self.stat(zone, name)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        hasher = StreamingHasher()
        with self.open(zone, name) as src, open(partial, "wb") as dst:
            while chunk := src.read(self.chunk_bytes):
                hasher.update(chunk)
                dst.write(chunk)
        if not _matches(hasher.result(), info):
            partial.unlink()
            raise ChecksumMismatch(f"{zone}/{name}: downloaded bytes do not match the stored checksums; download again")
        os.replace(partial, target)
        return info

    def verify(self, zone: str, name: str) -> ObjectInfo:
        """Re-reads an object and checks it against its stored checksums.

        An object a client PUT through a signed URL has no SHA-256 in its metadata yet: it is computed
        here and recorded (on GCS with generation/metageneration preconditions).

        Returns:
            The object's info, with its SHA-256.

        Raises:
            ChecksumMismatch: The bytes differ from the stored CRC32C, MD5 or SHA-256.
        """
        info = self.stat(zone, name)
        hasher = StreamingHasher()
        with self.open(zone, name) as handle:
            while chunk := handle.read(self.chunk_bytes):
                hasher.update(chunk)
        got = hasher.result()
        if not _matches(got, info):
            raise ChecksumMismatch(f"{zone}/{name}: stored bytes do not match the stored checksums; upload it again")
        if not info.sha256:
            return self._record_sha256(info, got.sha256)
        return info

    @abc.abstractmethod
    def _forget_resume(self, zone: Zone, upload_id: str) -> None:
        """Drops what an upload left for resuming once its object is known to exist (crash leftovers)."""

    def _record_sha256(self, info: ObjectInfo, sha256: str) -> ObjectInfo:
        """Stores a computed SHA-256 in an object's metadata (backends without it at write time override)."""
        raise StorageError(f"{info.zone}/{info.name}: has no SHA-256 recorded; upload it again")

    def upload(
        self,
        zone: str,
        name: str,
        source: Source,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        expected_sha256: str | None = None,
    ) -> UploadResult:
        """Stores a file or stream as ``zone/name`` exactly once.

        Checksums (CRC32C, MD5, SHA-256) are computed while the bytes stream out and compared with
        what the backend holds afterwards. Large sources go up in chunks and resume after an
        interruption from the last confirmed chunk when called again with the same key and name.

        Args:
            zone: Target zone (normally ``staging``).
            name: Object name inside the zone; unique across zones.
            source: A file path or a binary stream (read from its current position; to resume, pass a
                stream positioned at the same start).
            idempotency_key: The caller's key (e.g. ``"<source>:<sha256>"``); the upload id derives from it.
                Without one, the key is the name plus the content's SHA-256 (one extra read of the source).
            metadata: Caller fields of the manifest entry (``original_name``, ``source``, ``lane``, ...).
            content_type: Detected content type.
            expected_sha256: The SHA-256 the source must have (e.g. from an export manifest); also put in the
                object metadata up front.

        Returns:
            The stored object; ``created`` is False when the name already held this upload or content.

        Raises:
            ChecksumMismatch: The source or the stored bytes do not match.
            NameConflict: The name holds another upload with other content.
        """
        target_zone = check_zone(zone)
        check_name(name)
        entry = check_caller_metadata(metadata)
        with open_source(source) as (stream, size):
            if idempotency_key is None:
                start = stream.tell()
                key_sha = expected_sha256 or _stream_sha256(stream)
                stream.seek(start)
                idempotency_key = content_key(name, key_sha)
            upload_id = upload_id_for(idempotency_key)
            existing = self._existing(name, upload_id, expected_sha256)
            if existing is not None:
                self._forget_resume(target_zone, upload_id)
                return UploadResult(info=existing, upload_id=upload_id, created=False)
            entry.update(upload_id=upload_id, content_type=content_type, state=ZONE_STATE[target_zone])
            if expected_sha256:
                entry["sha256"] = expected_sha256
            try:
                info, resumed_from, sent, sha256 = self._write(
                    target_zone, name, stream, size, upload_id, entry, content_type
                )
            except AlreadyExists:
                existing = self._existing(name, upload_id, expected_sha256)
                if existing is None:
                    raise StorageError(f"{zone}/{name}: a concurrent upload holds the name; retry") from None
                return UploadResult(info=existing, upload_id=upload_id, created=False)
        if expected_sha256 and sha256 != expected_sha256:
            self.delete(target_zone, name)
            raise ChecksumMismatch(
                f"{zone}/{name}: SHA-256 of the uploaded bytes differs from the expected one; the object was "
                "removed; check the source file and upload again"
            )
        return UploadResult(info=info, upload_id=upload_id, created=True, resumed_from=resumed_from, bytes_sent=sent)

    def _existing(self, name: str, upload_id: str, expected_sha256: str | None) -> ObjectInfo | None:
        """Returns the object already stored under ``name`` for this upload, or raises on a conflict."""
        found = self.find(name)
        if found is None:
            return None
        if found.upload_id == upload_id:
            if expected_sha256 and found.sha256 and found.sha256 != expected_sha256:
                raise ChecksumMismatch(
                    f"{found.zone}/{name}: already holds this upload id with other content (SHA-256 differs); "
                    "the source changed: upload it under a new idempotency key and name"
                )
            return found
        if expected_sha256 is not None and found.sha256 == expected_sha256:
            return found
        raise NameConflict(
            f"{found.zone}/{name}: already holds another upload (upload id {found.upload_id}); use a different name"
        )

    def promote(self, name: str) -> ObjectInfo:
        """Moves ``staging/name`` to the clean zone (state ``promoted``); a repeat returns the clean object."""
        check_name(name)
        return self._move(name, "staging", "clean", {"state": ZONE_STATE["clean"]})

    def quarantine(self, name: str, reason_code: str, reason: str) -> ObjectInfo:
        """Moves ``staging/name`` to quarantine; the manifest entry gets the reason code and sentence.

        Args:
            name: Object name.
            reason_code: Machine-readable code, e.g. ``checksum_mismatch``.
            reason: One human sentence (no identifier values from the file).

        Returns:
            The quarantined object.
        """
        check_name(name)
        if not re.match(r"^[a-z0-9_.-]+$", reason_code):
            raise StorageError(f"reason code {reason_code!r}: use lower-case letters, digits, '_', '.', '-'")
        updates = {"state": ZONE_STATE["quarantine"], "reason_code": reason_code, "reason": reason}
        return self._move(name, "staging", "quarantine", updates)


def _matches(got: Checksums, info: ObjectInfo) -> bool:
    """Whether computed digests agree with an object's stored ones (MD5/SHA-256 only where stored)."""
    return (
        got.size == info.size
        and got.crc32c == info.crc32c
        and (not info.md5 or got.md5 == info.md5)
        and (not info.sha256 or got.sha256 == info.sha256)
    )


def _stream_sha256(stream: BinaryIO) -> str:
    """Hex SHA-256 of the rest of a stream."""
    hasher = StreamingHasher()
    while chunk := stream.read(DEFAULT_CHUNK_BYTES):
        hasher.update(chunk)
    return hasher.result().sha256


def file_checksums(path: Path) -> Checksums:
    """Checksums of a local file (re-read)."""
    return checksums_of_file(str(path))
