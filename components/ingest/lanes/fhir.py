"""FHIR lane: Bulk NDJSON (plain or gzip) verified by ``components.ingest.ingest.verify_file``."""

from __future__ import annotations

import re
from pathlib import Path

from clinflow.errors import UserError
from clinflow.ndjson import resource_type_from_name
from components.ingest import sniff
from components.ingest.ingest import verify_file
from components.ingest.lanes.verdict import LaneVerdict, promote, quarantine

LANE = "fhir"
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
# verify_file's UserError messages -> reason codes (first match wins).
_ERROR_CODES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"gzip data is truncated or corrupt"), "truncated_gzip"),
    (re.compile(r"not valid UTF-8"), "invalid_encoding"),
    (re.compile(r"does not match the file name's type"), "resource_type_mismatch"),
    (re.compile(r"expected a JSON object"), "not_json_object"),
    (re.compile(r"not valid JSON"), "invalid_json_line"),
)
_LINE = re.compile(r"^[^:]+:(\d+):")


def error_code(message: str) -> str:
    """Maps a ``verify_file`` error message to a reason code."""
    for pattern, code in _ERROR_CODES:
        if pattern.search(message):
            return code
    return "fhir_verification_failed"


def validate(path: Path, content_type: str) -> LaneVerdict:
    """Verifies one FHIR NDJSON file.

    Args:
        path: The file; its name must start with the resource type (``Patient.000.ndjson[.gz]``).
        content_type: The sniffed content type (``ndjson`` or ``gzip``).

    Returns:
        ``promote`` with resource counts, or ``quarantine`` with the reason code and line.
    """
    name = path.name
    head, _ = sniff.read_head(path, 4)
    if sniff.has_bom(head):
        return quarantine(
            name,
            LANE,
            content_type,
            "byte_order_mark",
            f"{name}:1: starts with a UTF-8 byte order mark, which NDJSON does not allow; re-export without a BOM",
        )
    if not _RESOURCE_TYPE.match(resource_type_from_name(name)):
        return quarantine(
            name,
            LANE,
            content_type,
            "resource_type_not_in_name",
            f"{name}: the name does not start with a FHIR resource type; rename it to <ResourceType>.000.ndjson",
        )
    try:
        record = verify_file(path)
    except UserError as error:
        message = str(error)
        match = _LINE.match(message)
        details = {"line": int(match.group(1))} if match else {}
        return quarantine(name, LANE, content_type, error_code(message), message, details)
    if record.resources == 0:
        return quarantine(
            name,
            LANE,
            content_type,
            "empty_file",
            f"{name}: holds no FHIR resources ({record.blank_lines} blank lines); re-export it or remove it",
        )
    return promote(
        name,
        LANE,
        content_type,
        f"{name}: {record.resources:,} {record.resource_type} resources verified",
        details={
            "resource_type": record.resource_type,
            "resources": record.resources,
            "blank_lines": record.blank_lines,
            "sha256": record.sha256,
            "bytes": record.bytes,
        },
    )
