"""A synthetic file drop with every ingest lane: FHIR Bulk NDJSON, DICOM, device logs and PDFs.

The FHIR export is written at the top level (``generate_fhir_bulk``); the other lanes go into
``dicom/``, ``device_logs/`` and ``documents/`` for the first patients of the export, linked to
them by MRN (DICOM ``PatientID``, the device-log ``patient_mrn`` column, the MRN in the PDF text), so
a patient's records still join after de-identification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from clinflow.synthetic.device_logs import generate_device_logs
from clinflow.synthetic.dicom import generate_dicom
from clinflow.synthetic.documents import generate_documents
from clinflow.synthetic.generator import generate_fhir_bulk


@dataclass(frozen=True)
class DropSizes:
    """How many patients get files in each non-FHIR lane (the first N patients of the export).

    Attributes:
        dicom_patients: Patients with one imaging study (two images) each.
        device_log_patients: Patients with bedside-monitor telemetry.
        document_patients: Patients with a discharge summary PDF (every tenth also a scanned note).
    """

    dicom_patients: int = 10
    device_log_patients: int = 100
    document_patients: int = 20


def _first_patients(patient_file: Path, count: int) -> list[dict[str, Any]]:
    """Reads the first ``count`` Patient resources of an NDJSON file."""
    with open(patient_file, "rb") as handle:
        return [orjson.loads(line) for line in islice(handle, count)]


def generate_clinical_drop(
    output_dir: str | os.PathLike[str],
    patients: int,
    seed: int,
    sizes: DropSizes | None = None,
    workers: int = 1,
) -> dict[str, int]:
    """Writes the FHIR export plus DICOM, device logs and PDFs for the first patients.

    Args:
        output_dir: The drop directory (created).
        patients: Patients in the FHIR export.
        seed: Seed for every lane; the same arguments give byte-identical files.
        sizes: Patients per non-FHIR lane (capped at ``patients``).
        workers: Worker processes for the FHIR generator.

    Returns:
        Files written per lane (``fhir`` counts resources per type summed).
    """
    sizes = sizes or DropSizes()
    root = Path(output_dir)
    counts = generate_fhir_bulk(root, patients=patients, seed=seed, workers=workers)
    patient_file = next(root.glob("Patient.*.ndjson"))
    dicom = generate_dicom(
        root / "dicom", _first_patients(patient_file, min(sizes.dicom_patients, patients)), seed=seed
    )
    device_logs = generate_device_logs(
        root / "device_logs", _first_patients(patient_file, min(sizes.device_log_patients, patients)), seed
    )
    documents = generate_documents(
        root / "documents", patient_file, seed, max_patients=min(sizes.document_patients, patients)
    )
    return {
        "fhir_resources": sum(counts.values()),
        "dicom": len(dicom),
        "device_logs": len(device_logs),
        "documents": len(documents),
    }
