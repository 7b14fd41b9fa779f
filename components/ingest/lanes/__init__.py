"""Ingest lanes: sniff a file's content, check limits, and route it to its lane for a verdict.

``route(path)`` never raises for bad input: every file ends with a ``LaneVerdict`` whose outcome is
``promote``, ``quarantine`` (kept for a person to fix) or ``reject`` (refused by security policy).

Order of checks: empty file; disguised executables, scripts, HTML, images and archives (reject);
zip and gzip limits (reject bombs, traversal, nesting); a data extension that promises another
format (quarantine); the lane's size limit (reject); then the lane's validator. An unexpected
exception inside a validator becomes a ``validator_error`` quarantine verdict and is logged with
its type only.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

from components.ingest import limits, sniff
from components.ingest.lanes import device_logs, dicom, fhir, pdf
from components.ingest.lanes.verdict import OUTCOMES, LaneVerdict, Outcome, promote, quarantine, reject

__all__ = [
    "LANES",
    "OUTCOMES",
    "LaneVerdict",
    "Outcome",
    "count_outcomes",
    "lane_for",
    "promote",
    "quarantine",
    "reject",
    "route",
    "route_many",
]

UNROUTED = "unrouted"
Validator = Callable[[Path, str], LaneVerdict]
LANES: dict[str, Validator] = {
    fhir.LANE: fhir.validate,
    dicom.LANE: dicom.validate,
    device_logs.LANE: device_logs.validate,
    pdf.LANE: pdf.validate,
}
_LOG = logging.getLogger(__name__)
_DISGUISES: dict[str, tuple[str, str]] = {
    sniff.ELF: ("executable_disguised", "is a Linux (ELF) executable"),
    sniff.PE: ("executable_disguised", "is a Windows (MZ/PE) executable"),
    sniff.MACHO: ("executable_disguised", "is a macOS (Mach-O) executable"),
    sniff.SCRIPT: ("script_disguised", "is a script (starts with #!)"),
    sniff.HTML: ("html_disguised", "is an HTML page"),
    sniff.PNG: ("image_not_allowed", "is a PNG image; images are only accepted inside DICOM or PDF"),
    sniff.JPEG: ("image_not_allowed", "is a JPEG image; images are only accepted inside DICOM or PDF"),
    sniff.GIF: ("image_not_allowed", "is a GIF image; images are only accepted inside DICOM or PDF"),
    sniff.ARCHIVE: ("archive_not_allowed", "is an archive (tar/7z/rar/bzip2/xz/zstd)"),
}
_EXTENSION_LANES: tuple[tuple[str, str], ...] = (
    (".dcm", dicom.LANE),
    (".dicom", dicom.LANE),
    (".pdf", pdf.LANE),
    (".csv", device_logs.LANE),
    (".csv.gz", device_logs.LANE),
)


def _name_lane(name: str) -> str:
    """The lane a file name suggests (used for empty or unrecognised files and mismatches)."""
    lower = name.lower()
    for suffix, lane in _EXTENSION_LANES:
        if lower.endswith(suffix):
            return lane
    if lower.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz", ".json")):
        return fhir.LANE
    return UNROUTED


def _json_lane(head: bytes) -> str:
    """FHIR when the first JSON line is a resource, device logs when it has telemetry keys."""
    first = head.lstrip().split(b"\n", 1)[0]
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError:
        return UNROUTED
    if isinstance(value, dict):
        if "resourceType" in value:
            return fhir.LANE
        if "device_id" in value or "metric" in value:
            return device_logs.LANE
    return UNROUTED


def lane_for(content_type: str, head: bytes, name: str) -> str:
    """Chooses the lane for sniffed content (``head`` is the decompressed head of a gzip file)."""
    if content_type in (sniff.DICOM, sniff.DICOM_NO_PREAMBLE):
        return dicom.LANE
    if content_type == sniff.PDF:
        return pdf.LANE
    if content_type == sniff.CSV:
        return device_logs.LANE
    if content_type in (sniff.NDJSON, sniff.JSON):
        lane = _json_lane(head)
        if lane != UNROUTED:
            return lane
        suggested = _name_lane(name)
        return suggested if suggested in (fhir.LANE, device_logs.LANE) else fhir.LANE
    return UNROUTED


def _disguise(name: str, content_type: str, where: str = "") -> LaneVerdict | None:
    """A reject verdict for executables, scripts, HTML, images and archives."""
    if content_type not in _DISGUISES:
        return None
    code, what = _DISGUISES[content_type]
    return reject(
        name,
        _name_lane(name),
        content_type,
        code,
        f"{name}{where} {what}, not clinical data; refused — send the data file itself",
    )


def _check_gzip(path: Path, name: str, limit: limits.IngestLimits) -> tuple[LaneVerdict | None, str, bytes]:
    """Checks a gzip file's limits and sniffs its decompressed head.

    Returns:
        ``(verdict or None, inner content type, inner head)``.
    """
    finding = limits.check_gzip(path, limit)
    if finding is not None:
        if finding.code == "truncated_gzip":
            return (
                quarantine(
                    name,
                    _name_lane(name),
                    sniff.GZIP,
                    "truncated_gzip",
                    f"{name}: {finding.message}; re-download or re-export the file",
                ),
                "",
                b"",
            )
        return reject(name, _name_lane(name), sniff.GZIP, finding.code, f"{name}: {finding.message}"), "", b""
    inner = limits.gzip_head(path, sniff.HEAD_BYTES)
    inner_type = sniff.sniff_bytes(inner, complete=len(inner) < sniff.HEAD_BYTES)
    if inner_type in (sniff.GZIP, sniff.ZIP) or inner_type == sniff.ARCHIVE:
        return (
            reject(
                name,
                _name_lane(name),
                sniff.GZIP,
                "nested_archive",
                f"{name}: the gzip holds another archive ({inner_type}); nested archives are refused",
            ),
            inner_type,
            inner,
        )
    disguised = _disguise(name, inner_type, " (inside gzip)")
    if disguised is not None:
        return disguised, inner_type, inner
    if not name.lower().endswith(".gz"):
        return (
            quarantine(
                name,
                _name_lane(name),
                sniff.GZIP,
                "extension_mismatch",
                f"{name}: content is gzip but the name does not end in .gz; rename it (e.g. Patient.000.ndjson.gz)",
            ),
            inner_type,
            inner,
        )
    return None, inner_type, inner


def _screen(path: Path, limit: limits.IngestLimits) -> tuple[LaneVerdict | None, str, str]:
    """Runs every check before the lane: returns ``(verdict or None, lane, content type)``."""
    name = path.name
    size = path.stat().st_size
    if size == 0:
        return (
            quarantine(
                name, _name_lane(name), sniff.EMPTY, "empty_file", f"{name}: the file is empty (0 bytes); re-send it"
            ),
            "",
            sniff.EMPTY,
        )
    head, complete = sniff.read_head(path)
    content_type = sniff.sniff_bytes(head, complete)
    disguised = _disguise(name, content_type)
    if disguised is not None:
        return disguised, "", content_type
    if content_type == sniff.ZIP:
        finding = limits.check_zip(path, limit)
        code, message = (finding.code, finding.message) if finding else ("archive_not_allowed", "is a zip archive")
        return (
            reject(
                name,
                _name_lane(name),
                content_type,
                code,
                f"{name}: {message}; archives are not accepted, send the data files themselves",
            ),
            "",
            content_type,
        )
    inner_head = head
    if content_type == sniff.GZIP:
        verdict, inner_type, inner_head = _check_gzip(path, name, limit)
        if verdict is not None:
            return verdict, "", content_type
        lane = lane_for(inner_type, inner_head, name)
        if inner_type not in (sniff.NDJSON, sniff.JSON, sniff.CSV) or lane == UNROUTED:
            return (
                reject(
                    name,
                    _name_lane(name),
                    content_type,
                    "content_type_not_allowed",
                    f"{name}: the gzip holds {inner_type} content; only gzipped NDJSON, JSONL or CSV is accepted",
                ),
                "",
                content_type,
            )
    else:
        expected = sniff.expected_types(name)
        lane = lane_for(content_type, head, name)
        known = lane != UNROUTED
        if expected is not None and content_type not in expected and known:
            code = "not_dicom" if _name_lane(name) == dicom.LANE else "extension_mismatch"
            return (
                quarantine(
                    name,
                    _name_lane(name),
                    content_type,
                    code,
                    f"{name}: the name promises {'/'.join(sorted(expected))} but the content is {content_type}; "
                    "rename the file or send the right one",
                ),
                "",
                content_type,
            )
        if not known:
            lane = _name_lane(name) if expected is not None else UNROUTED
            if lane == UNROUTED or (content_type == sniff.BINARY and lane != dicom.LANE):
                return (
                    reject(
                        name,
                        lane,
                        content_type,
                        "content_type_not_allowed",
                        f"{name}: content type {content_type} is not accepted (FHIR NDJSON, DICOM, device-log "
                        "CSV/JSONL or PDF only); send a supported file",
                    ),
                    "",
                    content_type,
                )
    size_finding = limits.check_size(path, lane, limit)
    if size_finding is not None:
        return (
            reject(name, lane, content_type, size_finding.code, f"{name}: {size_finding.message}"),
            lane,
            content_type,
        )
    return None, lane, content_type


def route(path: str | os.PathLike[str], limit: limits.IngestLimits = limits.DEFAULT_LIMITS) -> LaneVerdict:
    """Sniffs, checks limits and validates one file; always returns a verdict for bad input.

    Args:
        path: The input file.
        limit: Size and decompression limits.

    Returns:
        The file's verdict (``file`` is its name).
    """
    file = Path(path)
    name = file.name
    try:
        verdict, lane, content_type = _screen(file, limit)
    except OSError as error:
        return quarantine(
            name, UNROUTED, "unknown", "unreadable_file", f"{name}: cannot be read ({type(error).__name__}); re-send it"
        )
    if verdict is not None:
        return verdict
    try:
        return LANES[lane](file, content_type)
    except Exception as error:  # any validator bug must still end in a verdict
        _LOG.error("%s: %s validator failed with %s", name, lane, type(error).__name__)
        return quarantine(
            name,
            lane,
            content_type,
            "validator_error",
            f"{name}: the {lane} validator failed unexpectedly ({type(error).__name__}); keep the file and report it",
            {"exception": type(error).__name__},
        )


def route_many(
    paths: Iterable[str | os.PathLike[str]],
    limit: limits.IngestLimits = limits.DEFAULT_LIMITS,
    progress: Callable[[str], None] | None = None,
    every: int = 100,
) -> list[LaneVerdict]:
    """Routes many files, reporting progress every ``every`` files."""
    verdicts: list[LaneVerdict] = []
    for count, path in enumerate(paths, 1):
        verdicts.append(route(path, limit))
        if progress is not None and count % every == 0:
            progress(f"ingest lanes: {count:,} files judged")
    return verdicts


def count_outcomes(verdicts: Iterable[LaneVerdict]) -> dict[str, int]:
    """Counts verdicts: ``received`` and one count per outcome (received = promote + quarantine + reject)."""
    counts: Counter[str] = Counter(verdict.outcome for verdict in verdicts)
    result: dict[str, int] = {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}
    return {"received": sum(result.values()), **result}
