"""De-identifies device telemetry logs (``device_logs/<name>.jsonl`` or ``.csv``).

Each record has ``device_id, patient_mrn, timestamp, metric, value, unit``:

- ``device_id`` -> ``HMAC(key, "Device/<id>")`` hex;
- ``patient_mrn`` -> the linked FHIR patient's pseudonym (``pseudonym(key, "Patient", fhir_id)``) when
  the MRN is in the crosswalk, else the unlinked keyed pseudonym (same as the DICOM lane), see
  :mod:`components.deidentify.dicom.linkage`;
- ``timestamp`` (ISO 8601 with a UTC offset) shifted by the patient's day offset, keeping time of day
  and the offset (the same offset as the patient's FHIR resources and DICOM studies);
- ``metric``, ``value`` (numeric), ``unit`` kept. Any other key is dropped and counted.

Bad rows go to the dead-letter list with a reason code and the line number, never their values.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from components.deidentify.dicom.linkage import link_patient
from components.deidentify.keys import hmac_hex

FIELDS = ("device_id", "patient_mrn", "timestamp", "metric", "value", "unit")


class DeviceRecordError(ValueError):
    """A record that cannot be de-identified; ``reason_code`` is machine-readable, the message carries no PHI."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


@dataclass
class DeviceLogResult:
    """The de-identified lines of one log file.

    Attributes:
        lines: Output lines (JSONL records, or CSV rows after a header), without newlines.
        dead_letter: ``{"line": n, "reason_code": ..., "reason": ...}`` per rejected row.
        counts: ``records_in``, ``records_out``, ``dead_letter``, ``timestamps_shifted``,
            ``patients_linked``, ``patients_unlinked``, ``extra_fields_dropped``.
    """

    lines: list[str] = field(default_factory=list)
    dead_letter: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def shift_timestamp(value: str, days: int) -> str:
    """Shifts an ISO 8601 timestamp with a UTC offset by whole days, keeping time of day and offset.

    Args:
        value: E.g. ``2024-03-01T08:15:00-05:00`` or ``...Z``.
        days: The offset.

    Returns:
        The shifted timestamp in the same style (``Z`` stays ``Z``).

    Raises:
        DeviceRecordError: Not ISO 8601, or no UTC offset.
    """
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DeviceRecordError("bad_timestamp", "timestamp is not ISO 8601") from None
    if moment.tzinfo is None:
        raise DeviceRecordError("timestamp_without_offset", "timestamp has no UTC offset")
    shifted = (moment + timedelta(days=days)).isoformat()
    if text.endswith(("Z", "z")) and shifted.endswith("+00:00"):
        shifted = shifted[: -len("+00:00")] + "Z"
    return shifted


def deidentify_device_record(record: Mapping[str, Any], key: bytes, crosswalk: Mapping[str, str]) -> dict[str, Any]:
    """De-identifies one device-log record.

    Args:
        record: The parsed record.
        key: The HMAC key.
        crosswalk: MRN -> FHIR Patient logical id.

    Returns:
        The de-identified record with the six fields, plus ``patient_link`` (``linked``/``unlinked``).

    Raises:
        DeviceRecordError: A field is missing or malformed.
    """
    missing = [name for name in FIELDS if record.get(name) in (None, "")]
    if missing:
        raise DeviceRecordError("missing_field", f"missing field(s): {', '.join(missing)}")
    raw_value = record["value"]
    try:
        value = float(raw_value)
    except (TypeError, ValueError):
        raise DeviceRecordError("non_numeric_value", "value is not numeric") from None
    if not math.isfinite(value) or isinstance(raw_value, bool):
        raise DeviceRecordError("non_numeric_value", "value is not a finite number")
    link = link_patient(key, str(record["patient_mrn"]).strip(), crosswalk)
    number: int | float = int(raw_value) if isinstance(raw_value, int) else value
    if isinstance(raw_value, str) and raw_value.strip().lstrip("+-").isdigit():
        number = int(raw_value)
    return {
        "device_id": hmac_hex(key, "Device/" + str(record["device_id"]).strip()),
        "patient_mrn": link.pseudonym,
        "timestamp": shift_timestamp(str(record["timestamp"]), link.offset_days),
        "metric": str(record["metric"]),
        "value": number,
        "unit": str(record["unit"]),
        "patient_link": link.status,
    }


def _records(name: str, text: str) -> list[tuple[int, dict[str, Any] | None, str]]:
    """Parses (line number, record or None, reason code)."""
    out: list[tuple[int, dict[str, Any] | None, str]] = []
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                out.append((reader.line_num, None, "bad_csv_row"))
            else:
                out.append((reader.line_num, dict(row), ""))
        return out
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            out.append((number, None, "bad_json"))
            continue
        out.append((number, record, "") if isinstance(record, dict) else (number, None, "not_an_object"))
    return out


def deidentify_device_log(name: str, data: bytes, key: bytes, crosswalk: Mapping[str, str]) -> DeviceLogResult:
    """De-identifies one log file (JSONL, or CSV when the name ends in ``.csv``).

    Args:
        name: The file name (only its suffix matters).
        data: The file content (UTF-8).
        key: The HMAC key.
        crosswalk: MRN -> FHIR Patient logical id.

    Returns:
        Output lines in the input's format (CSV gets a header line first), dead-letter entries and counts.
    """
    result = DeviceLogResult()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        result.dead_letter.append({"line": 0, "reason_code": "not_utf8", "reason": "the file is not UTF-8 text"})
        result.counts["dead_letter"] += 1
        return result
    is_csv = name.endswith(".csv")
    rows: list[dict[str, Any]] = []
    for line_number, record, reason in _records(name, text):
        result.counts["records_in"] += 1
        if record is None:
            result.dead_letter.append({"line": line_number, "reason_code": reason, "reason": "unparseable row"})
            result.counts["dead_letter"] += 1
            continue
        try:
            output = deidentify_device_record(record, key, crosswalk)
        except DeviceRecordError as error:
            result.dead_letter.append({"line": line_number, "reason_code": error.reason_code, "reason": str(error)})
            result.counts["dead_letter"] += 1
            continue
        result.counts["extra_fields_dropped"] += len(set(record) - set(FIELDS))
        result.counts[f"patients_{output.pop('patient_link')}"] += 1
        result.counts["timestamps_shifted"] += 1
        result.counts["records_out"] += 1
        rows.append(output)
    if is_csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        result.lines = buffer.getvalue().splitlines()
    else:
        result.lines = [json.dumps(row, separators=(",", ":")) for row in rows]
    return result
