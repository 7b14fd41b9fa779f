"""Deterministic synthetic device telemetry (JSONL and CSV) for a list of patients.

Each patient gets one bedside monitor (and some a glucometer) that reports vital signs at a fixed
interval; values follow a per-patient baseline with noise, and a few readings fall outside the
physiological range so the ingest lane's flags have something to flag. Rows carry
``device_id, patient_mrn, timestamp, metric, value, unit`` with ISO 8601 timestamps with a UTC
offset, ordered in time per device. Same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from clinflow.ndjson import iter_resources

COLUMNS: tuple[str, ...] = ("device_id", "patient_mrn", "timestamp", "metric", "value", "unit")
MR_CODE = "MR"
START = datetime(2024, 3, 4, 8, 0, tzinfo=timezone.utc)
# metric -> (unit, baseline mean, between-patient sd, reading sd, decimals)
VITALS: dict[str, tuple[str, float, float, float, int]] = {
    "heart_rate": ("bpm", 76.0, 9.0, 4.0, 0),
    "spo2": ("%", 97.0, 1.0, 0.8, 0),
    "temperature": ("Cel", 36.9, 0.3, 0.15, 1),
    "resp_rate": ("/min", 16.0, 2.0, 1.2, 0),
    "systolic_bp": ("mm[Hg]", 124.0, 12.0, 6.0, 0),
    "diastolic_bp": ("mm[Hg]", 79.0, 8.0, 4.0, 0),
}
GLUCOSE = ("glucose", "mg/dL", 110.0, 20.0, 18.0, 0)
# Readings that are physiologically implausible (sensor artefacts) so the lane can flag them.
ARTEFACTS: dict[str, float] = {"heart_rate": 260.0, "spo2": 55.0, "temperature": 44.5, "resp_rate": 2.0}
ARTEFACT_RATE = 0.004


def patient_mrn(resource: dict[str, Any]) -> str | None:
    """The value of a FHIR Patient's identifier whose type code is ``MR``, or None."""
    for identifier in resource.get("identifier", []):
        codings = identifier.get("type", {}).get("coding", [])
        if any(coding.get("code") == MR_CODE for coding in codings) and identifier.get("value"):
            return str(identifier["value"])
    return None


def load_patients(source: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads Patient resources from a ``Patient*.ndjson[.gz]`` file or an export directory holding them."""
    path = Path(source)
    files = sorted(path.glob("Patient*.ndjson*")) if path.is_dir() else [path]
    return [
        resource for file in files for _, resource in iter_resources(file) if resource.get("resourceType") == "Patient"
    ]


def resolve_mrns(patients: str | os.PathLike[str] | Iterable[str] | Iterable[dict[str, Any]]) -> list[str]:
    """Returns MRNs from a Patient NDJSON path/directory, Patient resources, or MRN strings."""
    if isinstance(patients, (str, os.PathLike)):
        items: list[Any] = list(load_patients(patients))
    else:
        items = list(patients)
    mrns: list[str] = []
    for item in items:
        mrn = patient_mrn(item) if isinstance(item, dict) else str(item)
        if mrn:
            mrns.append(mrn)
    return mrns


def _readings(
    rng: random.Random, device: str, mrn: str, start: datetime, count: int, interval: timedelta, glucometer: bool
) -> Iterator[dict[str, Any]]:
    """Yields one patient's rows, in time order."""
    baselines = {metric: rng.gauss(mean, sd) for metric, (_, mean, sd, _, _) in VITALS.items()}
    offset = timezone(timedelta(hours=rng.choice((-8, -7, -6, -5, -4))))
    for step in range(count):
        when = (start + step * interval).astimezone(offset).isoformat(timespec="seconds")
        for metric, (unit, _, _, noise, decimals) in VITALS.items():
            value = rng.gauss(baselines[metric], noise)
            if metric == "spo2":
                value = min(value, 100.0)
            if metric in ARTEFACTS and rng.random() < ARTEFACT_RATE:
                value = ARTEFACTS[metric]
            yield _row(device, mrn, when, metric, value, unit, decimals)
        if glucometer and step % 8 == 0:
            metric, unit, mean, sd, noise, decimals = GLUCOSE
            yield _row(f"{device}-glu", mrn, when, metric, rng.gauss(mean, sd) + rng.gauss(0, noise), unit, decimals)


def _row(device: str, mrn: str, when: str, metric: str, value: float, unit: str, decimals: int) -> dict[str, Any]:
    """One telemetry row."""
    rounded: float | int = round(value, decimals) if decimals else round(value)
    return {
        "device_id": device,
        "patient_mrn": mrn,
        "timestamp": when,
        "metric": metric,
        "value": rounded,
        "unit": unit,
    }


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes rows as JSONL."""
    path.write_bytes(b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows))


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes rows as CSV with a header row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def generate_device_logs(
    output_dir: str | os.PathLike[str],
    patients: str | os.PathLike[str] | Iterable[str] | Iterable[dict[str, Any]],
    seed: int,
    readings_per_patient: int = 48,
    interval_minutes: int = 15,
    patients_per_file: int = 25,
    formats: Sequence[str] = ("jsonl", "csv"),
) -> list[Path]:
    """Writes deterministic device telemetry files, alternating JSONL and CSV.

    Args:
        output_dir: Directory for the files (created if missing).
        patients: A Patient NDJSON file or export directory, Patient resources, or MRN strings.
        seed: Random seed; the same inputs and seed give byte-identical files.
        readings_per_patient: Time points per patient (each has every vital sign).
        interval_minutes: Minutes between time points.
        patients_per_file: Patients per output file.
        formats: File formats to cycle through (``jsonl``, ``csv``).

    Returns:
        The written files (``device_log.000.jsonl``, ``device_log.001.csv``, ...).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mrns = resolve_mrns(patients)
    written: list[Path] = []
    interval = timedelta(minutes=interval_minutes)
    for file_index, first in enumerate(range(0, len(mrns), patients_per_file)):
        rows: list[dict[str, Any]] = []
        for index, mrn in enumerate(mrns[first : first + patients_per_file], first):
            rng = random.Random(f"clinflow-synthetic/{seed}/device/{index}")
            device = f"MON-{rng.randrange(16**6):06X}"
            start = START + timedelta(days=rng.randrange(0, 365), minutes=rng.randrange(0, 1440))
            rows.extend(_readings(rng, device, mrn, start, readings_per_patient, interval, rng.random() < 0.3))
        kind = formats[file_index % len(formats)]
        path = out / f"device_log.{file_index:03d}.{kind}"
        (_write_jsonl if kind == "jsonl" else _write_csv)(path, rows)
        written.append(path)
    return written
