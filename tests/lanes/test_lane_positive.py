"""Valid inputs of every lane are promoted, with the facts the ingest integration needs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pydicom.data
import pytest
from ingest_corpus.builder import build_valid_dicom, dicom_dataset, write_dicom

from clinflow.synthetic.device_logs import generate_device_logs, load_patients, patient_mrn
from clinflow.synthetic.documents import generate_documents
from components.ingest.lanes import count_outcomes, route
from components.ingest.lanes.dicom import summarize_batch
from components.ingest.lanes.pdf import document_json

PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm")


def test_generated_fhir_is_promoted(small_fhir: Path) -> None:
    verdicts = [route(path) for path in sorted(small_fhir.iterdir())]
    assert verdicts and all(v.promoted and v.lane == "fhir" for v in verdicts), [v.reason for v in verdicts]
    patient = next(v for v in verdicts if v.details["resource_type"] == "Patient")
    assert patient.details["resources"] == 6


def test_shared_fhir_bulk_100_is_promoted(shared_data: Path) -> None:
    source = shared_data / "fhir-bulk-100"
    if not source.is_dir():
        pytest.skip("fhir-bulk-100 not present")
    files = sorted(p for p in source.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")) and p.name != "log.ndjson")
    verdicts = [route(path) for path in files]
    assert verdicts and all(v.promoted for v in verdicts), [v.reason for v in verdicts if not v.promoted]


def test_dicom_files_are_promoted_and_summarised(tmp_path: Path) -> None:
    paths = [Path(pydicom.data.get_testdata_file(name)) for name in PYDICOM_FILES]
    paths += [build_valid_dicom(tmp_path / f"made{index}.dcm", index) for index in range(12)]
    ds = dicom_dataset(50)
    paths.append(write_dicom(tmp_path / "implicit.dcm", ds, pydicom.uid.ImplicitVRLittleEndian))
    verdicts = [route(path) for path in paths]
    assert all(v.promoted for v in verdicts), [v.reason for v in verdicts if not v.promoted]
    made = verdicts[len(PYDICOM_FILES)]
    assert made.extracted == {"patient_id": "MRN-00000"}
    assert "MRN-00000" not in orjson.dumps(made.report_entry()).decode()
    summary = summarize_batch(verdicts)
    assert summary["totals"]["instances"] == len(paths)
    # made0..made11: studies by index // 10 (2), series by index // 5 (3)
    made_studies = {v.details["study_instance_uid"] for v in verdicts[len(PYDICOM_FILES) : -1]}
    assert len(made_studies) == 2
    assert sum(len(s["series"]) for s in summary["studies"].values()) >= 3


def test_shared_dicom_samples_are_promoted(shared_data: Path) -> None:
    files = sorted((shared_data / "dicom-deid-samples").rglob("*.dcm"))
    if not files:
        pytest.skip("dicom-deid-samples not present")
    verdicts = [route(path) for path in files]
    assert all(v.promoted for v in verdicts), [v.reason for v in verdicts if not v.promoted]
    assert summarize_batch(verdicts)["totals"]["instances"] == len(files)


def test_device_logs_from_patients_are_promoted(tmp_path: Path, small_fhir: Path) -> None:
    mrns = [patient_mrn(p) for p in load_patients(small_fhir)]
    files = generate_device_logs(tmp_path, small_fhir, seed=3, patients_per_file=3)
    assert [f.suffix for f in files] == [".jsonl", ".csv"]
    verdicts = [route(path) for path in files]
    assert all(v.promoted and v.lane == "device_logs" for v in verdicts), [v.reason for v in verdicts]
    seen = {mrn for v in verdicts for mrn in (v.extracted or {})["patient_mrns"]}
    assert seen == set(mrns)
    assert sum(v.details["rows"] for v in verdicts) > 6 * 48 * 6


def test_out_of_range_values_are_flagged_not_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "vitals.csv"
    path.write_text(
        "device_id,patient_mrn,timestamp,metric,value,unit\n"
        "MON-1,MRN-9,2024-03-04T08:00:00+00:00,heart_rate,72,bpm\n"
        "MON-1,MRN-9,2024-03-04T08:00:00+00:00,spo2,40,%\n"
        "MON-2,MRN-9,2024-03-04T07:00:00+00:00,temperature,105.1,[degF]\n"
        "MON-1,MRN-9,2024-03-04T08:15:00+00:00,heart_rate,250,/min\n",
        encoding="utf-8",
    )
    verdict = route(path)
    assert verdict.promoted and verdict.reason_code == "out_of_range_flagged"
    assert verdict.details["flagged_count"] == 2
    assert [(row["line"], row["flag"]) for row in verdict.details["flagged_rows"]] == [
        (3, "below_range"),
        (5, "above_range"),
    ]


def test_documents_are_promoted_with_text_ocr_and_mrn(tmp_path: Path, small_fhir: Path) -> None:
    patients = load_patients(small_fhir)[:2]
    files = generate_documents(tmp_path, patients, seed=5, scanned_every=10)
    names = [f.name for f in files]
    assert names == ["discharge_summary.000.pdf", "scanned_note.000.pdf", "discharge_summary.001.pdf"]
    verdicts = {f.name: route(f) for f in files}
    assert all(v.promoted for v in verdicts.values()), [v.reason for v in verdicts.values()]
    mrn = patient_mrn(patients[0])
    summary = document_json(files[0], verdicts[files[0].name])
    assert summary["patient_mrn"] == mrn and summary["ocr_pages"] == [] and summary["pages"] == 1
    assert set(summary) == {"file", "sha256", "pages", "text", "ocr_pages", "patient_mrn"}
    scanned = document_json(files[1], verdicts[files[1].name])
    assert scanned["ocr_pages"] == [1]
    assert scanned["patient_mrn"] == mrn
    assert patients[0]["name"][0]["family"] in scanned["text"]
    assert mrn not in verdicts[files[1].name].reason
    assert count_outcomes(verdicts.values()) == {"received": 3, "promote": 3, "quarantine": 0, "reject": 0}
