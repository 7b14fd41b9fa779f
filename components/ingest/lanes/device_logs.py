"""Device-log lane: JSONL or CSV telemetry (``device_id, patient_mrn, timestamp, metric, value, unit``).

Schema errors (missing columns, ragged rows, non-numeric values, timestamps without an ISO 8601
UTC offset, unknown metrics or units, a unit that does not belong to the metric) and timestamps
that go backwards for a device quarantine the file. Values outside the physiological range of
their metric and unit are flagged in ``details`` and the file is still promoted.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from components.ingest import sniff
from components.ingest.lanes.verdict import LaneVerdict, promote, quarantine

LANE = "device_logs"
COLUMNS: tuple[str, ...] = ("device_id", "patient_mrn", "timestamp", "metric", "value", "unit")
# metric -> unit -> (low, high) physiological range; values outside are flagged, not refused.
METRIC_UNITS: dict[str, dict[str, tuple[float, float]]] = {
    "heart_rate": {"bpm": (30.0, 220.0), "/min": (30.0, 220.0)},
    "spo2": {"%": (70.0, 100.0)},
    "temperature": {"Cel": (34.0, 42.0), "[degF]": (93.2, 107.6)},
    "resp_rate": {"/min": (6.0, 40.0)},
    "systolic_bp": {"mm[Hg]": (70.0, 220.0)},
    "diastolic_bp": {"mm[Hg]": (40.0, 130.0)},
    "glucose": {"mg/dL": (40.0, 400.0), "mmol/L": (2.2, 22.2)},
    "weight": {"kg": (0.5, 300.0)},
}
KNOWN_UNITS = frozenset(unit for units in METRIC_UNITS.values() for unit in units)
MAX_LISTED_ROWS = 100


def _label(value: str) -> str:
    """A metric/unit name quoted for a message, cut short so free text from a row cannot spill into reports."""
    return repr(value if len(value) <= 24 else value[:21] + "...")


class _SchemaError(Exception):
    """A row that breaks the schema: carries the reason code and a PHI-free message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Scan:
    """Running state of one file's scan."""

    rows: int = 0
    last_time: dict[str, datetime] = field(default_factory=dict)
    flagged: list[dict[str, Any]] = field(default_factory=list)
    flagged_count: int = 0
    devices: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)
    metrics: dict[str, int] = field(default_factory=dict)


def _open(path: Path, content_type: str) -> IO[bytes] | gzip.GzipFile:
    """Opens the file as bytes (gunzipping when the content is gzip)."""
    if content_type == sniff.GZIP:
        return gzip.open(path, "rb")
    return open(path, "rb")


def _csv_rows(handle: IO[bytes] | gzip.GzipFile) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line, row)`` from a CSV with a header; raises ``_SchemaError`` for ragged rows."""
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    header = [column.strip() for column in header]
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise _SchemaError("missing_column", f"line 1: header lacks column(s) {', '.join(missing)}")
    width = len(header)
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != width:
            raise _SchemaError("ragged_row", f"line {line}: {len(row)} fields where the header has {width}")
        yield line, dict(zip(header, row, strict=True))


def _jsonl_rows(handle: IO[bytes] | gzip.GzipFile) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line, row)`` from JSONL; raises ``_SchemaError`` for bad lines or missing keys."""
    for line, raw in enumerate(handle, 1):
        if not raw.strip():
            continue
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise _SchemaError("invalid_json_line", f"line {line}: not valid JSON") from error
        if not isinstance(row, dict):
            raise _SchemaError("invalid_json_line", f"line {line}: expected a JSON object")
        missing = [column for column in COLUMNS if column not in row]
        if missing:
            raise _SchemaError("missing_column", f"line {line}: lacks key(s) {', '.join(missing)}")
        yield line, row


def _number(line: int, value: Any) -> float:
    """Parses a row's value as a finite number."""
    if isinstance(value, bool):
        raise _SchemaError("invalid_value", f"line {line}: value is a boolean, expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise _SchemaError("invalid_value", f"line {line}: value is not a number") from error
    if not math.isfinite(number):
        raise _SchemaError("invalid_value", f"line {line}: value is not a finite number")
    return number


def _timestamp(line: int, value: Any) -> datetime:
    """Parses an ISO 8601 timestamp that carries a UTC offset."""
    if not isinstance(value, str):
        raise _SchemaError("invalid_timestamp", f"line {line}: timestamp is not a string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise _SchemaError("invalid_timestamp", f"line {line}: timestamp is not ISO 8601") from error
    if parsed.tzinfo is None:
        raise _SchemaError("invalid_timestamp", f"line {line}: timestamp has no UTC offset")
    return parsed


def _check_row(scan: _Scan, line: int, row: dict[str, Any]) -> None:
    """Checks one row, updating ``scan``; raises ``_SchemaError`` on a schema or order error."""
    device = str(row["device_id"] or "").strip()
    mrn = str(row["patient_mrn"] or "").strip()
    if not device or not mrn:
        raise _SchemaError("missing_value", f"line {line}: device_id and patient_mrn must not be empty")
    when = _timestamp(line, row["timestamp"])
    value = _number(line, row["value"])
    metric = str(row["metric"]).strip()
    unit = str(row["unit"]).strip()
    units = METRIC_UNITS.get(metric)
    if units is None:
        raise _SchemaError(
            "unknown_metric", f"line {line}: metric {_label(metric)} is not one of {sorted(METRIC_UNITS)}"
        )
    if unit not in units:
        if unit in KNOWN_UNITS:
            raise _SchemaError(
                "unit_mismatch",
                f"line {line}: unit {_label(unit)} does not fit metric {_label(metric)} (expected {sorted(units)})",
            )
        raise _SchemaError("unknown_unit", f"line {line}: unit {_label(unit)} is not a known unit for {_label(metric)}")
    previous = scan.last_time.get(device)
    if previous is not None and when < previous:
        raise _SchemaError(
            "non_monotonic_timestamp", f"line {line}: timestamp goes back in time for a device (after an earlier row)"
        )
    scan.last_time[device] = when
    low, high = units[unit]
    if not low <= value <= high:
        scan.flagged_count += 1
        if len(scan.flagged) < MAX_LISTED_ROWS:
            side = "below" if value < low else "above"
            scan.flagged.append({"line": line, "metric": metric, "flag": f"{side}_range", "range": [low, high]})
    scan.rows += 1
    scan.devices.add(device)
    scan.patients.add(mrn)
    scan.metrics[metric] = scan.metrics.get(metric, 0) + 1


def detect_format(path: Path, content_type: str) -> str:
    """Returns ``csv`` or ``jsonl`` for a device-log file (looking inside gzip)."""
    if content_type == sniff.GZIP:
        with gzip.open(path, "rb") as handle:
            head = handle.read(sniff.HEAD_BYTES)
        content_type = sniff.sniff_bytes(head)
    return "jsonl" if content_type in (sniff.NDJSON, sniff.JSON) else "csv"


def validate(path: Path, content_type: str) -> LaneVerdict:
    """Checks one device-log file.

    Args:
        path: The file (CSV with a header row, or JSONL; either may be gzipped).
        content_type: The sniffed content type (``csv``, ``ndjson``, ``json``, ``text`` or ``gzip``).

    Returns:
        ``promote`` (``reason_code`` ``ok`` or ``out_of_range_flagged``) with counts and flagged rows, or
        ``quarantine`` with the first schema/order error.
    """
    name = path.name
    kind = detect_format(path, content_type)
    scan = _Scan()
    try:
        with _open(path, content_type) as handle:
            rows = _jsonl_rows(handle) if kind == "jsonl" else _csv_rows(handle)
            for line, row in rows:
                _check_row(scan, line, row)
    except _SchemaError as error:
        return quarantine(
            name,
            LANE,
            content_type,
            error.code,
            f"{name}: {error.message}; fix the export (columns {', '.join(COLUMNS)}) and re-send",
            {"format": kind, "rows_checked": scan.rows},
        )
    except (UnicodeDecodeError, csv.Error, EOFError, OSError) as error:
        return quarantine(
            name,
            LANE,
            content_type,
            "unreadable_file",
            f"{name}: cannot be read as UTF-8 {kind} after {scan.rows:,} rows ({type(error).__name__}); re-export it",
        )
    if scan.rows == 0:
        return quarantine(
            name, LANE, content_type, "empty_file", f"{name}: holds no telemetry rows; re-export it or remove it"
        )
    details = {
        "format": kind,
        "rows": scan.rows,
        "devices": len(scan.devices),
        "patients": len(scan.patients),
        "metrics": dict(sorted(scan.metrics.items())),
        "flagged_count": scan.flagged_count,
        "flagged_rows": scan.flagged,
    }
    code = "out_of_range_flagged" if scan.flagged_count else "ok"
    flagged = f", {scan.flagged_count} out-of-range value(s) flagged" if scan.flagged_count else ""
    return promote(
        name,
        LANE,
        content_type,
        f"{name}: {scan.rows:,} rows from {len(scan.devices)} device(s){flagged}",
        details=details,
        extracted={"patient_mrns": sorted(scan.patients)},
        reason_code=code,
    )
