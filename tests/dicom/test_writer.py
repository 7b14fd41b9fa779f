"""The raw-copying writer: same dataset as pydicom's writer, pixel data byte for byte, fallbacks."""

from __future__ import annotations

from collections import Counter
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset

from components.deidentify.dicom import writer
from components.deidentify.dicom.deidentify import (
    _deidentify_header,
    _mark_deidentified,
    _read,
    deidentify_dicom,
    dicom_identifying_values,
    scan_dicom_output,
)
from components.deidentify.dicom.policy import parse_dicom_policy
from components.deidentify.dicom.table import load_table

KEY = b"test-only-key-0123456789abcdef0123456789abcdef"
HEADER_POLICY = parse_dicom_policy({"ocr": False})
FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small.dcm",
    "rtplan.dcm",  # nested sequences
    "rtstruct.dcm",
    "examples_overlay.dcm",  # overlay repeating group
    "waveform_ecg.dcm",
    "nested_priv_SQ.dcm",  # private sequences
    "JPEG2000.dcm",  # encapsulated pixel data (undefined length)
    "SC_rgb_jpeg.dcm",  # explicit transfer syntax but implicit-VR dataset: pydicom's writer
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # big endian: pydicom's writer
    "chrJapMulti.dcm",  # ISO 2022 character set
]


def _path(name: str) -> Path:
    found = get_testdata_file(name)
    return Path(found if found else get_charset_files(name)[0])


def _processed(data: bytes) -> Dataset:
    ds = _read(data)
    _deidentify_header(ds, KEY, HEADER_POLICY, {}, None)
    _mark_deidentified(ds, HEADER_POLICY, load_table(), False)
    return ds


def _assert_same(a: Dataset, b: Dataset) -> None:
    assert sorted(a.keys()) == sorted(b.keys())
    for elem in a:
        other = b[elem.tag]
        if elem.VR == "SQ":
            assert len(elem.value) == len(other.value), elem.tag
            for left, right in zip(elem.value, other.value, strict=True):
                _assert_same(left, right)
        else:
            assert elem.value == other.value, elem.tag


@pytest.mark.parametrize("name", FILES)
def test_fast_writer_matches_pydicom_writer(name: str):
    data = _path(name).read_bytes()
    fast = writer.write_part10(_processed(data))
    reference_ds = _processed(data)
    for _ in reference_ds.iterall():
        pass
    buffer = BytesIO()
    meta = reference_ds.file_meta
    complete = bool(meta.get("MediaStorageSOPClassUID")) and bool(meta.get("MediaStorageSOPInstanceUID"))
    reference_ds.save_as(buffer, enforce_file_format=complete)
    if not complete:
        assert fast is None  # bare datasets are written as read, by pydicom
        return
    if fast is None:  # the fallback cases: deidentify_dicom uses pydicom's writer for them
        assert name in ("SC_rgb_jpeg.dcm", "MR_small_bigendian.dcm")
        return
    ours, theirs = pydicom.dcmread(BytesIO(fast)), pydicom.dcmread(BytesIO(buffer.getvalue()))
    assert ours.preamble == b"\x00" * 128
    assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID
    assert ours.file_meta.MediaStorageSOPInstanceUID == theirs.file_meta.MediaStorageSOPInstanceUID
    _assert_same(ours, theirs)


@pytest.mark.parametrize("name", FILES)
def test_outputs_clean_and_pixels_byte_identical(name: str):
    data = _path(name).read_bytes()
    result = deidentify_dicom(data, KEY, HEADER_POLICY, {})
    assert result.outcome == "deidentified", result.reason
    source = pydicom.dcmread(BytesIO(data), force=True)
    assert scan_dicom_output(result.output, dicom_identifying_values(source, HEADER_POLICY)) == Counter()
    out = pydicom.dcmread(BytesIO(result.output))
    if "PixelData" in source:
        assert out.PixelData == source.PixelData
    if "SOPInstanceUID" in source:
        assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID != source.SOPInstanceUID
    assert [item.CodeValue for item in out.DeidentificationMethodCodeSequence][:1] == ["113100"]


def test_implicit_vr_output_stays_implicit_and_kept_bytes_are_copied():
    data = _path("MR_small_implicit.dcm").read_bytes()
    source = pydicom.dcmread(BytesIO(data))
    assert source.file_meta.TransferSyntaxUID.is_implicit_VR
    out_bytes = deidentify_dicom(data, KEY, HEADER_POLICY, {}).output
    out = pydicom.dcmread(BytesIO(out_bytes))
    assert out.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert out.original_encoding == (True, True)
    assert out.Rows == source.Rows and out.PixelData == source.PixelData


def test_cleaned_text_uses_the_inputs_identifying_words():
    """Clean Descriptors cleans free text against the input's identifying values (read lazily)."""
    policy = parse_dicom_policy({"ocr": False, "options": ["clean_descriptors"]})
    source = pydicom.dcmread(_path("CT_small.dcm"))
    source.StudyDescription = f"CT head {source.PatientName.family_name} routine"
    buffer = BytesIO()
    source.save_as(buffer)
    result = deidentify_dicom(buffer.getvalue(), KEY, policy, {})
    out = pydicom.dcmread(BytesIO(result.output))
    assert out.StudyDescription == "CT head routine"
