"""The local-filesystem zone store (the embedded default).

Layout under the root directory::

    <zone>/<name>                       the object's bytes
    <zone>/.meta/<name>.json            sidecar: size, checksums, content type, manifest entry
    <zone>/.uploads/<upload_id>.part    bytes of an upload in progress
    <zone>/.uploads/<upload_id>.chunks  one JSON line per confirmed chunk: offset, length, sha256
    <zone>/.uploads/<upload_id>.lock    flock held while a process writes that upload

A chunk is confirmed once its bytes are fsynced into the ``.part`` file; its line is then fsynced
into ``.chunks``. After a crash the next upload with the same id truncates the part to the last
confirmed chunk, re-reads (without re-writing) that prefix of the source to rebuild the running
digests, checks every confirmed chunk's SHA-256 against it, and continues. The finished part is
re-read and verified, then published with ``os.link`` (atomic, never overwrites: two writers of
one name cannot both win), and the sidecar is renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from components.ingest.storage.base import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_RESUMABLE_THRESHOLD,
    ZONES,
    AlreadyExists,
    ChecksumMismatch,
    ObjectInfo,
    ObjectNotFound,
    SignedUpload,
    StorageError,
    Zone,
    ZoneStore,
    check_name,
    check_zone,
    file_checksums,
    read_exact,
)
from components.ingest.storage.checksums import Checksums, StreamingHasher, sha256_hex

META_DIR = ".meta"
ConfirmedChunks = list[tuple[int, int, str]]  # (offset, length, sha256) of each confirmed chunk
UPLOADS_DIR = ".uploads"


def _fsync_dir(directory: Path) -> None:
    """Flushes a directory entry change (rename/link) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Writes JSON under a temporary name, fsyncs it and renames it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(document, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class LocalZoneStore(ZoneStore):
    """Zones as directories under one root (see the module docstring for the layout).

    Args:
        root: The store's root directory (created if missing).
        chunk_bytes: Bytes per confirmed chunk of a resumable upload.
        resumable_threshold: Sources larger than this are written with per-chunk confirmation records.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        resumable_threshold: int = DEFAULT_RESUMABLE_THRESHOLD,
    ) -> None:
        self.root = Path(root)
        self.uri = self.root.resolve().as_uri()
        self.chunk_bytes = chunk_bytes
        self.resumable_threshold = resumable_threshold
        for zone in ZONES:
            (self.root / zone / META_DIR).mkdir(parents=True, exist_ok=True)
            (self.root / zone / UPLOADS_DIR).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths

    def _object_path(self, zone: str, name: str) -> Path:
        return self.root / check_zone(zone) / check_name(name)

    def _meta_path(self, zone: str, name: str) -> Path:
        return self.root / check_zone(zone) / META_DIR / (check_name(name) + ".json")

    def _upload_paths(self, zone: str, upload_id: str) -> tuple[Path, Path]:
        uploads = self.root / zone / UPLOADS_DIR
        return uploads / f"{upload_id}.part", uploads / f"{upload_id}.chunks"

    # ------------------------------------------------------------------ reads

    def stat(self, zone: str, name: str) -> ObjectInfo:
        """Returns an object's size, checksums and manifest entry (from its sidecar)."""
        path = self._object_path(zone, name)
        try:
            status = path.stat()
        except FileNotFoundError:
            raise ObjectNotFound(f"{zone}/{name}: no such object") from None
        try:
            sidecar = json.loads(self._meta_path(zone, name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            # Published but the sidecar rename did not happen (crash): recompute what the bytes say.
            sums = file_checksums(path)
            sidecar = {"crc32c": sums.crc32c, "md5": sums.md5, "sha256": sums.sha256, "metadata": {}}
        return ObjectInfo(
            zone=zone,
            name=name,
            size=status.st_size,
            crc32c=sidecar["crc32c"],
            md5=sidecar["md5"],
            sha256=sidecar["sha256"],
            content_type=sidecar.get("content_type", "application/octet-stream"),
            metadata=dict(sidecar.get("metadata", {})),
            generation=str(status.st_ino),
        )

    def list(self, zone: str) -> list[ObjectInfo]:
        """Returns every object in a zone, sorted by name (the store's own dot-folders are skipped)."""
        base = self.root / check_zone(zone)
        names: list[str] = []
        for directory, subdirs, files in os.walk(base):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            relative = Path(directory).relative_to(base)
            names.extend((relative / f).as_posix() for f in files if not f.startswith("."))
        return [self.stat(zone, name) for name in sorted(names)]

    def open(self, zone: str, name: str) -> BinaryIO:
        """Opens an object for binary reading."""
        try:
            return open(self._object_path(zone, name), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{zone}/{name}: no such object") from None

    def delete(self, zone: str, name: str) -> None:
        """Removes an object and its sidecar (no error when absent)."""
        self._object_path(zone, name).unlink(missing_ok=True)
        self._meta_path(zone, name).unlink(missing_ok=True)

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
        part, chunks_file = self._upload_paths(zone, upload_id)
        with open(part.with_suffix(".lock"), "a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageError(f"{zone}/{name}: another process is uploading it right now; retry later") from None
            return self._write_locked(zone, name, stream, size, entry, content_type, part, chunks_file)

    def _write_locked(
        self,
        zone: Zone,
        name: str,
        stream: BinaryIO,
        size: int,
        entry: dict[str, str],
        content_type: str,
        part: Path,
        chunks_file: Path,
    ) -> tuple[ObjectInfo, int, int, str]:
        confirmed = self._load_chunks(chunks_file)
        resumed_from = sum(length for _, length, _ in confirmed)
        hasher = StreamingHasher()
        for offset, length, chunk_sha in confirmed:
            data = read_exact(stream, length)
            if len(data) != length or sha256_hex(data) != chunk_sha:
                self._discard(part, chunks_file)
                raise ChecksumMismatch(
                    f"{zone}/{name}: the source differs from the interrupted upload at byte {offset}; the partial "
                    "upload was discarded; upload again"
                )
            hasher.update(data)
        record_chunks = size > self.resumable_threshold
        sent = self._append_chunks(stream, part, chunks_file, hasher, resumed_from, record_chunks)
        sums = hasher.result()
        stored = file_checksums(part)
        if stored != sums:
            self._discard(part, chunks_file)
            raise ChecksumMismatch(
                f"{zone}/{name}: bytes written ({stored.size} bytes) do not match the bytes read ({sums.size} bytes, "
                "or their checksums); the partial upload was discarded; upload again"
            )
        entry = dict(entry, sha256=entry.get("sha256", sums.sha256), bytes=str(sums.size))
        self._publish(zone, name, part, sums, entry, content_type)
        chunks_file.unlink(missing_ok=True)
        return self.stat(zone, name), resumed_from, sent, sums.sha256

    @staticmethod
    def _load_chunks(chunks_file: Path) -> ConfirmedChunks:
        """Reads the confirmed chunks of an interrupted upload (a torn last line is ignored)."""
        if not chunks_file.exists():
            return []
        confirmed: ConfirmedChunks = []
        expected_offset = 0
        for line in chunks_file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if record["offset"] != expected_offset:
                break
            confirmed.append((record["offset"], record["length"], record["sha256"]))
            expected_offset += record["length"]
        return confirmed

    def _append_chunks(
        self,
        stream: BinaryIO,
        part: Path,
        chunks_file: Path,
        hasher: StreamingHasher,
        offset: int,
        record_chunks: bool,
    ) -> int:
        """Writes the rest of the stream into the part file from ``offset``; returns the bytes written."""
        mode = "r+b" if part.exists() else "wb"
        sent = 0
        with open(part, mode) as out, open(chunks_file, "a", encoding="utf-8") as log:
            out.truncate(offset)
            out.seek(offset)
            while data := read_exact(stream, self.chunk_bytes):
                out.write(data)
                hasher.update(data)
                sent += len(data)
                if record_chunks:
                    out.flush()
                    os.fsync(out.fileno())
                    log.write(json.dumps({"offset": offset, "length": len(data), "sha256": sha256_hex(data)}) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                offset += len(data)
            out.flush()
            os.fsync(out.fileno())
        return sent

    def _publish(
        self, zone: str, name: str, part: Path, sums: Checksums, entry: dict[str, str], content_type: str
    ) -> None:
        """Links the verified part to its name (never overwriting), then renames the sidecar into place."""
        target = self._object_path(zone, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = self._meta_path(zone, name)
        meta.parent.mkdir(parents=True, exist_ok=True)
        sidecar = {
            "content_type": content_type,
            "crc32c": sums.crc32c,
            "md5": sums.md5,
            "sha256": sums.sha256,
            "size": sums.size,
            "metadata": entry,
        }
        try:
            os.link(part, target)
        except FileExistsError:
            part.unlink(missing_ok=True)
            raise AlreadyExists(name) from None
        _write_json_atomic(meta, sidecar)
        part.unlink()
        _fsync_dir(target.parent)

    def _forget_resume(self, zone: Zone, upload_id: str) -> None:
        part, chunks_file = self._upload_paths(zone, upload_id)
        self._discard(part, chunks_file)

    @staticmethod
    def _discard(part: Path, chunks_file: Path) -> None:
        part.unlink(missing_ok=True)
        chunks_file.unlink(missing_ok=True)

    def _move(self, name: str, source_zone: Zone, target_zone: Zone, updates: dict[str, str]) -> ObjectInfo:
        source = self._object_path(source_zone, name)
        target = self._object_path(target_zone, name)
        if not source.exists():
            if target.exists():
                return self.stat(target_zone, name)  # already moved (a retried call)
            raise ObjectNotFound(f"{source_zone}/{name}: no such object to move to {target_zone}")
        info = self.stat(source_zone, name)
        sidecar = {
            "content_type": info.content_type,
            "crc32c": info.crc32c,
            "md5": info.md5,
            "sha256": info.sha256,
            "size": info.size,
            "metadata": dict(info.metadata, **updates),
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self._meta_path(target_zone, name), sidecar)
        with contextlib.suppress(FileExistsError):  # a crash after the link: finish the move
            os.link(source, target)
        if source.stat().st_ino != target.stat().st_ino:
            raise StorageError(f"{target_zone}/{name}: already holds another object; resolve by hand before moving")
        source.unlink()
        self._meta_path(source_zone, name).unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return self.stat(target_zone, name)

    def signed_upload_url(
        self,
        name: str,
        *,
        content_type: str,
        expires_in_seconds: int = 900,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
    ) -> SignedUpload:
        """Not available locally: there is no server for a client to PUT to.

        Raises:
            StorageError: Always; signed URLs need a ``gs://`` store.
        """
        raise StorageError(
            f"{self.uri}: signed upload URLs need a GCS store (gs://bucket/prefix); a local store has no server "
            "for clients to upload to — copy files in with upload() instead"
        )
