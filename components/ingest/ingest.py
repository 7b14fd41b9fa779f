"""Verify a FHIR Bulk Data export directory and stage verified copies (plain functions).

Every ``<ResourceType>*.ndjson[.gz]`` file is read once: its bytes are hashed (SHA-256 of the file
as delivered, compressed or not) while each line is parsed with orjson and checked to be a JSON
object whose ``resourceType`` matches the type the file name declares. Bulk-export side files
(``log.ndjson``, ``manifest.json``) and a README beside the export are hashed, recorded and
skipped. Anything else is an error. Nothing is copied until every file has passed, and each copy is
re-hashed while it is written, so the output holds exactly the bytes that were verified.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from clinflow.errors import UserError
from clinflow.ndjson import is_ndjson_name, parse_line, resource_type_from_name

MANIFEST_FILE = "ingest_manifest.json"
CHUNK_BYTES = 4 * 1024 * 1024
PROGRESS_EVERY_LINES = 1_000_000
# Side files of a bulk export that are recorded and skipped rather than verified as resources.
SKIPPED_FILES = {
    "log.ndjson": "bulk-export log (bulk-data-client events), not FHIR resources",
    "manifest.json": "bulk-export manifest, not FHIR resources",
}
_README = re.compile(r"^readme(\.(md|txt|rst))?$", re.IGNORECASE)
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_PARTIAL_SUFFIX = ".partial"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FileRecord:
    """One verified NDJSON file.

    Attributes:
        file: File name (no directory).
        sha256: Hex SHA-256 of the file's bytes as stored (compressed when gzipped).
        bytes: File size in bytes.
        resource_type: The type the file name declares, which every line matched.
        resources: Number of resources (non-blank lines).
        blank_lines: Blank lines, which hold nothing and are not resources.
        state: Always ``clean`` once verified.
    """

    file: str
    sha256: str
    bytes: int
    resource_type: str
    resources: int
    blank_lines: int = 0
    state: str = "clean"

    def manifest_entry(self) -> dict[str, Any]:
        """Returns the ``files[]`` entry of ``ingest_manifest.json`` (docs/stages.md)."""
        return {
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "resource_type": self.resource_type,
            "resources": self.resources,
            "state": self.state,
        }


@dataclass(frozen=True)
class SkippedFile:
    """A side file that was recorded but not ingested.

    Attributes:
        file: File name.
        sha256: Hex SHA-256 of its bytes.
        bytes: File size in bytes.
        reason: Why it was skipped.
    """

    file: str
    sha256: str
    bytes: int
    reason: str

    def manifest_entry(self) -> dict[str, Any]:
        """Returns the ``skipped[]`` entry of ``ingest_manifest.json``."""
        return {
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "state": "skipped",
            "reason": self.reason,
        }


@dataclass
class Verification:
    """The outcome of verifying a source directory.

    Attributes:
        source: The source directory.
        files: Verified NDJSON files, sorted by name.
        skipped: Recorded-and-skipped side files, sorted by name.
    """

    source: Path
    files: list[FileRecord] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def resources_by_type(self) -> dict[str, int]:
        """Resources per resource type, sorted by type."""
        counts: Counter[str] = Counter()
        for record in self.files:
            counts[record.resource_type] += record.resources
        return dict(sorted(counts.items()))

    def totals(self) -> dict[str, Any]:
        """The ``totals`` object of the manifest."""
        return {
            "files": len(self.files),
            "resources": sum(r.resources for r in self.files),
            "bytes": sum(r.bytes for r in self.files),
            "blank_lines": sum(r.blank_lines for r in self.files),
            "skipped_files": len(self.skipped),
            "skipped_bytes": sum(s.bytes for s in self.skipped),
            "resources_by_type": self.resources_by_type(),
        }


class _Readable(Protocol):
    """Anything with a binary ``read``."""

    def read(self, size: int = -1, /) -> bytes:
        """Reads up to ``size`` bytes."""
        ...


class _HashingReader:
    """A binary reader that hashes and counts every byte read through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.mode = "rb"

    def read(self, size: int = -1) -> bytes:
        """Reads up to ``size`` bytes (all when negative), hashing them."""
        data = self._handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Reads (and hashes) whatever the consumer left unread, e.g. bytes after a gzip stream."""
        while self.read(CHUNK_BYTES):
            pass


# --------------------------------------------------------------------------- listing


def _skip_reason(name: str) -> str | None:
    """Returns why a file is recorded-and-skipped, or None when it must be verified."""
    if name in SKIPPED_FILES:
        return SKIPPED_FILES[name]
    if _README.match(name):
        return "documentation beside the export, not FHIR resources"
    return None


def _check_data_name(source: Path, path: Path) -> None:
    """Rejects entries that are not ``<ResourceType>*.ndjson[.gz]`` files."""
    name = path.name
    if path.is_dir():
        raise UserError(f"{name}: is a directory inside {source}; the source must be a flat FHIR Bulk export directory")
    if not path.is_file():
        raise UserError(f"{name}: not a regular file in {source}; remove it")
    if not is_ndjson_name(name):
        raise UserError(
            f"{name}: not a FHIR NDJSON file (expected <ResourceType>*.ndjson or .ndjson.gz; only log.ndjson "
            f"and manifest.json are skipped); remove it from {source}"
        )
    if not _RESOURCE_TYPE.match(resource_type_from_name(name)):
        raise UserError(
            f"{name}: the file name does not start with a FHIR resource type (e.g. Patient.000.ndjson); rename it"
        )


def list_source(source: str | os.PathLike[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Sorts a source directory's entries into NDJSON files to verify and side files to skip.

    Args:
        source: The FHIR Bulk export directory.

    Returns:
        ``(data_files, skipped)``: NDJSON paths sorted by name, and ``(path, reason)`` pairs.

    Raises:
        UserError: The directory is missing or empty, has no NDJSON file, or holds anything else.
    """
    directory = Path(source)
    if not directory.exists():
        raise UserError(f"{directory}: source directory does not exist; pass a FHIR Bulk Data export directory")
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; pass the FHIR Bulk Data export directory, not a file")
    entries = sorted(directory.iterdir(), key=lambda p: p.name)
    if not entries:
        raise UserError(f"{directory}: empty directory, no FHIR NDJSON files to ingest")
    data: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in entries:
        reason = _skip_reason(path.name)
        if reason is not None and path.is_file():
            skipped.append((path, reason))
            continue
        _check_data_name(directory, path)
        data.append(path)
    if not data:
        names = ", ".join(p.name for p, _ in skipped)
        raise UserError(f"{directory}: no FHIR NDJSON files (<ResourceType>*.ndjson[.gz]) to ingest, only {names}")
    return data, skipped


# --------------------------------------------------------------------------- verification


def _raise_bad_line(name: str, number: int, line: bytes, error: orjson.JSONDecodeError) -> None:
    """Raises the precise one-line error for a line orjson rejected."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as decode_error:
        raise UserError(
            f"{name}:{number}: not valid UTF-8 at byte {decode_error.start}; re-export or re-download the file"
        ) from decode_error
    parse_line(name, number, text)  # raises with the json module's line/column message
    raise UserError(f"{name}:{number}: not valid JSON ({error}); the line may be truncated or hold NaN/Infinity")


def verify_lines(name: str, declared: str, lines: list[bytes], first_number: int) -> tuple[int, int]:
    """Checks a batch of NDJSON lines: each a JSON object with the declared ``resourceType``.

    Args:
        name: File name for messages.
        declared: The resource type the file name declares.
        lines: Raw lines without their newline.
        first_number: 1-based line number of ``lines[0]``.

    Returns:
        ``(resources, blank_lines)`` in the batch.

    Raises:
        UserError: A line is not JSON, not an object, or has another ``resourceType``.
    """
    loads = orjson.loads
    blank = 0
    for number, line in enumerate(lines, first_number):
        try:
            value = loads(line)
        except orjson.JSONDecodeError as error:
            if not line.strip():
                blank += 1
                continue
            _raise_bad_line(name, number, line, error)
        if type(value) is not dict:
            raise UserError(f"{name}:{number}: expected a JSON object (a FHIR resource), got {type(value).__name__}")
        if value.get("resourceType") != declared:
            raise UserError(
                f"{name}:{number}: resourceType {value.get('resourceType')!r} does not match the file name's "
                f"type {declared!r}; put each resource type in its own <Type>.ndjson file"
            )
    return len(lines) - blank, blank


@dataclass
class _Tally:
    """Running counts while a file is scanned (kept when the scan fails, for the message)."""

    resources: int = 0
    blank: int = 0
    lines: int = 0


def _scan(name: str, declared: str, stream: _Readable, tally: _Tally, progress: Progress | None) -> None:
    """Reads a (decompressed) byte stream in chunks and verifies every line, updating ``tally``."""
    next_report = PROGRESS_EVERY_LINES
    carry = b""
    while chunk := stream.read(CHUNK_BYTES):
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        good, empty = verify_lines(name, declared, lines, tally.lines + 1)
        tally.resources += good
        tally.blank += empty
        tally.lines += len(lines)
        if progress is not None and tally.lines >= next_report:
            progress(f"  {name}: {tally.lines:,} lines verified")
            next_report += PROGRESS_EVERY_LINES
    if carry:
        good, empty = verify_lines(name, declared, [carry], tally.lines + 1)
        tally.resources += good
        tally.blank += empty
        tally.lines += 1


def verify_file(path: Path, progress: Progress | None = None) -> FileRecord:
    """Verifies one NDJSON file (plain or gzipped) and returns its record.

    Args:
        path: The file.
        progress: Receives a line every ``PROGRESS_EVERY_LINES`` lines of a large file.

    Returns:
        The verified file's record.

    Raises:
        UserError: A bad line, a mismatched resource type, or a truncated/corrupt gzip.
    """
    name = path.name
    declared = resource_type_from_name(name)
    tally = _Tally()
    with open(path, "rb") as handle:
        reader = _HashingReader(handle)
        if name.lower().endswith(".gz"):
            try:
                with gzip.GzipFile(filename=name, mode="rb", fileobj=reader) as stream:  # type: ignore[call-overload]
                    _scan(name, declared, stream, tally, progress)
            except (EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise UserError(
                    f"{name}: gzip data is truncated or corrupt past line {tally.lines:,} ({error}); "
                    "re-download or re-export the file"
                ) from error
        else:
            _scan(name, declared, reader, tally, progress)
        reader.drain()
    return FileRecord(
        file=name,
        sha256=reader.digest.hexdigest(),
        bytes=reader.size,
        resource_type=declared,
        resources=tally.resources,
        blank_lines=tally.blank,
    )


def hash_file(path: Path) -> tuple[str, int]:
    """Returns the hex SHA-256 and size of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_source(source: str | os.PathLike[str], progress: Progress | None = None) -> Verification:
    """Verifies every file of a FHIR Bulk export directory, writing nothing.

    Args:
        source: The export directory.
        progress: Receives one line per file (and periodic lines inside large files).

    Returns:
        The verified files and the skipped side files.

    Raises:
        UserError: See ``list_source`` and ``verify_file``.
    """
    data, side_files = list_source(source)
    result = Verification(source=Path(source))
    for path, reason in side_files:
        sha256, size = hash_file(path)
        result.skipped.append(SkippedFile(path.name, sha256, size, reason))
        if progress is not None:
            progress(f"skipped  {path.name}: {reason}")
    for path in data:
        record = verify_file(path, progress)
        result.files.append(record)
        if progress is not None:
            progress(
                f"verified {record.file}: {record.resources:,} {record.resource_type} resources, {record.bytes:,} bytes"
            )
    return result


# --------------------------------------------------------------------------- outputs


def copy_verified(verification: Verification, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Copies the verified files into ``output_dir`` (same names), checking each copy's hash.

    Each file is written under a temporary name and renamed once its hash matches the verified
    one, so the output never holds a partial or changed file under a real name.

    Args:
        verification: The result of ``verify_source``.
        output_dir: The Dataset directory (created if missing).

    Returns:
        The written paths.

    Raises:
        UserError: A source file changed between verification and copying.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for record in verification.files:
        target = out / record.file
        partial = out / (record.file + _PARTIAL_SUFFIX)
        digest = hashlib.sha256()
        with open(verification.source / record.file, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(CHUNK_BYTES):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != record.sha256:
            partial.unlink()
            raise UserError(f"{record.file}: changed while being ingested (SHA-256 differs); run ingest again")
        os.replace(partial, target)
        written.append(target)
    return written


def manifest_document(verification: Verification) -> dict[str, Any]:
    """Builds ``ingest_manifest.json``: files (all ``clean``), skipped side files and totals."""
    return {
        "source": str(verification.source),
        "files": [record.manifest_entry() for record in verification.files],
        "skipped": [skipped.manifest_entry() for skipped in verification.skipped],
        "totals": verification.totals(),
    }


def write_manifest(verification: Verification, manifest_dir: str | os.PathLike[str]) -> Path:
    """Writes ``ingest_manifest.json`` into the manifest Artifact directory (created if missing)."""
    directory = Path(manifest_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_FILE
    path.write_bytes(orjson.dumps(manifest_document(verification), option=orjson.OPT_INDENT_2) + b"\n")
    return path


def stage_metrics(verification: Verification) -> dict[str, int]:
    """The stage's scalar metrics: files, resources, bytes, skipped files and per-type counts."""
    totals = verification.totals()
    metrics = {
        "files": totals["files"],
        "resources": totals["resources"],
        "bytes": totals["bytes"],
        "blank_lines": totals["blank_lines"],
        "skipped_files": totals["skipped_files"],
    }
    for resource_type, count in totals["resources_by_type"].items():
        metrics[f"resources_{resource_type}"] = count
    return metrics
