"""Size and decompression-bomb limits for ingest inputs, checked while streaming.

``IngestLimits`` holds the per-lane byte limits and the archive limits (configurable, sane
defaults). ``check_gzip`` streams a gzip file through ``zlib`` in bounded chunks and stops as soon
as the decompressed size or the compression ratio passes its limit, so a bomb is never inflated.
``check_zip`` reads a zip's central directory (entry count, names, declared sizes and ratios,
nested archives) and then streams each entry with the same running limits.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MiB = 1024 * 1024
GiB = 1024 * MiB
READ_CHUNK = 256 * 1024
# Output produced per zlib call; bounds memory whatever the input.
INFLATE_CHUNK = 1 * MiB
NESTED_ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz", ".zst", ".jar")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"BZh", b"\xfd7zXZ\x00")


@dataclass(frozen=True)
class IngestLimits:
    """Limits applied before a lane sees a file.

    Attributes:
        max_fhir_bytes: Largest FHIR NDJSON file (as stored, compressed or not).
        max_dicom_bytes: Largest DICOM file.
        max_device_log_bytes: Largest device-log file.
        max_pdf_bytes: Largest PDF.
        max_decompressed_bytes: Largest decompressed size of a gzip file or zip entry total.
        max_ratio: Largest decompressed/compressed ratio.
        ratio_floor_bytes: The ratio is only enforced once this much has been decompressed, so
            tiny, very compressible files are not flagged.
        max_zip_entries: Most entries a zip may hold.
    """

    max_fhir_bytes: int = 8 * GiB
    max_dicom_bytes: int = 2 * GiB
    max_device_log_bytes: int = 512 * MiB
    max_pdf_bytes: int = 64 * MiB
    max_decompressed_bytes: int = 32 * GiB
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 8 * MiB
    max_zip_entries: int = 10_000

    def max_bytes(self, lane: str) -> int | None:
        """The byte limit of a lane, or None for an unknown lane."""
        return {
            "fhir": self.max_fhir_bytes,
            "dicom": self.max_dicom_bytes,
            "device_logs": self.max_device_log_bytes,
            "pdf": self.max_pdf_bytes,
        }.get(lane)


DEFAULT_LIMITS = IngestLimits()


@dataclass(frozen=True)
class LimitFinding:
    """A limit a file broke (or a corrupt archive found while checking).

    Attributes:
        code: ``decompression_bomb``, ``too_many_entries``, ``zip_path_traversal``, ``nested_archive``,
            ``truncated_gzip``, ``corrupt_zip`` or ``size_limit_exceeded``.
        message: What is wrong and where (no file content).
    """

    code: str
    message: str


def check_size(path: str | os.PathLike[str], lane: str, limits: IngestLimits = DEFAULT_LIMITS) -> LimitFinding | None:
    """Checks a file's size against its lane's limit."""
    limit = limits.max_bytes(lane)
    size = Path(path).stat().st_size
    if limit is not None and size > limit:
        return LimitFinding(
            "size_limit_exceeded",
            f"{size:,} bytes is over the {lane} lane limit of {limit:,} bytes; split the file or raise the limit",
        )
    return None


def _bomb(inflated: int, compressed: int, limits: IngestLimits) -> LimitFinding | None:
    """Returns a bomb finding when ``inflated`` bytes from ``compressed`` break a limit."""
    if inflated > limits.max_decompressed_bytes:
        return LimitFinding(
            "decompression_bomb",
            f"decompresses to more than {limits.max_decompressed_bytes:,} bytes; refused as a decompression bomb",
        )
    if inflated >= limits.ratio_floor_bytes and inflated > limits.max_ratio * max(compressed, 1):
        return LimitFinding(
            "decompression_bomb",
            f"decompresses more than {limits.max_ratio:g} times its {compressed:,} compressed bytes "
            f"(over {inflated:,} bytes so far); refused as a decompression bomb",
        )
    return None


def check_gzip(path: str | os.PathLike[str], limits: IngestLimits = DEFAULT_LIMITS) -> LimitFinding | None:
    """Streams a (multi-member) gzip file and checks the bomb limits and that it is complete.

    The ratio is measured against the whole compressed file size, so a bomb is stopped after at
    most ``max_ratio * file size`` output bytes, whichever member holds it.

    Returns:
        None when the file is within limits and complete, else the finding.
    """
    compressed = Path(path).stat().st_size
    inflated = 0
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as handle:
        pending = b""
        while True:
            if not pending:
                pending = handle.read(READ_CHUNK)
                if not pending:
                    break
            try:
                out = decoder.decompress(pending, INFLATE_CHUNK)
            except zlib.error as error:
                return LimitFinding("truncated_gzip", f"gzip data is corrupt after {inflated:,} bytes ({error})")
            inflated += len(out)
            finding = _bomb(inflated, compressed, limits)
            if finding is not None:
                return finding
            pending = decoder.unconsumed_tail
            if decoder.eof:
                rest = decoder.unused_data + pending
                decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                pending = rest.lstrip(b"\x00")  # padding between members is tolerated
                if not pending:
                    more = handle.read(READ_CHUNK)
                    if not more.strip(b"\x00"):
                        return None
                    pending = more
    if inflated == 0 and compressed > 0 and not decoder.eof:
        return LimitFinding("truncated_gzip", "gzip data ends before its first block is complete")
    if not decoder.eof:
        return LimitFinding("truncated_gzip", f"gzip data ends early, after {inflated:,} decompressed bytes")
    return None


def _unsafe_name(name: str) -> bool:
    """Tells whether a zip entry name escapes the extraction directory."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return True
    return ".." in PurePosixPath(normalised).parts


def check_zip(path: str | os.PathLike[str], limits: IngestLimits = DEFAULT_LIMITS) -> LimitFinding | None:
    """Checks a zip: entry count, path traversal names, nested archives and bomb limits (streamed).

    Returns:
        None when the archive is within every limit, else the first finding.
    """
    compressed = Path(path).stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        return LimitFinding("corrupt_zip", f"not a readable zip archive ({error})")
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.max_zip_entries:
            return LimitFinding(
                "too_many_entries", f"holds {len(entries):,} entries, over the limit of {limits.max_zip_entries:,}"
            )
        for index, info in enumerate(entries, 1):
            if _unsafe_name(info.filename):
                return LimitFinding(
                    "zip_path_traversal", f"entry {index} has a name that leaves the extraction directory"
                )
        declared = sum(info.file_size for info in entries)
        finding = _bomb(declared, compressed, limits)
        if finding is not None:
            return finding
        inflated = 0
        for index, info in enumerate(entries, 1):
            if info.filename.lower().endswith(NESTED_ARCHIVE_SUFFIXES):
                return LimitFinding(
                    "nested_archive", f"entry {index} is itself an archive; nested archives are refused"
                )
            try:
                with archive.open(info) as member:
                    first = True
                    while chunk := member.read(INFLATE_CHUNK):
                        if first and chunk.startswith(_ARCHIVE_MAGIC):
                            return LimitFinding(
                                "nested_archive", f"entry {index} is itself an archive; nested archives are refused"
                            )
                        first = False
                        inflated += len(chunk)
                        finding = _bomb(inflated, compressed, limits)
                        if finding is not None:
                            return finding
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
                return LimitFinding("corrupt_zip", f"entry {index} cannot be read ({type(error).__name__})")
    return None


def gzip_head(path: str | os.PathLike[str], size: int) -> bytes:
    """Returns up to ``size`` decompressed bytes from the start of a gzip file (bounded memory)."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = b""
    with open(path, "rb") as handle:
        while len(out) < size and (chunk := handle.read(READ_CHUNK)):
            try:
                out += decoder.decompress(chunk, size - len(out))
            except zlib.error:
                break
            if decoder.eof:
                break
    return out[:size]
