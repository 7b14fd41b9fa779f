from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pydicom

from clinflow.synthetic.drop import DropSizes, generate_clinical_drop

SIZES = DropSizes(dicom_patients=2, device_log_patients=3, document_patients=2)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_drop_has_every_lane_linked_by_mrn_and_is_deterministic(tmp_path: Path) -> None:
    counts = generate_clinical_drop(tmp_path / "a", patients=6, seed=3, sizes=SIZES)
    generate_clinical_drop(tmp_path / "b", patients=6, seed=3, sizes=SIZES)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert counts["dicom"] == 4 and counts["device_logs"] >= 1 and counts["documents"] >= 2
    patients = [orjson.loads(line) for line in (tmp_path / "a" / "Patient.000.ndjson").read_bytes().splitlines()]
    mrns = {
        identifier["value"]
        for patient in patients
        for identifier in patient["identifier"]
        if identifier.get("type", {}).get("coding", [{}])[0].get("code") == "MR"
    }
    for path in (tmp_path / "a" / "dicom").glob("*.dcm"):
        assert pydicom.dcmread(path, stop_before_pixels=True).PatientID in mrns
    logged = {
        orjson.loads(line)["patient_mrn"]
        for path in (tmp_path / "a" / "device_logs").glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    }
    assert logged and logged <= mrns
