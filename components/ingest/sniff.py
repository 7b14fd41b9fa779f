"""Content type of an input file from its bytes (magic numbers and text structure), never its name.

``sniff_bytes(head)`` classifies the first bytes of a file; ``sniff_file(path)`` reads them. The
name is used only by ``expected_types`` to say which content a data extension promises, so the
dispatcher can catch a ``.dcm`` that is really a PDF.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson

HEAD_BYTES = 64 * 1024

# Content types.
EMPTY = "empty"
DICOM = "dicom"
DICOM_NO_PREAMBLE = "dicom_no_preamble"
PDF = "pdf"
GZIP = "gzip"
ZIP = "zip"
NDJSON = "ndjson"
JSON = "json"
CSV = "csv"
TEXT = "text"
ELF = "elf"
PE = "pe"
MACHO = "macho"
SCRIPT = "script"
HTML = "html"
PNG = "png"
JPEG = "jpeg"
GIF = "gif"
ARCHIVE = "archive"  # tar, 7z, rar, bzip2, xz, zstd
BINARY = "binary"

EXECUTABLES = frozenset({ELF, PE, MACHO})
IMAGES = frozenset({PNG, JPEG, GIF})

_UTF8_BOM = b"\xef\xbb\xbf"
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", PDF),
    (b"\x1f\x8b", GZIP),
    (b"PK\x03\x04", ZIP),
    (b"PK\x05\x06", ZIP),  # empty zip
    (b"\x7fELF", ELF),
    (b"MZ", PE),
    (b"\xcf\xfa\xed\xfe", MACHO),
    (b"\xce\xfa\xed\xfe", MACHO),
    (b"\xfe\xed\xfa\xcf", MACHO),
    (b"\xca\xfe\xba\xbe", MACHO),
    (b"#!", SCRIPT),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"GIF87a", GIF),
    (b"GIF89a", GIF),
    (b"7z\xbc\xaf\x27\x1c", ARCHIVE),
    (b"Rar!\x1a\x07", ARCHIVE),
    (b"BZh", ARCHIVE),
    (b"\xfd7zXZ\x00", ARCHIVE),
    (b"\x28\xb5\x2f\xfd", ARCHIVE),
)
_HTML = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body|<script|<\?xml[^>]*>\s*<html)", re.IGNORECASE)
# Explicit VR names, used to recognise a DICOM data set without the 128-byte preamble.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)

# Which content types a data extension promises (checked longest suffix first).
_EXTENSION_TYPES: tuple[tuple[str, frozenset[str]], ...] = (
    (".ndjson.gz", frozenset({GZIP})),
    (".jsonl.gz", frozenset({GZIP})),
    (".csv.gz", frozenset({GZIP})),
    (".ndjson", frozenset({NDJSON, JSON})),
    (".jsonl", frozenset({NDJSON, JSON})),
    (".json", frozenset({NDJSON, JSON})),
    (".csv", frozenset({CSV})),
    (".dcm", frozenset({DICOM, DICOM_NO_PREAMBLE})),
    (".dicom", frozenset({DICOM, DICOM_NO_PREAMBLE})),
    (".pdf", frozenset({PDF})),
    (".gz", frozenset({GZIP})),
)


def _looks_like_bare_dicom(head: bytes) -> bool:
    """Tells whether ``head`` starts with a little-endian DICOM element of group 0002 or 0008."""
    if len(head) < 8 or head[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if head[4:6] in _VRS:
        return True
    length = int.from_bytes(head[4:8], "little")
    return length < 1024 and head[2:4] in (b"\x00\x00", b"\x05\x00", b"\x08\x00", b"\x16\x00", b"\x18\x00", b"\x01\x00")


def _as_text(head: bytes) -> str | None:
    """Decodes ``head`` as UTF-8 text (tolerating a cut multi-byte character at the end), or None."""
    if b"\x00" in head:
        return None
    for cut in range(4):
        try:
            return head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError as error:
            if error.start < len(head) - 4:
                return None
    return None


def _mostly_text(head: bytes) -> bool:
    """Tells whether bytes look like text in some 8-bit encoding (no NUL, few control bytes)."""
    if b"\x00" in head:
        return False
    controls = sum(1 for byte in head[:4096] if byte < 9 or 13 < byte < 32)
    return controls <= len(head[:4096]) // 100


def _is_header(line: str) -> bool:
    """Tells whether a line looks like a CSV header: short column names of at most three words."""
    return all(0 < len(field.strip()) <= 64 and len(field.split()) <= 3 for field in line.split(","))


def _text_type(text: str, complete: bool) -> str:
    """Classifies text: NDJSON, JSON, CSV or plain text."""
    stripped = text.lstrip()
    lines = text.splitlines()
    if not complete and len(lines) > 1:
        lines = lines[:-1]  # the last line of a partial head may be cut
    if stripped.startswith("{"):
        first = next((line for line in lines if line.strip()), "")
        try:
            if isinstance(orjson.loads(first), dict):
                return NDJSON
        except orjson.JSONDecodeError:
            pass
        return JSON
    if stripped.startswith("["):
        return JSON
    rows = [line for line in lines[:5] if line.strip()]
    if rows and rows[0].count(",") >= 1 and all("," in row for row in rows) and _is_header(rows[0]):
        return CSV
    return TEXT


def sniff_bytes(head: bytes, complete: bool = False) -> str:
    """Classifies the first bytes of a file.

    Args:
        head: The file's first bytes (``HEAD_BYTES`` is plenty).
        complete: True when ``head`` is the whole file.

    Returns:
        One of the content type constants of this module.
    """
    if not head:
        return EMPTY
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    for magic, content_type in _MAGIC:
        if head.startswith(magic):
            return content_type
    if len(head) > 262 and head[257:262] == b"ustar":
        return ARCHIVE
    if _looks_like_bare_dicom(head):
        return DICOM_NO_PREAMBLE
    body = head[len(_UTF8_BOM) :] if head.startswith(_UTF8_BOM) else head
    if _HTML.match(body[:1024]):
        return HTML
    text = _as_text(body)
    if text is None:
        if not _mostly_text(body):
            return BINARY
        text = body.decode("latin-1")  # text with bad encoding: classified as text, the lane reports it
    return _text_type(text, complete)


def has_bom(head: bytes) -> bool:
    """Tells whether the bytes start with a UTF-8 byte order mark."""
    return head.startswith(_UTF8_BOM)


def read_head(path: str | os.PathLike[str], size: int = HEAD_BYTES) -> tuple[bytes, bool]:
    """Reads a file's first ``size`` bytes; returns them and whether that was the whole file."""
    with open(path, "rb") as handle:
        head = handle.read(size + 1)
    return head[:size], len(head) <= size


def sniff_file(path: str | os.PathLike[str]) -> str:
    """Classifies a file by its content (see ``sniff_bytes``)."""
    head, complete = read_head(path)
    return sniff_bytes(head, complete)


def expected_types(path: str | os.PathLike[str]) -> frozenset[str] | None:
    """The content types a data file's extension promises, or None for other names."""
    name = Path(path).name.lower()
    for suffix, types in _EXTENSION_TYPES:
        if name.endswith(suffix):
            return types
    return None
