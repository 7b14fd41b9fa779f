from __future__ import annotations

import json
from collections import Counter
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file

from components.deidentify.device_logs import deidentify_device_log
from components.deidentify.dicom.deidentify import deidentify_dicom, dicom_identifying_values, scan_dicom_output
from components.deidentify.dicom.policy import parse_dicom_policy
from components.deidentify.keys import date_offset_days, pseudonym

KEY = b"test-only-key-0123456789abcdef0123456789abcdef"
OTHER_KEY = b"other-test-key-0123456789abcdef0123456789abcdef"

HEADER_POLICY = parse_dicom_policy({"ocr": False})
PYDICOM_FILES = [
    "CT_small.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "examples_overlay.dcm",
    "priv_SQ.dcm",
    "nested_priv_SQ.dcm",
]
CHARSET_FILES = [
    "chrJapMulti.dcm",
    "chrKoreanMulti.dcm",
    "chrArab.dcm",
    "chrRuss.dcm",
    "chrGerm.dcm",
    "chrSQEncoding.dcm",
]


def _path(name: str) -> str:
    found = get_testdata_file(name)
    return found if found else get_charset_files(name)[0]


def _assert_clean(data: bytes, policy=HEADER_POLICY) -> pydicom.Dataset | None:
    result = deidentify_dicom(data, KEY, policy, {})
    source = pydicom.dcmread(BytesIO(data), force=True)
    if source.get("BurnedInAnnotation") == "YES":
        assert result.outcome == "quarantined" and result.output is None
        return None
    assert result.outcome == "deidentified", result.reason
    values = dicom_identifying_values(source, policy)
    assert scan_dicom_output(result.output, values) == Counter()
    out = pydicom.dcmread(BytesIO(result.output))
    assert out.PatientIdentityRemoved == "YES"
    assert "113100" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert not any(elem.tag.is_private for elem in out.iterall())
    if "SOPClassUID" in source:
        assert out.SOPClassUID == source.SOPClassUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    return out


@pytest.mark.parametrize("name", PYDICOM_FILES + CHARSET_FILES)
def test_pydicom_files_leave_no_identifying_values(name: str):
    _assert_clean(Path(_path(name)).read_bytes())


def test_shared_samples_headers_clean(dicom_samples: Path):
    for path in sorted(dicom_samples.rglob("*.dcm")):
        _assert_clean(path.read_bytes())


def test_synthetic_headers_clean_and_linked(synthetic_dicom: list[Path]):
    crosswalk = {"12345678": "fhir-patient-1"}
    for path in synthetic_dicom:
        source = pydicom.dcmread(path)
        result = deidentify_dicom(path.read_bytes(), KEY, HEADER_POLICY, crosswalk)
        assert result.outcome in ("deidentified", "quarantined")
        if result.outcome == "quarantined":
            continue  # BurnedInAnnotation YES
        assert scan_dicom_output(result.output, dicom_identifying_values(source, HEADER_POLICY)) == Counter()
        out = pydicom.dcmread(BytesIO(result.output))
        if source.PatientID == "12345678":
            offset = date_offset_days(KEY, "fhir-patient-1")
            assert result.patient_link == "linked"
            assert out.PatientID == pseudonym(KEY, "Patient", "fhir-patient-1")
        else:
            offset = date_offset_days(KEY, "mrn:" + source.PatientID)
            assert result.patient_link == "unlinked"
        assert result.date_offset_days == offset
        from datetime import datetime, timedelta

        expected = (datetime.strptime(source.StudyDate, "%Y%m%d") + timedelta(days=offset)).strftime("%Y%m%d")
        assert out.StudyDate == expected
        assert out.StudyTime == source.StudyTime
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "PatientAge" not in out  # X unless Retain Patient Characteristics
        assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID


def test_uid_structure_preserved_across_dicomdir_tree():
    root = Path(get_testdata_file("DICOMDIR")).parent
    files = [p for p in root.rglob("*") if p.is_file() and p.name != "DICOMDIR" and p.suffix == ""]
    assert len(files) > 10
    original: dict[str, set[str]] = {}
    mapped: dict[str, set[str]] = {}
    again = {}
    for path in files:
        source = pydicom.dcmread(path, force=True)
        if "StudyInstanceUID" not in source:
            continue
        result = deidentify_dicom(path.read_bytes(), KEY, HEADER_POLICY, {})
        assert result.outcome == "deidentified"
        original.setdefault(source.StudyInstanceUID, set()).add(source.SeriesInstanceUID)
        mapped.setdefault(result.study_uid, set()).add(result.series_uid)
        assert result.study_uid.startswith("2.25.") and result.study_uid != source.StudyInstanceUID
        other = deidentify_dicom(path.read_bytes(), OTHER_KEY, HEADER_POLICY, {})
        assert other.instance_uid != result.instance_uid
        again[path] = result.instance_uid
    assert sorted(len(v) for v in original.values()) == sorted(len(v) for v in mapped.values())
    assert len(original) == len(mapped)
    for path in list(again)[:5]:
        assert deidentify_dicom(path.read_bytes(), KEY, HEADER_POLICY, {}).instance_uid == again[path]


def test_malformed_goes_to_dead_letter():
    for data in (b"", b"not a dicom file at all", b"\x00" * 128 + b"DICM" + b"\xff" * 40):
        result = deidentify_dicom(data, KEY, HEADER_POLICY, {})
        assert result.outcome == "dead_letter" and result.output is None and result.reason_code


def test_retain_safe_private_and_options():
    policy = parse_dicom_policy({"ocr": False, "private_tags": "retain_safe", "options": ["clean_descriptors"]})
    result = deidentify_dicom(Path(_path("CT_small.dcm")).read_bytes(), KEY, policy, {})
    codes = {item.CodeValue for item in pydicom.dcmread(BytesIO(result.output)).DeidentificationMethodCodeSequence}
    assert {"113100", "113105", "113107", "113111"} <= codes
    removal = parse_dicom_policy({"ocr": False, "date_mode": "remove"})
    out = pydicom.dcmread(BytesIO(deidentify_dicom(Path(_path("CT_small.dcm")).read_bytes(), KEY, removal, {}).output))
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert not out.get("StudyDate")


def test_device_log_shift_matches_dicom_offset():
    crosswalk = {"12345678": "fhir-patient-1"}
    lines = [
        {
            "device_id": "PUMP-7",
            "patient_mrn": "12345678",
            "timestamp": "2024-03-01T08:15:00-05:00",
            "metric": "hr",
            "value": 72,
            "unit": "/min",
        },
        {
            "device_id": "PUMP-7",
            "patient_mrn": "999",
            "timestamp": "2024-03-01T08:15:00Z",
            "metric": "hr",
            "value": "x",
            "unit": "/min",
        },
    ]
    data = ("\n".join(json.dumps(line) for line in lines) + "\nnot json\n").encode()
    result = deidentify_device_log("a.jsonl", data, KEY, crosswalk)
    assert result.counts["records_out"] == 1 and result.counts["dead_letter"] == 2
    assert [entry["line"] for entry in result.dead_letter] == [2, 3]
    record = json.loads(result.lines[0])
    offset = date_offset_days(KEY, "fhir-patient-1")
    from datetime import datetime, timedelta

    expected = (datetime.fromisoformat("2024-03-01T08:15:00-05:00") + timedelta(days=offset)).isoformat()
    assert record["timestamp"] == expected and record["patient_mrn"] == pseudonym(KEY, "Patient", "fhir-patient-1")
    assert "PUMP-7" not in result.lines[0]
    csv_data = b"device_id,patient_mrn,timestamp,metric,value,unit\nD1,12345678,2024-03-01T08:15:00+00:00,spo2,97,%\n"
    csv_result = deidentify_device_log("b.csv", csv_data, KEY, crosswalk)
    assert csv_result.lines[0].startswith("device_id,") and "12345678" not in csv_result.lines[1]
