"""Ingest a drop with every lane, de-identify it, and check the lanes join on one key and one date shift."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import orjson
import pydicom
import pytest

from clinflow.synthetic.drop import DropSizes, generate_clinical_drop
from components.deidentify.keys import date_offset_days, pseudonym
from components.deidentify.main import main as deidentify_main
from components.ingest.main import main as ingest_main

SIZES = DropSizes(dicom_patients=3, device_log_patients=4, document_patients=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    mp = pytest.MonkeyPatch()
    mp.setenv("CLINFLOW_HMAC_KEY", "lanes-end-to-end-key-0123456789abcdef")
    root = tmp_path_factory.mktemp("lanes")
    generate_clinical_drop(root / "drop", patients=12, seed=5, sizes=SIZES)
    argv = ["--source", str(root / "drop"), "--output-data", str(root / "raw"), "--manifest", str(root / "man")]
    assert ingest_main([*argv, "--metrics", str(root / "im.json")]) == 0
    argv = ["--input-data", str(root / "raw"), "--output-data", str(root / "out"), "--dead-letter", str(root / "dl")]
    argv += ["--report", str(root / "r.html"), "--report-json", str(root / "rj"), "--metrics", str(root / "dm.json")]
    assert deidentify_main(argv) == 0
    mp.undo()
    return {"root": root, "drop": root / "drop", "out": root / "out", "report": root / "rj" / "deid_report.json"}


def patients(drop: Path) -> dict[str, dict]:
    """MRN -> original Patient resource."""
    found = {}
    for line in (drop / "Patient.000.ndjson").read_bytes().splitlines():
        patient = orjson.loads(line)
        for identifier in patient["identifier"]:
            if identifier.get("type", {}).get("coding", [{}])[0].get("code") == "MR":
                found[identifier["value"]] = patient
    return found


def test_every_lane_is_processed_and_balanced(run: dict[str, Path]) -> None:
    lanes = json.loads(run["report"].read_text())["lanes"]
    for lane in ("dicom", "device_logs", "documents"):
        assert lanes[lane]["balanced"] and lanes[lane]["in"] > 0, lane
    assert lanes["documents"]["out"] == lanes["documents"]["in"]
    assert "residual_phi_files" not in lanes["dicom"]["counts"]
    assert lanes["device_logs"]["counts"]["patients_linked"] == lanes["device_logs"]["in"]


def test_dicom_residual_check_fires_on_an_unchanged_file(run: dict[str, Path]) -> None:
    from components.deidentify.lanes import DicomFileFn
    from components.deidentify.policy import load_policy

    policy = load_policy(None)
    lane = DicomFileFn(b"k" * 32, policy.document["dicom"], policy.source, str(run["root"]))
    lane.setup()
    original = next((run["drop"] / "dicom").glob("*.dcm")).read_bytes()
    assert lane._residual(original, original) > 0


def test_dicom_dates_shift_by_the_fhir_patients_offset(run: dict[str, Path]) -> None:
    key = b"lanes-end-to-end-key-0123456789abcdef"
    by_mrn = patients(run["drop"])
    originals = {}
    for path in (run["drop"] / "dicom").glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        originals[pseudonym(key, "Patient", by_mrn[ds.PatientID]["id"])] = (ds, by_mrn[ds.PatientID]["id"])
    outputs = list((run["out"] / "dicom").glob("*.dcm"))
    assert outputs
    for path in outputs:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        original, fhir_id = originals[ds.PatientID]  # the DICOM PatientID is the FHIR patient's pseudonym
        offset = dt.timedelta(days=date_offset_days(key, fhir_id))
        before = dt.datetime.strptime(original.StudyDate, "%Y%m%d").date()
        assert dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date() == before + offset
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID != original.StudyInstanceUID


def test_device_log_timestamps_shift_by_the_same_offset(run: dict[str, Path]) -> None:
    key = b"lanes-end-to-end-key-0123456789abcdef"
    by_mrn = patients(run["drop"])
    source = next((run["drop"] / "device_logs").glob("*.jsonl"))
    first_in = orjson.loads(source.read_bytes().splitlines()[0])
    first_out = orjson.loads((run["out"] / "device_logs" / source.name).read_bytes().splitlines()[0])
    fhir_id = by_mrn[first_in["patient_mrn"]]["id"]
    assert first_out["patient_mrn"] == pseudonym(key, "Patient", fhir_id)
    shift = dt.datetime.fromisoformat(first_out["timestamp"]) - dt.datetime.fromisoformat(first_in["timestamp"])
    assert shift == dt.timedelta(days=date_offset_days(key, fhir_id))
    assert first_out["device_id"] != first_in["device_id"]


def test_document_text_keeps_no_identifier_of_its_patient(run: dict[str, Path]) -> None:
    by_mrn = patients(run["drop"])
    texts = [json.loads(p.read_text()) for p in (run["out"] / "documents").glob("*.json")]
    assert texts and not list((run["out"] / "documents").glob("*.pdf"))
    blob = "\n".join(t["text"] for t in texts).lower()
    for mrn, patient in by_mrn.items():
        assert mrn.lower() not in blob
        for name in patient["name"]:
            for part in [*name.get("given", []), name["family"]]:
                assert f" {part.lower()} " not in f" {blob} ".replace("\n", " "), part
        for point in patient.get("telecom", []):
            assert point["value"].lower() not in blob
    assert all(t["redactions"].get("name", 0) > 0 for t in texts)


def test_clinicians_and_facilities_are_redacted_from_document_text() -> None:
    from components.deidentify.lanes import redact_care_team

    text, counts = redact_care_team("Springfield General Hospital\nAttending: Dr. Priya Natarajan. Dr. Smith agreed.")
    assert text == "[FACILITY]\nAttending: [CLINICIAN]. [CLINICIAN] agreed."
    assert counts == {"facility": 1, "clinician": 2}
    assert redact_care_team("Hypertension, metformin 500 mg")[0] == "Hypertension, metformin 500 mg"


def test_residual_scan_reads_the_text_lanes_outputs_too(run: dict[str, Path]) -> None:
    report = json.loads(run["report"].read_text())
    scan, lanes = report["residual_phi_scan"], report["lanes"]
    assert scan["passed"]
    assert scan["lane_lines_scanned"]["device_logs"] == lanes["device_logs"]["out"]
    assert scan["lane_lines_scanned"]["documents"] == lanes["documents"]["out"]
