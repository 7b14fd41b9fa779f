"""The Google Cloud Storage zone store (``gs://bucket/prefix``).

Objects live at ``<prefix>/<zone>/<name>``; the upload manifest entry is the object's custom
metadata. Every create uses ``ifGenerationMatch=0`` so two writers of one name cannot both win.
Sources above the resumable threshold use the JSON API's resumable upload protocol: the session
URL and the last offset GCS confirmed (the ``Range`` of its 308 reply) are written to a local
resume record after each chunk, so a later call with the same upload id sends only what GCS does
not have. Credentials come from the environment (Application Default Credentials); with
``STORAGE_EMULATOR_HOST`` set, the emulator is used anonymously.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, cast

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from components.ingest.storage.base import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_RESUMABLE_THRESHOLD,
    GCS_CHUNK_MULTIPLE,
    AlreadyExists,
    ChecksumMismatch,
    ObjectInfo,
    ObjectNotFound,
    SignedUpload,
    StorageError,
    Zone,
    ZoneStore,
    check_caller_metadata,
    check_name,
    check_zone,
    read_exact,
    replay_prefix,
)
from components.ingest.storage.checksums import StreamingHasher

SIGNING_KEY_ENV = "CLINFLOW_GCS_SIGNING_KEY_FILE"
RESUME_DIR_ENV = "CLINFLOW_GCS_RESUME_DIR"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
PUBLIC_ENDPOINT = "https://storage.googleapis.com"
MAX_SIGNED_URL_SECONDS = 3600
REQUEST_TIMEOUT_SECONDS = 300
MAX_STALLED_CHUNK_SENDS = 3
_RANGE = re.compile(r"^bytes=0-(\d+)$")


def default_client() -> storage.Client:
    """A client from the environment: anonymous against ``STORAGE_EMULATOR_HOST``, else ADC."""
    if os.environ.get(EMULATOR_ENV):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "test")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


def _confirmed_offset(response: Any) -> int:
    """The number of bytes GCS confirmed, from a 308 reply's ``Range: bytes=0-N`` (none: 0)."""
    match = _RANGE.match(response.headers.get("Range", ""))
    return int(match.group(1)) + 1 if match else 0


class GCSZoneStore(ZoneStore):
    """Zones as prefixes in one GCS bucket.

    Args:
        bucket: Bucket name.
        prefix: Object prefix inside the bucket (may be empty).
        client: A ``google.cloud.storage.Client``; default from the environment (see ``default_client``).
        resume_dir: Where resume records of resumable uploads are kept (default ``$CLINFLOW_GCS_RESUME_DIR``
            or ``~/.cache/clinflow/gcs-uploads``). A record holds the session URL, a bearer capability for
            that one upload, so the directory is created private.
        chunk_bytes: Bytes per chunk; a multiple of 256 KiB.
        resumable_threshold: Sources larger than this use a resumable session.
        signing_key_file: Service-account JSON key used to sign URLs (default ``$CLINFLOW_GCS_SIGNING_KEY_FILE``).
        max_signed_url_seconds: Upper bound on a signed URL's lifetime.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: storage.Client | None = None,
        resume_dir: str | os.PathLike[str] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        resumable_threshold: int = DEFAULT_RESUMABLE_THRESHOLD,
        signing_key_file: str | os.PathLike[str] | None = None,
        max_signed_url_seconds: int = MAX_SIGNED_URL_SECONDS,
    ) -> None:
        if chunk_bytes <= 0 or chunk_bytes % GCS_CHUNK_MULTIPLE:
            raise StorageError(f"chunk size {chunk_bytes}: must be a positive multiple of {GCS_CHUNK_MULTIPLE} bytes")
        self.client = client or default_client()
        self.bucket = self.client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.uri = f"gs://{bucket}/{self.prefix}" if self.prefix else f"gs://{bucket}"
        default_resume = os.environ.get(RESUME_DIR_ENV) or Path.home() / ".cache" / "clinflow" / "gcs-uploads"
        self.resume_dir = Path(resume_dir or default_resume)
        self.chunk_bytes = chunk_bytes
        self.resumable_threshold = resumable_threshold
        self.signing_key_file = signing_key_file
        self.max_signed_url_seconds = max_signed_url_seconds

    # ------------------------------------------------------------------ names

    def object_key(self, zone: str, name: str) -> str:
        """The bucket key of ``zone/name``."""
        key = f"{check_zone(zone)}/{check_name(name)}"
        return f"{self.prefix}/{key}" if self.prefix else key

    def _info(self, zone: str, name: str, blob: storage.Blob) -> ObjectInfo:
        metadata = dict(blob.metadata or {})
        return ObjectInfo(
            zone=zone,
            name=name,
            size=int(blob.size or 0),
            crc32c=blob.crc32c or "",
            md5=blob.md5_hash or "",
            sha256=metadata.get("sha256", ""),
            content_type=blob.content_type or "application/octet-stream",
            metadata=metadata,
            generation=str(blob.generation),
        )

    # ------------------------------------------------------------------ reads

    def stat(self, zone: str, name: str) -> ObjectInfo:
        """Returns an object's size, checksums (as GCS reports them) and custom metadata."""
        blob = self.bucket.get_blob(self.object_key(zone, name))
        if blob is None:
            raise ObjectNotFound(f"{zone}/{name}: no such object in {self.uri}")
        return self._info(zone, name, blob)

    def list(self, zone: str) -> list[ObjectInfo]:
        """Returns every object in a zone, sorted by name."""
        zone_prefix = self.object_key(zone, "x")[:-1]
        blobs = self.client.list_blobs(self.bucket, prefix=zone_prefix)
        infos = [self._info(zone, blob.name[len(zone_prefix) :], blob) for blob in blobs]
        return sorted(infos, key=lambda info: info.name)

    def open(self, zone: str, name: str) -> BinaryIO:
        """Opens an object for binary reading (pinned to the generation ``stat`` saw)."""
        info = self.stat(zone, name)
        blob = self.bucket.blob(self.object_key(zone, name), generation=int(info.generation or 0) or None)
        return cast(BinaryIO, blob.open("rb"))

    def delete(self, zone: str, name: str) -> None:
        """Removes an object (no error when absent)."""
        with contextlib.suppress(gexc.NotFound):
            self.bucket.blob(self.object_key(zone, name)).delete()

    # ------------------------------------------------------------------ writes

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
        key = self.object_key(zone, name)
        entry = dict(entry, bytes=str(size))
        if size <= self.resumable_threshold:
            return self._write_small(zone, name, key, stream, size, entry, content_type)
        return self._write_resumable(zone, name, key, stream, size, upload_id, entry, content_type)

    def _write_small(
        self, zone: str, name: str, key: str, stream: BinaryIO, size: int, entry: dict[str, str], content_type: str
    ) -> tuple[ObjectInfo, int, int, str]:
        data = read_exact(stream, size)
        hasher = StreamingHasher()
        hasher.update(data)
        sums = hasher.result()
        blob = self.bucket.blob(key)
        blob.metadata = dict(entry, sha256=entry.get("sha256", sums.sha256))
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0, checksum="crc32c")
        except gexc.PreconditionFailed:
            raise AlreadyExists(key) from None
        self._verify(zone, name, blob.crc32c, blob.md5_hash, sums.crc32c, sums.md5, blob.generation)
        return self._info(zone, name, blob), 0, len(data), sums.sha256

    def _forget_resume(self, zone: Zone, upload_id: str) -> None:
        self._record_path(upload_id).unlink(missing_ok=True)

    def _record_path(self, upload_id: str) -> Path:
        return self.resume_dir / f"{upload_id}.json"

    def _save_record(self, upload_id: str, record: Mapping[str, Any]) -> None:
        self.resume_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._record_path(upload_id)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def _load_record(self, upload_id: str, key: str, size: int) -> dict[str, Any] | None:
        path = self._record_path(upload_id)
        try:
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if record.get("object") != key or record.get("size") != size:
            path.unlink(missing_ok=True)
            return None
        return record

    def _write_resumable(
        self,
        zone: str,
        name: str,
        key: str,
        stream: BinaryIO,
        size: int,
        upload_id: str,
        entry: dict[str, str],
        content_type: str,
    ) -> tuple[ObjectInfo, int, int, str]:
        hasher = StreamingHasher()
        record = self._load_record(upload_id, key, size)
        if record is None:
            blob = self.bucket.blob(key)
            blob.metadata = entry
            blob.content_type = content_type  # in the resource body too: the emulator ignores X-Upload-Content-Type
            try:
                session_url = blob.create_resumable_upload_session(
                    content_type=content_type, size=size, if_generation_match=0
                )
            except gexc.PreconditionFailed:
                raise AlreadyExists(key) from None
            record = {"object": key, "size": size, "session_url": session_url, "confirmed": 0}
            self._save_record(upload_id, record)
        resumed_from = int(record["confirmed"])
        replay_prefix(stream, hasher, resumed_from, self.chunk_bytes)
        final, sent = self._send_chunks(stream, hasher, record, upload_id, name)
        self._record_path(upload_id).unlink(missing_ok=True)
        sums = hasher.result()
        generation = final.get("generation")
        self._verify(zone, name, final.get("crc32c"), final.get("md5Hash"), sums.crc32c, sums.md5, generation)
        if "sha256" not in entry:
            blob = self.bucket.blob(key)
            blob.metadata = {"sha256": sums.sha256}
            blob.patch(
                if_generation_match=int(str(generation)), if_metageneration_match=int(final.get("metageneration", 1))
            )
        return self.stat(zone, name), resumed_from, sent, sums.sha256

    def _send_chunks(
        self, stream: BinaryIO, hasher: StreamingHasher, record: dict[str, Any], upload_id: str, name: str
    ) -> tuple[dict[str, Any], int]:
        """PUTs the rest of the source chunk by chunk; returns the final object resource and bytes sent."""
        session = self.client._http
        url, size = record["session_url"], int(record["size"])
        offset, sent = int(record["confirmed"]), 0
        final: dict[str, Any] | None = None
        while final is None:
            if offset >= size:
                raise StorageError(f"{name}: GCS confirmed every byte but sent no object; upload again")
            data = read_exact(stream, min(self.chunk_bytes, size - offset))
            if offset + len(data) < size and len(data) < self.chunk_bytes:
                raise StorageError(f"{name}: the source ended at byte {offset + len(data)}, before its size {size}")
            hasher.update(data)
            end, position, stalled = offset + len(data), offset, 0
            while position < end:
                body = data[position - offset :]
                response = session.put(
                    url,
                    data=body,
                    headers={"Content-Range": f"bytes {position}-{end - 1}/{size}"},
                    timeout=REQUEST_TIMEOUT_SECONDS,
                )
                sent += len(body)
                if response.status_code in (200, 201):
                    final = response.json()
                    break
                if response.status_code != 308:
                    raise self._session_error(name, upload_id, response.status_code)
                confirmed = _confirmed_offset(response)
                if confirmed < offset:
                    self._record_path(upload_id).unlink(missing_ok=True)
                    raise StorageError(f"{name}: GCS holds fewer bytes than it confirmed before; upload again")
                stalled = stalled + 1 if confirmed <= position else 0
                if stalled > MAX_STALLED_CHUNK_SENDS:
                    raise StorageError(f"{name}: GCS keeps refusing bytes from offset {position}; upload again later")
                position = confirmed
                record["confirmed"] = position
                self._save_record(upload_id, record)
            offset = end
        return final, sent

    def _session_error(self, name: str, upload_id: str, status: int) -> Exception:
        """The error for a failed chunk; the resume record is kept only when resuming can still work."""
        if status in (404, 410, 412):
            self._record_path(upload_id).unlink(missing_ok=True)
        if status == 412:
            return AlreadyExists(name)
        if status in (404, 410):
            return StorageError(f"{name}: the resumable upload session expired or was cancelled; upload again")
        return StorageError(
            f"{name}: GCS answered HTTP {status} during a resumable upload; run again to resume from the last chunk"
        )

    def _verify(
        self,
        zone: str,
        name: str,
        crc32c: str | None,
        md5: str | None,
        expected_crc32c: str,
        expected_md5: str,
        generation: Any,
    ) -> None:
        """Compares GCS's CRC32C and MD5 with the ones computed while reading; removes a bad object."""
        if crc32c == expected_crc32c and (md5 is None or md5 == expected_md5):
            return
        with contextlib.suppress(gexc.NotFound, gexc.PreconditionFailed):
            self.bucket.blob(self.object_key(zone, name)).delete(if_generation_match=int(generation))
        raise ChecksumMismatch(
            f"{zone}/{name}: GCS reports CRC32C {crc32c} / MD5 {md5} but the bytes read had {expected_crc32c} / "
            f"{expected_md5}; the object was removed; check the source and upload again"
        )

    def _move(self, name: str, source_zone: Zone, target_zone: Zone, updates: dict[str, str]) -> ObjectInfo:
        source = self.bucket.get_blob(self.object_key(source_zone, name))
        if source is None:
            with contextlib.suppress(ObjectNotFound):
                return self.stat(target_zone, name)  # already moved (a retried call)
            raise ObjectNotFound(f"{source_zone}/{name}: no such object to move to {target_zone}")
        target = self.bucket.blob(self.object_key(target_zone, name))
        target.metadata = dict(source.metadata or {}, **updates)
        target.content_type = source.content_type
        try:
            token: str | None = None
            while True:
                token, _, _ = target.rewrite(source, token=token, if_generation_match=0)
                if token is None:
                    break
        except gexc.PreconditionFailed:
            existing = self.stat(target_zone, name)  # a crash after the copy: finish the move
            if (existing.crc32c, existing.md5) != (source.crc32c, source.md5_hash):
                raise StorageError(
                    f"{target_zone}/{name}: already holds another object; resolve by hand before moving"
                ) from None
        with contextlib.suppress(gexc.NotFound, gexc.PreconditionFailed):
            source.delete(if_generation_match=source.generation)
        return self.stat(target_zone, name)

    def _record_sha256(self, info: ObjectInfo, sha256: str) -> ObjectInfo:
        blob = self.bucket.get_blob(self.object_key(info.zone, info.name))
        if blob is None or str(blob.generation) != info.generation:
            raise StorageError(f"{info.zone}/{info.name}: changed while being verified; verify again")
        metageneration = blob.metageneration
        blob.metadata = {"sha256": sha256, "bytes": str(info.size)}
        try:
            blob.patch(if_generation_match=blob.generation, if_metageneration_match=metageneration)
        except gexc.PreconditionFailed:
            raise StorageError(f"{info.zone}/{info.name}: changed while being verified; verify again") from None
        return self.stat(info.zone, info.name)

    # ------------------------------------------------------------------ signed URLs

    def _signing_credentials(self) -> Any:
        path = self.signing_key_file or os.environ.get(SIGNING_KEY_ENV)
        if not path:
            raise StorageError(
                f"signed URLs need a service-account key: set {SIGNING_KEY_ENV} to the path of its JSON key file"
            )
        from google.oauth2 import service_account

        try:
            return service_account.Credentials.from_service_account_file(str(path))
        except (OSError, ValueError, KeyError) as error:
            raise StorageError(
                f"{path}: not a readable service-account JSON key ({type(error).__name__}); check {SIGNING_KEY_ENV}"
            ) from None

    def signed_upload_url(
        self,
        name: str,
        *,
        content_type: str,
        expires_in_seconds: int = 900,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
    ) -> SignedUpload:
        """Returns a V4 signed URL for one PUT of ``name`` into the staging zone.

        The content type, ``x-goog-meta-*`` fields, ``x-goog-if-generation-match: 0`` (no overwrite) and,
        when given, ``Content-MD5`` are signed headers: the client must send them as returned, and
        GCS refuses the PUT when any differs.

        Args:
            name: Object name inside the staging zone.
            content_type: The content type the client must send.
            expires_in_seconds: Lifetime, 1 .. ``max_signed_url_seconds``.
            metadata: Manifest fields to bind (``original_name``, ``lane``, ...).
            md5: Base64 MD5 of the bytes the client will send; GCS then rejects other bytes.

        Returns:
            The URL, the headers to send and the expiry.
        """
        if not 1 <= expires_in_seconds <= self.max_signed_url_seconds:
            raise StorageError(
                f"signed URL lifetime {expires_in_seconds}s: must be between 1 and {self.max_signed_url_seconds}s"
            )
        fields = check_caller_metadata(metadata)
        headers = {"x-goog-if-generation-match": "0", "x-goog-meta-state": "uploaded"}
        headers.update({f"x-goog-meta-{key}": value for key, value in fields.items()})
        blob = self.bucket.blob(self.object_key("staging", name))
        url = blob.generate_signed_url(
            version="v4",
            expiration=timedelta(seconds=expires_in_seconds),
            method="PUT",
            content_type=content_type,
            content_md5=md5,
            headers=headers,
            credentials=self._signing_credentials(),
            api_access_endpoint=os.environ.get(EMULATOR_ENV) or PUBLIC_ENDPOINT,
        )
        send = {"Content-Type": content_type, **headers}
        if md5:
            send["Content-MD5"] = md5
        return SignedUpload(
            url=url,
            method="PUT",
            headers=send,
            expires_at=datetime.now(timezone.utc) + timedelta(seconds=expires_in_seconds),
            zone="staging",
            name=name,
        )
