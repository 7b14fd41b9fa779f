"""Build the analytic tables (``patient_features``, ``prediction_events``) from FHIR NDJSON.

The input is a directory of FHIR Bulk Data NDJSON files (plain or gzipped), normally the
de-identified output of the deidentify stage. The files are streamed once; only the fields the
prediction task needs are kept (see ``clinflow.prediction_task``), and all time arithmetic is
vectorised over per-patient sorted event keys with ``numpy.searchsorted``.

Time model: every instant is converted to UTC and compared at one-second resolution.

* ``patient_features``: one row per patient per monthly snapshot (first day of the month,
  00:00 UTC) from the month of the prediction window start through the month of the data end, for
  snapshots at which the patient is born and alive. Every feature uses data strictly before the
  snapshot.
* ``prediction_events``: one row per patient per ``PREDICTION_CADENCE_MONTHS`` period over the
  last ``PREDICTION_WINDOW_YEARS`` years, at a deterministic day offset (1-27 days) into the
  period's first month, so it never falls on a snapshot boundary. Kept only when the label window
  ``(t, t + HORIZON_DAYS]`` ends on or before the data end (the latest Encounter start), the
  patient is alive at ``t`` and born by the snapshot at or before ``t``.

Runs unchanged on pandas 1.5/numpy 1.26 (Python 3.10) and pandas 2.x/numpy 2 (Python 3.11).
"""

from __future__ import annotations

import hashlib
import os
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clinflow.errors import UserError
from clinflow.ndjson import is_ndjson_name, open_text, parse_line, resource_type_from_name
from clinflow.prediction_task import (
    CHRONIC_RISK_CONDITION_CODES,
    ENTITY_KEY,
    FEATURES,
    GROUP_COLUMN,
    HORIZON_DAYS,
    LABEL_COLUMN,
    LOINC_BMI,
    LOINC_HBA1C,
    LOINC_SYSTOLIC_BP,
    LOOKBACK_DAYS,
    PREDICTION_CADENCE_MONTHS,
    PREDICTION_WINDOW_YEARS,
    TIMESTAMP_COLUMN,
    is_acute_encounter_class,
)

PATIENT_FEATURES_FILE = "patient_features.parquet"
PREDICTION_EVENTS_FILE = "prediction_events.parquet"

INPATIENT_CLASSES = frozenset({"IMP", "ACUTE"})
EMERGENCY_CLASSES = frozenset({"EMER"})
SEX_VALUES = ("female", "male", "other")
OBSERVATION_CODES: tuple[str, ...] = (LOINC_SYSTOLIC_BP, LOINC_BMI, LOINC_HBA1C)
USED_TYPES = frozenset({"Patient", "Encounter", "Condition", "MedicationRequest", "Observation"})
IGNORED_STATUSES = frozenset({"entered-in-error", "cancelled"})
DAYS_SINCE_CAP = 3650.0

DAY = 86_400
_EPOCH_ORIGIN = -5_364_662_400  # 1800-01-01T00:00:00Z in Unix seconds: time 0 of the internal clock.
_SPAN = 1 << 34  # seconds per patient in a composite key (~544 years: 1800-2344).
_NO_END = _SPAN - 1
_LATEST = _SPAN - 20 * 366 * 86_400  # times after ~2324 are rejected so windows stay in the key span
_OBSERVATION_INDEX = {code: index for index, code in enumerate(OBSERVATION_CODES)}
_OBSERVATION_MARKERS = tuple(f'"{code}"' for code in OBSERVATION_CODES)
_CHUNK_CHARS = 1 << 22
_PROGRESS_BLOCKS = 25  # a progress line per ~100 M characters read


@dataclass
class Tables:
    """The analytic tables and what went into them.

    Attributes:
        patient_features: ``patient_id, event_timestamp, <features>, sex``.
        prediction_events: ``patient_id, event_timestamp, acute_encounter_90d``.
        resources_read: Resources read per resource type.
        patients: Usable Patient resources.
        skipped: Records set aside, by reason.
        data_end: The latest Encounter start (UTC).
    """

    patient_features: pd.DataFrame
    prediction_events: pd.DataFrame
    resources_read: dict[str, int]
    patients: int
    skipped: dict[str, int]
    data_end: pd.Timestamp


@dataclass
class _Raw:
    """Column lists collected while streaming the NDJSON (strings parsed later, vectorised)."""

    patient_id: list[str] = field(default_factory=list)
    gender: list[str] = field(default_factory=list)
    birth: list[str | None] = field(default_factory=list)
    death: list[str | None] = field(default_factory=list)
    deceased_flag: list[bool] = field(default_factory=list)
    enc_patient: list[str] = field(default_factory=list)
    enc_start: list[str] = field(default_factory=list)
    enc_class: list[str] = field(default_factory=list)
    cond_patient: list[str] = field(default_factory=list)
    cond_code: list[str] = field(default_factory=list)
    cond_onset: list[str] = field(default_factory=list)
    cond_abatement: list[str | None] = field(default_factory=list)
    med_patient: list[str] = field(default_factory=list)
    med_code: list[str] = field(default_factory=list)
    med_time: list[str] = field(default_factory=list)
    obs_patient: list[str] = field(default_factory=list)
    obs_feature: list[int] = field(default_factory=list)
    obs_time: list[str] = field(default_factory=list)
    obs_value: list[float] = field(default_factory=list)
    read: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)


# --------------------------------------------------------------------------- FHIR field access


def patient_id_from_reference(reference: Any) -> str | None:
    """Extracts the patient id from ``Patient/<id>``, ``urn:uuid:<id>`` or an absolute URL.

    Args:
        reference: A FHIR ``Reference.reference`` string.

    Returns:
        The id, or None when the reference does not name a Patient.
    """
    if not isinstance(reference, str) or not reference:
        return None
    if reference.startswith("Patient/") and reference.count("/") == 1:
        return reference[len("Patient/") :] or None
    if reference.startswith("urn:uuid:"):
        return reference[len("urn:uuid:") :] or None
    parts = reference.split("/")
    for index in range(len(parts) - 1):
        if parts[index] == "Patient" and parts[index + 1]:
            return parts[index + 1]
    return None


def _subject_id(resource: dict[str, Any]) -> str | None:
    """Returns the patient id a clinical resource refers to (``subject``, else ``patient``)."""
    for key in ("subject", "patient"):
        value = resource.get(key)
        if isinstance(value, dict):
            found = patient_id_from_reference(value.get("reference"))
            if found:
                return found
    return None


def _first_code(concept: Any) -> str | None:
    """Returns the first ``coding.code`` of a CodeableConcept (or its text)."""
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    text = concept.get("text")
    return str(text) if text else None


def encounter_class_code(resource: dict[str, Any]) -> str | None:
    """Returns ``Encounter.class`` as a code: an R4 Coding or an R5 list of CodeableConcepts."""
    value = resource.get("class")
    if isinstance(value, dict):
        code = value.get("code")
        return str(code) if code else None
    if isinstance(value, list):
        for concept in value:
            code = _first_code(concept)
            if code:
                return code
    return None


def _period_start(resource: dict[str, Any], *keys: str) -> str | None:
    """Returns the first of ``<key>DateTime``, ``<key>Instant`` or ``<key>Period.start`` present."""
    for key in keys:
        for variant in (f"{key}DateTime", f"{key}Instant"):
            value = resource.get(variant)
            if isinstance(value, str) and value:
                return value
        period = resource.get(f"{key}Period")
        if isinstance(period, dict) and period.get("start"):
            return str(period["start"])
    return None


def _quantity_value(holder: dict[str, Any]) -> float | None:
    """Returns ``valueQuantity.value`` as a float, or None."""
    quantity = holder.get("valueQuantity")
    if not isinstance(quantity, dict):
        return None
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def observation_values(resource: dict[str, Any]) -> list[tuple[int, float]]:
    """Returns ``(feature index in OBSERVATION_CODES, value)`` pairs an Observation carries.

    A code may be the Observation's own code or a component's (blood pressure panels
    85354-9/55284-4 carry systolic pressure 8480-6 as a component).
    """
    found: list[tuple[int, float]] = []
    holders = [resource, *(c for c in resource.get("component") or () if isinstance(c, dict))]
    for holder in holders:
        concept = holder.get("code")
        codings = concept.get("coding") if isinstance(concept, dict) else None
        for coding in codings or ():
            index = _OBSERVATION_INDEX.get(str(coding.get("code"))) if isinstance(coding, dict) else None
            if index is not None:
                value = _quantity_value(holder)
                if value is not None:
                    found.append((index, value))
                break
    return found


# --------------------------------------------------------------------------- streaming


def _add_patient(raw: _Raw, resource: dict[str, Any]) -> None:
    """Keeps the demographic fields of a Patient."""
    patient_id = resource.get("id")
    if not patient_id:
        raw.skipped["Patient without id"] += 1
        return
    if not resource.get("birthDate"):
        raw.skipped["Patient without birthDate"] += 1
        return
    raw.patient_id.append(str(patient_id))
    raw.gender.append(str(resource.get("gender") or ""))
    raw.birth.append(str(resource["birthDate"]))
    raw.death.append(resource.get("deceasedDateTime") or None)
    raw.deceased_flag.append(resource.get("deceasedBoolean") is True or bool(resource.get("deceasedDateTime")))


def _add_encounter(raw: _Raw, resource: dict[str, Any], patient_id: str) -> None:
    """Keeps the subject, start and class of an Encounter."""
    start = None
    for key in ("period", "actualPeriod"):
        period = resource.get(key)
        if isinstance(period, dict) and period.get("start"):
            start = str(period["start"])
            break
    if not start:
        raw.skipped["Encounter without period.start"] += 1
        return
    raw.enc_patient.append(patient_id)
    raw.enc_start.append(start)
    raw.enc_class.append((encounter_class_code(resource) or "").upper())


def _add_condition(raw: _Raw, resource: dict[str, Any], patient_id: str) -> None:
    """Keeps the code, onset and abatement of a Condition."""
    verification = _first_code(resource.get("verificationStatus"))
    if verification in {"entered-in-error", "refuted"}:
        raw.skipped[f"Condition {verification}"] += 1
        return
    code = _first_code(resource.get("code"))
    onset = _period_start(resource, "onset") or resource.get("recordedDate")
    if not code or not onset:
        raw.skipped["Condition without code or onset"] += 1
        return
    abatement = resource.get("abatementDateTime")
    if not abatement and isinstance(resource.get("abatementPeriod"), dict):
        abatement = resource["abatementPeriod"].get("end") or resource["abatementPeriod"].get("start")
    raw.cond_patient.append(patient_id)
    raw.cond_code.append(code)
    raw.cond_onset.append(str(onset))
    raw.cond_abatement.append(str(abatement) if abatement else None)


def _add_medication(raw: _Raw, resource: dict[str, Any], patient_id: str) -> None:
    """Keeps the medication code and order time of a MedicationRequest."""
    code = _first_code(resource.get("medicationCodeableConcept"))
    if not code and isinstance(resource.get("medicationReference"), dict):
        code = resource["medicationReference"].get("reference")
    authored = resource.get("authoredOn")
    if not code or not authored:
        raw.skipped["MedicationRequest without medication or authoredOn"] += 1
        return
    raw.med_patient.append(patient_id)
    raw.med_code.append(str(code))
    raw.med_time.append(str(authored))


def _add_observation(raw: _Raw, resource: dict[str, Any], patient_id: str) -> None:
    """Keeps systolic BP, BMI and HbA1c values of an Observation."""
    values = observation_values(resource)
    if not values:
        return
    when = _period_start(resource, "effective") or resource.get("issued")
    if not when:
        raw.skipped["Observation without effective time"] += 1
        return
    for index, value in values:
        raw.obs_patient.append(patient_id)
        raw.obs_feature.append(index)
        raw.obs_time.append(str(when))
        raw.obs_value.append(value)


_CLINICAL_HANDLERS = {
    "Encounter": _add_encounter,
    "Condition": _add_condition,
    "MedicationRequest": _add_medication,
    "Observation": _add_observation,
}


def _dispatch(raw: _Raw, resource: dict[str, Any]) -> None:
    """Routes one parsed resource to its collector."""
    resource_type = str(resource.get("resourceType") or "")
    raw.read[resource_type or "(no resourceType)"] += 1
    if resource_type == "Patient":
        _add_patient(raw, resource)
        return
    handler = _CLINICAL_HANDLERS.get(resource_type)
    if handler is None:
        return
    if resource.get("status") in IGNORED_STATUSES:
        raw.skipped[f"{resource_type} {resource['status']}"] += 1
        return
    patient_id = _subject_id(resource)
    if patient_id is None:
        raw.skipped[f"{resource_type} without a Patient subject reference"] += 1
        return
    handler(raw, resource, patient_id)


def ndjson_files(input_dir: str | os.PathLike[str]) -> list[Path]:
    """Lists the NDJSON files of an export directory, sorted by name.

    Raises:
        UserError: The directory does not exist or holds no NDJSON file.
    """
    directory = Path(input_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; pass the de-identified NDJSON directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and is_ndjson_name(p.name))
    files = [p for p in files if resource_type_from_name(p.name) != "log"]
    if not files:
        raise UserError(f"{directory}: no *.ndjson or *.ndjson.gz files; pass a FHIR Bulk Data export")
    return files


def _looks_like_type(name: str) -> bool:
    """Tells whether a file-name prefix is a FHIR resource type name (e.g. ``Claim``)."""
    return name[:1].isupper() and name.isalpha()


def iter_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """Yields ``(first_line_number, text)`` blocks of whole lines, about 4 M characters each.

    Raises:
        UserError: The file is not valid gzip/UTF-8 or is truncated.
    """
    number, tail = 1, ""
    try:
        with open_text(path) as handle:
            while True:
                chunk = handle.read(_CHUNK_CHARS)
                if not chunk:
                    break
                data = tail + chunk
                cut = data.rfind("\n") + 1
                tail = data[cut:]
                if cut:
                    yield number, data[:cut]
                    number += data.count("\n", 0, cut)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise UserError(
            f"{path.name}: cannot be read as UTF-8 NDJSON ({error}); re-export or re-download the file"
        ) from error
    if tail:
        yield number, tail


def _count_lines(block: str) -> int:
    """Counts the non-blank lines of a block."""
    return len(list(filter(None, map(str.strip, block.split("\n")))))


def _marked_lines(block: str) -> list[tuple[int, int]]:
    """Returns ``(start, end)`` spans of the lines of a block that mention a feature LOINC code."""
    starts: set[int] = set()
    for marker in _OBSERVATION_MARKERS:
        position = block.find(marker)
        while position >= 0:
            starts.add(block.rfind("\n", 0, position) + 1)
            position = block.find(marker, position + len(marker))
    spans = []
    for start in sorted(starts):
        end = block.find("\n", start)
        spans.append((start, len(block) if end < 0 else end))
    return spans


def _load(path: Path, block: str, first_number: int, start: int, end: int) -> dict[str, Any]:
    """Parses the line ``block[start:end]`` with orjson, else reports it with ``parse_line``."""
    line = block[start:end]
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    return parse_line(path.name, first_number + block.count("\n", 0, start), line)


def _line_spans(block: str) -> Iterator[tuple[int, int]]:
    """Yields ``(start, end)`` spans of the non-blank lines of a block."""
    start = 0
    for line in block.split("\n"):
        end = start + len(line)
        if line.strip():
            yield start, end
        start = end + 1


def _stream_file(raw: _Raw, path: Path) -> None:
    """Reads one NDJSON file, parsing only the lines the tables can use.

    Files named after an unused resource type are only counted; Observation lines are parsed
    only when they mention one of the feature LOINC codes (found with ``str.find`` per block).
    Lines that are only counted are not checked for valid JSON (the ingest stage does that).
    """
    declared = resource_type_from_name(path.name)
    count_only = _looks_like_type(declared) and declared not in USED_TYPES
    prefilter = declared == "Observation"
    lines = 0
    for blocks, (first_number, block) in enumerate(iter_blocks(path), start=1):
        if blocks % _PROGRESS_BLOCKS == 0:
            print(f"  {path.name}: {first_number - 1:,} lines so far", file=sys.stderr, flush=True)
        spans: Iterator[tuple[int, int]] | list[tuple[int, int]]
        if count_only or prefilter:
            in_block = _count_lines(block)
            lines += in_block
            marked = [] if count_only else _marked_lines(block)
            raw.read[declared] += in_block - len(marked)
            spans = marked
        else:
            spans = _line_spans(block)
        for start, end in spans:
            _dispatch(raw, _load(path, block, first_number, start, end))
            lines += 0 if prefilter else 1
    print(f"read {path.name}: {lines:,} resources", file=sys.stderr, flush=True)


def read_export(input_dir: str | os.PathLike[str]) -> _Raw:
    """Streams every NDJSON file of a directory once and collects the fields the tables use."""
    raw = _Raw()
    for path in ndjson_files(input_dir):
        _stream_file(raw, path)
    return raw


# --------------------------------------------------------------------------- time helpers


def to_clock(values: list[str | None] | list[str]) -> np.ndarray:
    """Parses ISO 8601 strings to seconds since 1800-01-01 UTC (``-1`` when unparseable).

    Times with an offset are converted to UTC; dates and partial dates (``YYYY``, ``YYYY-MM``)
    are the start of that day/month/year in UTC; sub-second parts are truncated.

    Args:
        values: FHIR dateTime/instant/date strings (None allowed).

    Returns:
        An int64 array aligned with ``values``.
    """
    if not values:
        return np.zeros(0, dtype=np.int64)
    kwargs = {"format": "ISO8601"} if int(pd.__version__.split(".")[0]) >= 2 else {}
    parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce", **kwargs)
    nanos = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    seconds = np.floor_divide(nanos, 1_000_000_000) - _EPOCH_ORIGIN
    invalid = parsed.isna().to_numpy() | (seconds < 0) | (seconds >= _LATEST)
    return np.where(invalid, -1, seconds).astype(np.int64)


def clock_to_timestamps(seconds: np.ndarray) -> pd.DatetimeIndex:
    """Converts internal clock seconds to UTC timestamps."""
    return pd.to_datetime(np.asarray(seconds, dtype=np.int64) + _EPOCH_ORIGIN, unit="s", utc=True)


def timestamp_to_clock(when: pd.Timestamp) -> int:
    """Converts a UTC timestamp to internal clock seconds."""
    return int(when.value // 1_000_000_000) - _EPOCH_ORIGIN


def month_start(when: pd.Timestamp) -> pd.Timestamp:
    """Returns the first instant (00:00 UTC) of the month containing ``when``."""
    return pd.Timestamp(year=when.year, month=when.month, day=1, tz="UTC")


def add_months(when: pd.Timestamp, months: int) -> pd.Timestamp:
    """Returns the first day of the month ``months`` after the month of ``when`` (UTC)."""
    index = when.year * 12 + when.month - 1 + months
    return pd.Timestamp(year=index // 12, month=index % 12 + 1, day=1, tz="UTC")


# --------------------------------------------------------------------------- event index


def sorted_keys(patient: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Builds sorted composite ``patient * SPAN + seconds`` keys for per-patient search."""
    keys = patient.astype(np.int64) * _SPAN + seconds.astype(np.int64)
    keys.sort()
    return keys


def count_before(keys: np.ndarray, patient: np.ndarray, seconds: np.ndarray, inclusive: bool = False) -> np.ndarray:
    """Counts each patient's events before ``seconds`` (``<``, or ``<=`` when inclusive).

    Args:
        keys: Sorted composite keys from ``sorted_keys``.
        patient: Query patient indices.
        seconds: Query times (clock seconds), clipped to the clock range.
        inclusive: Count events at exactly ``seconds`` too.

    Returns:
        Counts aligned with the queries.
    """
    base = patient.astype(np.int64) * _SPAN
    upper = base + np.clip(seconds, 0, _NO_END)
    ends = np.searchsorted(keys, upper, side="right") if inclusive else np.searchsorted(keys, upper, side="left")
    return (ends - np.searchsorted(keys, base, side="left")).astype(np.int64)


def last_before(
    patient_events: np.ndarray,
    seconds_events: np.ndarray,
    values: np.ndarray,
    patient: np.ndarray,
    seconds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Finds each patient's latest event strictly before the query time.

    Args:
        patient_events: Patient index per event.
        seconds_events: Event times.
        values: Event values.
        patient: Query patient indices.
        seconds: Query times.

    Returns:
        ``(found, value)``: a bool mask and the latest value (undefined where not found).
    """
    keys = patient_events.astype(np.int64) * _SPAN + seconds_events.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, ordered = keys[order], np.asarray(values)[order]
    base = patient.astype(np.int64) * _SPAN
    position = np.searchsorted(keys, base + seconds, side="left") - 1
    safe = np.clip(position, 0, max(len(keys) - 1, 0))
    if len(keys) == 0:
        return np.zeros(len(patient), dtype=bool), np.zeros(len(patient), dtype=ordered.dtype)
    found = (position >= 0) & (keys[safe] >= base)
    return found, ordered[safe]


def merge_intervals(
    patient: np.ndarray, code: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merges overlapping ``(start, end]`` intervals of the same patient and code.

    After merging, the intervals of one (patient, code) are disjoint, so counting intervals that
    cover a time counts distinct codes.

    Args:
        patient: Patient index per interval.
        code: Code label per interval.
        start: Interval starts (exclusive).
        end: Interval ends (inclusive), ``>= start``.

    Returns:
        ``(patient, start, end)`` of the merged intervals.
    """
    if len(patient) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    pair = pd.MultiIndex.from_arrays([patient, code])
    group = pd.factorize(pair)[0].astype(np.int64)
    order = np.lexsort((start, group))
    group, first, last, owner = group[order], start[order], end[order], patient[order]
    running = pd.Series(last).groupby(group).cummax().to_numpy()
    new = np.ones(len(group), dtype=bool)
    new[1:] = (group[1:] != group[:-1]) | (first[1:] >= running[:-1])
    heads = np.flatnonzero(new)
    return owner[heads], first[heads], np.maximum.reduceat(last, heads)


def count_covering(
    patient_iv: np.ndarray, start: np.ndarray, end: np.ndarray, patient: np.ndarray, seconds: np.ndarray
) -> np.ndarray:
    """Counts disjoint-per-code intervals ``(start, end]`` that contain each query time."""
    opened = count_before(sorted_keys(patient_iv, start), patient, seconds)
    closed = count_before(sorted_keys(patient_iv, end), patient, seconds)
    return opened - closed


# --------------------------------------------------------------------------- patients and events


@dataclass
class _Events:
    """Parsed, patient-indexed event arrays (clock seconds)."""

    enc_patient: np.ndarray
    enc_time: np.ndarray
    enc_class: np.ndarray
    cond_patient: np.ndarray
    cond_code: np.ndarray
    cond_onset: np.ndarray
    cond_end: np.ndarray
    med_patient: np.ndarray
    med_code: np.ndarray
    med_time: np.ndarray
    obs_patient: np.ndarray
    obs_feature: np.ndarray
    obs_time: np.ndarray
    obs_value: np.ndarray


def _patients_frame(raw: _Raw) -> pd.DataFrame:
    """Builds the patient table: id, sex, birth and death clock seconds (-1 = alive)."""
    frame = pd.DataFrame(
        {
            ENTITY_KEY: raw.patient_id,
            "gender": raw.gender,
            "birth": to_clock(raw.birth),
            "death": to_clock(raw.death),
            "deceased_flag": raw.deceased_flag,
        }
    )
    duplicated = frame[ENTITY_KEY].duplicated()
    if duplicated.any():
        raw.skipped["duplicate Patient id"] += int(duplicated.sum())
        frame = frame[~duplicated]
    bad_birth = frame["birth"] < 0
    if bad_birth.any():
        raw.skipped["Patient with unparseable or out-of-range birthDate"] += int(bad_birth.sum())
        frame = frame[~bad_birth]
    frame = frame.sort_values(ENTITY_KEY).reset_index(drop=True)
    gender = frame["gender"].str.lower().to_numpy(dtype=object)
    known = np.isin(gender, [value for value in SEX_VALUES if value != "other"])
    frame[GROUP_COLUMN] = np.where(known, gender, "other")
    return frame


def _index_patients(raw: _Raw, ids: pd.Index, refs: list[str], kind: str) -> np.ndarray:
    """Maps subject ids to patient indices, counting references to unknown patients."""
    index = ids.get_indexer(pd.Index(refs, dtype=object)) if refs else np.zeros(0, dtype=np.int64)
    unknown = int((index < 0).sum())
    if unknown:
        raw.skipped[f"{kind} referencing an unknown Patient"] += unknown
    return index.astype(np.int64)


def _keep(raw: _Raw, mask: np.ndarray, reason: str) -> np.ndarray:
    """Counts rows dropped by ``mask`` under ``reason`` and returns the mask."""
    dropped = int((~mask).sum())
    if dropped:
        raw.skipped[reason] += dropped
    return mask


def _encounter_arrays(raw: _Raw, ids: pd.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns encounter patient index, start time and class code for usable encounters."""
    patient = _index_patients(raw, ids, raw.enc_patient, "Encounter")
    start = to_clock(raw.enc_start)
    ok = patient >= 0
    ok &= _keep(raw, (start >= 0) | (patient < 0), "Encounter with unparseable or out-of-range period.start")
    return patient[ok], start[ok], np.asarray(raw.enc_class, dtype=object)[ok]


def _events(raw: _Raw, ids: pd.Index) -> _Events:
    """Parses the collected columns into patient-indexed arrays, dropping unusable rows."""
    enc_patient, enc_time, enc_class = _encounter_arrays(raw, ids)

    cond_patient = _index_patients(raw, ids, raw.cond_patient, "Condition")
    onset = to_clock(raw.cond_onset)
    abatement = to_clock(raw.cond_abatement)
    has_abatement = np.array([value is not None for value in raw.cond_abatement], dtype=bool)
    ok = (cond_patient >= 0) & _keep(
        raw, (onset >= 0) | (cond_patient < 0), "Condition with unparseable or out-of-range onset"
    )
    cond_end = np.where(has_abatement & (abatement >= 0), np.maximum(abatement, onset), _NO_END)

    med_patient = _index_patients(raw, ids, raw.med_patient, "MedicationRequest")
    med_time = to_clock(raw.med_time)
    med_ok = (med_patient >= 0) & _keep(
        raw, (med_time >= 0) | (med_patient < 0), "MedicationRequest with unparseable or out-of-range authoredOn"
    )

    obs_patient = _index_patients(raw, ids, raw.obs_patient, "Observation value")
    obs_time = to_clock(raw.obs_time)
    obs_ok = (obs_patient >= 0) & _keep(
        raw, (obs_time >= 0) | (obs_patient < 0), "Observation value with unparseable or out-of-range time"
    )
    return _Events(
        enc_patient=enc_patient,
        enc_time=enc_time,
        enc_class=enc_class,
        cond_patient=cond_patient[ok],
        cond_code=np.asarray(raw.cond_code, dtype=object)[ok],
        cond_onset=onset[ok],
        cond_end=cond_end[ok],
        med_patient=med_patient[med_ok],
        med_code=np.asarray(raw.med_code, dtype=object)[med_ok],
        med_time=med_time[med_ok],
        obs_patient=obs_patient[obs_ok],
        obs_feature=np.asarray(raw.obs_feature, dtype=np.int64)[obs_ok],
        obs_time=obs_time[obs_ok],
        obs_value=np.asarray(raw.obs_value, dtype=np.float64)[obs_ok],
    )


def _death_times(patients: pd.DataFrame, events: _Events) -> np.ndarray:
    """Returns death clock seconds per patient; ``_NO_END`` when alive.

    ``deceasedBoolean: true`` without a date, or an unparseable ``deceasedDateTime``, counts as
    death at the patient's last Encounter start (at birth when there is none), so no snapshot or
    prediction follows the last recorded care.
    """
    death = patients["death"].to_numpy().copy()
    flagged = patients["deceased_flag"].to_numpy() & (death < 0)
    last_encounter = np.full(len(patients), -1, dtype=np.int64)
    if len(events.enc_patient):
        np.maximum.at(last_encounter, events.enc_patient, events.enc_time)
    birth = patients["birth"].to_numpy()
    death = np.where(flagged, np.maximum(last_encounter, birth), death)
    return np.where(death < 0, _NO_END, death).astype(np.int64)


# --------------------------------------------------------------------------- the two tables


def snapshot_months(data_end: pd.Timestamp) -> list[pd.Timestamp]:
    """Returns the monthly snapshot times: the month of the window start .. the month of data end.

    Every prediction time is at or after the window start, so each has a snapshot at or before it.
    """
    months: list[pd.Timestamp] = []
    current = month_start(data_end - pd.DateOffset(years=PREDICTION_WINDOW_YEARS))
    while current <= data_end:
        months.append(current)
        current = add_months(current, 1)
    return months


def period_months(data_end: pd.Timestamp) -> list[pd.Timestamp]:
    """Returns the first months of the prediction periods covering the last window years.

    Periods are aligned to calendar months whose index is a multiple of the cadence (calendar
    quarters for a 3-month cadence), starting with the period containing the window start.
    """
    window_start = data_end - pd.DateOffset(years=PREDICTION_WINDOW_YEARS)
    first = month_start(window_start)
    first = add_months(first, -((first.year * 12 + first.month - 1) % PREDICTION_CADENCE_MONTHS))
    months = []
    current = first
    while current <= data_end:
        months.append(current)
        current = add_months(current, PREDICTION_CADENCE_MONTHS)
    return months


def day_offset(patient_id: str, period: pd.Timestamp) -> int:
    """Returns a deterministic 1-27 day offset of a prediction time into its period's month."""
    digest = hashlib.sha256(f"{patient_id}|{period:%Y-%m}".encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % 27


def _grid(count: int, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the patient x time cross product as two flat arrays."""
    patient = np.repeat(np.arange(count, dtype=np.int64), len(times))
    seconds = np.tile(np.asarray(times, dtype=np.int64), count)
    return patient, seconds


def _window_count(keys: np.ndarray, patient: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Counts events in ``[seconds - LOOKBACK_DAYS, seconds)``."""
    return count_before(keys, patient, seconds) - count_before(keys, patient, seconds - LOOKBACK_DAYS * DAY)


def _last_value(events: _Events, feature: int, patient: np.ndarray, seconds: np.ndarray, default: float) -> np.ndarray:
    """Returns the latest value of one observation feature before each snapshot, else the default."""
    mask = events.obs_feature == feature
    found, value = last_before(
        events.obs_patient[mask], events.obs_time[mask], events.obs_value[mask], patient, seconds
    )
    return np.where(found, value, default).astype(np.float64)


def _condition_counts(events: _Events, patient: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts distinct active condition codes, all and chronic-risk, at each snapshot."""
    merged = merge_intervals(events.cond_patient, events.cond_code, events.cond_onset, events.cond_end)
    active = count_covering(*merged, patient, seconds)
    chronic = np.isin(events.cond_code, list(CHRONIC_RISK_CONDITION_CODES))
    merged_chronic = merge_intervals(
        events.cond_patient[chronic],
        events.cond_code[chronic],
        events.cond_onset[chronic],
        events.cond_end[chronic],
    )
    return active, count_covering(*merged_chronic, patient, seconds)


def _medication_counts(events: _Events, patient: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Counts distinct medication codes ordered in the lookback window before each snapshot."""
    end = events.med_time + LOOKBACK_DAYS * DAY
    merged = merge_intervals(events.med_patient, events.med_code, events.med_time, end)
    return count_covering(*merged, patient, seconds)


def _feature_columns(
    patients: pd.DataFrame, events: _Events, patient: np.ndarray, seconds: np.ndarray
) -> dict[str, np.ndarray]:
    """Computes every feature for (patient, snapshot) rows from data strictly before the snapshot."""
    acute = np.array([is_acute_encounter_class(c) for c in events.enc_class], dtype=bool)
    emergency = np.isin(events.enc_class, list(EMERGENCY_CLASSES))
    inpatient = np.isin(events.enc_class, list(INPATIENT_CLASSES))
    found, last_acute = last_before(
        events.enc_patient[acute], events.enc_time[acute], events.enc_time[acute], patient, seconds
    )
    since = np.where(found, (seconds - last_acute) / DAY, DAYS_SINCE_CAP)
    active, chronic = _condition_counts(events, patient, seconds)
    birth = patients["birth"].to_numpy()[patient]
    return {
        "age_years": (seconds - birth) / (365.25 * DAY),
        "sex_female": (patients[GROUP_COLUMN].to_numpy()[patient] == "female").astype(np.int64),
        "encounters_365d": _window_count(sorted_keys(events.enc_patient, events.enc_time), patient, seconds),
        "ed_visits_365d": _window_count(
            sorted_keys(events.enc_patient[emergency], events.enc_time[emergency]), patient, seconds
        ),
        "inpatient_admissions_365d": _window_count(
            sorted_keys(events.enc_patient[inpatient], events.enc_time[inpatient]), patient, seconds
        ),
        "days_since_last_acute": np.minimum(since, DAYS_SINCE_CAP),
        "active_conditions": active,
        "chronic_risk_conditions": chronic,
        "medications_365d": _medication_counts(events, patient, seconds),
        "systolic_bp_last": _last_value(events, 0, patient, seconds, _default("systolic_bp_last")),
        "bmi_last": _last_value(events, 1, patient, seconds, _default("bmi_last")),
        "hba1c_last": _last_value(events, 2, patient, seconds, _default("hba1c_last")),
    }


def _default(name: str) -> float:
    """Returns the documented default of a feature."""
    return next(f.default for f in FEATURES if f.name == name)


def _typed(name: str, values: np.ndarray) -> np.ndarray:
    """Casts a feature column to its declared dtype (int64 or float64)."""
    dtype = next(f.dtype for f in FEATURES if f.name == name)
    return np.asarray(values, dtype=np.int64 if dtype == "int" else np.float64)


def build_patient_features(
    patients: pd.DataFrame, events: _Events, death: np.ndarray, data_end: pd.Timestamp
) -> pd.DataFrame:
    """Builds ``patient_features``: one row per patient per monthly snapshot while born and alive."""
    snapshots = np.array([timestamp_to_clock(m) for m in snapshot_months(data_end)], dtype=np.int64)
    patient, seconds = _grid(len(patients), snapshots)
    alive = (patients["birth"].to_numpy()[patient] <= seconds) & (death[patient] > seconds)
    patient, seconds = patient[alive], seconds[alive]
    columns = _feature_columns(patients, events, patient, seconds)
    frame = pd.DataFrame({ENTITY_KEY: patients[ENTITY_KEY].to_numpy()[patient]})
    frame[TIMESTAMP_COLUMN] = clock_to_timestamps(seconds)
    for feature in FEATURES:
        frame[feature.name] = _typed(feature.name, columns[feature.name])
    frame[GROUP_COLUMN] = patients[GROUP_COLUMN].to_numpy()[patient]
    return frame.reset_index(drop=True)


def build_prediction_events(
    patients: pd.DataFrame, events: _Events, death: np.ndarray, data_end: pd.Timestamp
) -> pd.DataFrame:
    """Builds ``prediction_events`` with the 90-day acute-encounter label."""
    periods = period_months(data_end)
    ids = patients[ENTITY_KEY].to_numpy()
    patient, period_index = _grid(len(patients), np.arange(len(periods)))
    period_clock = np.array([timestamp_to_clock(p) for p in periods], dtype=np.int64)[period_index]
    offsets = np.array(
        [day_offset(str(ids[p]), periods[k]) for p, k in zip(patient, period_index, strict=True)], dtype=np.int64
    )
    seconds = period_clock + offsets * DAY
    window_start = timestamp_to_clock(data_end - pd.DateOffset(years=PREDICTION_WINDOW_YEARS))
    end = timestamp_to_clock(data_end)
    keep = (seconds >= window_start) & (seconds + HORIZON_DAYS * DAY <= end)
    keep &= (patients["birth"].to_numpy()[patient] <= period_clock) & (death[patient] > seconds)
    patient, seconds = patient[keep], seconds[keep]
    acute = np.array([is_acute_encounter_class(c) for c in events.enc_class], dtype=bool)
    keys = sorted_keys(events.enc_patient[acute], events.enc_time[acute])
    upcoming = count_before(keys, patient, seconds + HORIZON_DAYS * DAY, inclusive=True)
    upcoming -= count_before(keys, patient, seconds, inclusive=True)
    frame = pd.DataFrame({ENTITY_KEY: ids[patient]})
    frame[TIMESTAMP_COLUMN] = clock_to_timestamps(seconds)
    frame[LABEL_COLUMN] = (upcoming > 0).astype(np.int64)
    return frame.reset_index(drop=True)


def build_tables(input_dir: str | os.PathLike[str]) -> Tables:
    """Streams a FHIR NDJSON directory once and builds both analytic tables.

    Args:
        input_dir: Directory of ``*.ndjson``/``*.ndjson.gz`` FHIR Bulk Data files.

    Returns:
        The tables with counts of what was read and set aside.

    Raises:
        UserError: The directory is missing/empty, a line is not JSON, or there are no usable
            Patient or Encounter resources.
    """
    raw = read_export(input_dir)
    missing = [t for t in ("Patient", "Encounter") if not raw.read.get(t)]
    if missing:
        found = ", ".join(sorted(raw.read)) or "nothing"
        raise UserError(
            f"{input_dir}: no {' or '.join(missing)} resources (found: {found}); "
            "the analytic tables need Patient and Encounter resources"
        )
    patients = _patients_frame(raw)
    if patients.empty:
        raise UserError(f"{input_dir}: no usable Patient resources (every Patient lacks an id or birthDate)")
    events = _events(raw, pd.Index(patients[ENTITY_KEY]))
    if len(events.enc_time) == 0:
        raise UserError(f"{input_dir}: no usable Encounter resources (none has a known subject and start)")
    data_end = clock_to_timestamps(np.array([events.enc_time.max()]))[0]
    death = _death_times(patients, events)
    return Tables(
        patient_features=build_patient_features(patients, events, death, data_end),
        prediction_events=build_prediction_events(patients, events, death, data_end),
        resources_read=dict(sorted(raw.read.items())),
        patients=len(patients),
        skipped=dict(sorted(raw.skipped.items())),
        data_end=data_end,
    )


# --------------------------------------------------------------------------- parquet


def _arrow_schema(frame: pd.DataFrame) -> pa.Schema:
    """Returns an explicit Arrow schema: string ids, UTC microsecond timestamps, int64/float64."""
    fields = []
    for name, dtype in frame.dtypes.items():
        if name == TIMESTAMP_COLUMN:
            fields.append(pa.field(name, pa.timestamp("us", tz="UTC"), nullable=False))
        elif pd.api.types.is_integer_dtype(dtype):
            fields.append(pa.field(name, pa.int64(), nullable=False))
        elif pd.api.types.is_float_dtype(dtype):
            fields.append(pa.field(name, pa.float64(), nullable=False))
        else:
            fields.append(pa.field(name, pa.string(), nullable=False))
    return pa.schema(fields)


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Writes a frame as parquet readable by pyarrow 10 and newer (format 2.6, us timestamps)."""
    table = pa.Table.from_pandas(frame, schema=_arrow_schema(frame), preserve_index=False, safe=True)
    pq.write_table(table, str(path), version="2.6", coerce_timestamps="us", allow_truncated_timestamps=False)


def write_tables(tables: Tables, out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Writes ``patient_features.parquet`` and ``prediction_events.parquet`` into ``out_dir``.

    Args:
        tables: The built tables.
        out_dir: The Dataset directory; created when missing.

    Returns:
        Table name to written file path.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "patient_features": os.path.join(out_dir, PATIENT_FEATURES_FILE),
        "prediction_events": os.path.join(out_dir, PREDICTION_EVENTS_FILE),
    }
    write_table(tables.patient_features, paths["patient_features"])
    write_table(tables.prediction_events, paths["prediction_events"])
    return paths
