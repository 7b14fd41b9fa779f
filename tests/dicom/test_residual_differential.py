"""The DICOM lane's residual self-check against its frozen original.

The original check (pydicom reads the input again and the whole output, every element decoded,
per-value regexes) is kept verbatim in ``bench/deid_dicom.py`` (``legacy_*``). For every file of the
benchmark's corpus, the pydicom test files and the shared samples, under several policies, both must
give the same identifying values (same list, same order) and the same hit Counters on the real
de-identified output, on the unchanged input used as output (where every value must be found), and on
outputs with identifying values planted back in different ways.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from components.deidentify.dicom import residual
from components.deidentify.dicom.deidentify import deidentify_dicom, dicom_identifying_values
from components.deidentify.dicom.policy import parse_dicom_policy

KEY = b"test-only-key-0123456789abcdef0123456789abcdef"
POLICIES = {
    "header": {"ocr": False},
    "retain_safe_clean_descriptors": {"ocr": False, "private_tags": "retain_safe", "options": ["clean_descriptors"]},
    "dates_removed": {"ocr": False, "date_mode": "remove"},
    "clean_all": {"ocr": False, "options": ["clean_descriptors", "clean_structured_content", "clean_graphics"]},
    "retain_identity": {
        "ocr": False,
        "options": [
            "retain_device_identity",
            "retain_institution_identity",
            "retain_patient_characteristics",
            "retain_uids",
        ],
    },
    "lane_default_without_ocr": {
        "options": ["retain_long_modified_dates"],
        "private_tags": "remove",
        "burned_in": "quarantine",
        "date_mode": "shift",
        "ocr": False,
    },
}
PLANTED_POLICIES = ("header", "retain_safe_clean_descriptors")


@pytest.fixture(scope="module")
def legacy(legacy_dicom_check: ModuleType) -> ModuleType:
    """``bench/deid_dicom.py``: its ``legacy_*`` functions are the frozen original check."""
    return legacy_dicom_check


@pytest.fixture(scope="module")
def bench_files(legacy: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The benchmark's corpus (60 synthetic files, pydicom test files, the shared samples when present)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(legacy.corpus(tmp_path_factory.mktemp("bench-corpus"), 60))


@pytest.fixture(scope="module")
def corpus(bench_files: list[Path], legacy: ModuleType) -> list[tuple[str, bytes]]:
    """The bench corpus plus every pydicom test and character-set file and every shared sample."""
    paths = list(bench_files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths += [Path(name) for name in get_testdata_files("*.dcm")]
        paths += [Path(name) for name in get_charset_files("*.dcm")]
    if legacy.SHARED.is_dir():
        paths += sorted(legacy.SHARED.rglob("*.dcm"))
    unique = {str(path.resolve()): path for path in paths}
    return [(path.name, path.read_bytes()) for path in unique.values()]


def _quiet() -> Any:
    logging.disable(logging.WARNING)
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("ignore")
    return context


@pytest.fixture(autouse=True)
def _no_warnings() -> Iterator[None]:
    """pydicom warns about the test files' quirks; the outcomes, not the warnings, are compared."""
    context = _quiet()
    try:
        yield
    finally:
        context.__exit__(None, None, None)
        logging.disable(logging.NOTSET)


def _outcome(function: Callable[[], Any]) -> Any:
    """The result, or the exception type when it raises (both implementations must agree either way)."""
    try:
        return function()
    except Exception as error:
        return f"raised {type(error).__name__}"


def _legacy_texts(legacy: ModuleType, data: bytes) -> list[tuple[str, str]]:
    try:
        return sorted(legacy.legacy_output_strings(pydicom.dcmread(BytesIO(data), force=True)))
    except Exception:
        return []


def _output(data: bytes, section: dict[str, Any]) -> bytes | None:
    return deidentify_dicom(data, KEY, parse_dicom_policy(section), {}).output


# --------------------------------------------------------------------------- identifying values


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
def test_identifying_values_identical(corpus: list[tuple[str, bytes]], legacy: ModuleType, policy_name: str) -> None:
    policy = parse_dicom_policy(POLICIES[policy_name])
    compared = 0
    for name, data in corpus:
        old = _outcome(lambda data=data: legacy.legacy_input_values(data, policy))
        new = _outcome(lambda data=data: residual.input_identifying_values(data, policy))
        assert new == old, name
        whole_old = _outcome(
            lambda data=data: legacy.legacy_dicom_identifying_values(pydicom.dcmread(BytesIO(data), force=True), policy)
        )
        whole_new = _outcome(
            lambda data=data: dicom_identifying_values(pydicom.dcmread(BytesIO(data), force=True), policy)
        )
        assert whole_new == whole_old, name  # what cleaned free text is scrubbed against
        compared += 1
    assert compared == len(corpus) > 100


# --------------------------------------------------------------------------- element strings of outputs


def test_output_strings_identical(corpus: list[tuple[str, bytes]], legacy: ModuleType) -> None:
    """Every (keyword, value string) of the outputs and of the inputs, fast path and fallback alike."""
    for name, data in corpus:
        output = _output(data, POLICIES["header"])
        for label, target in (("output", output), ("input", data)):
            if target is None:
                continue
            assert sorted(residual.output_texts(target)) == _legacy_texts(legacy, target), (name, label)


# --------------------------------------------------------------------------- hits


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
def test_hits_identical_on_outputs_and_inputs(
    corpus: list[tuple[str, bytes]], legacy: ModuleType, policy_name: str
) -> None:
    """(a) real outputs: identical hits (none); (b) inputs scanned as outputs: identical, every value found."""
    policy = parse_dicom_policy(POLICIES[policy_name])
    for name, data in corpus:
        values = _outcome(lambda data=data: legacy.legacy_input_values(data, policy))
        if isinstance(values, str):
            continue  # pydicom cannot read the input: the lane never gets this far
        output = deidentify_dicom(data, KEY, policy, {}).output
        if output is not None:
            old = legacy.legacy_scan_dicom_output(output, values)
            assert residual.scan_dicom_output(output, values) == old, (name, "output")
            assert residual.residual_hits(data, output, policy) == old, (name, "output")
        old_self = legacy.legacy_scan_dicom_output(data, values)
        assert residual.scan_dicom_output(data, values) == old_self, (name, "input")
        scan = residual.OutputScan(data, values)
        for category, value in values:
            assert scan.places(category, value), (name, category)  # every value is found


def _first_values(values: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Up to three values of different kinds (a name, an identifier or date, a UID or text)."""
    chosen: dict[str, tuple[str, str]] = {}
    kinds = {"name": "name", "name_part": "name", "identifier": "id", "date": "id", "uid": "other"}
    for category, value in values:
        chosen.setdefault(kinds.get(category, "other"), (category, value))
    return list(chosen.values())


def _implicit(data: bytes) -> bool:
    return bool(pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True).original_encoding[0])


def _saved(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _plant_pixels(ds: Dataset, value: str) -> bool:
    data = ds.get("PixelData")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    encoded = b" " + value.encode("latin-1", "ignore") + b" "
    if not isinstance(data, bytes) or syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return False
    if len(data) < 4 * len(encoded):
        return False
    middle = len(data) // 2 & ~1
    ds.PixelData = data[:middle] + encoded + data[middle + len(encoded) :]
    return True


def _plant(output: bytes, value: str, how: str) -> bytes | None:
    """The output with ``value`` written back in one way (``None`` when that way does not apply)."""
    ds = pydicom.dcmread(BytesIO(output), force=True)
    if how == "kept_text":
        ds.SeriesDescription = value
    elif how == "private":
        ds.private_block(0x0099, "CLINFLOW PLANTED", create=True).add_new(0x10, "LO", value)
    elif how in ("sequence", "sequence_undefined_length"):
        item = Dataset()
        item.ScheduledProcedureStepDescription = value
        ds.ScheduledProcedureStepSequence = Sequence([item])
        if how == "sequence_undefined_length":
            ds["ScheduledProcedureStepSequence"].is_undefined_length = True
            item.is_undefined_length_sequence_item = True
    elif how in ("latin1", "utf8"):
        ds.SpecificCharacterSet = "ISO_IR 100" if how == "latin1" else "ISO_IR 192"
        ds.PatientComments = "Ärzteteam " + value
    elif how == "bytes_upper_case":
        ds.private_block(0x0099, "CLINFLOW PLANTED", create=True).add_new(0x11, "OB", value.upper().encode("utf-8"))
    elif how == "person_name":
        ds.ReferringPhysicianName = value + "^PLANTED"
    elif how == "number":
        if not value.isdigit() or str(int(value)) != value or int(value) >= 2**32:
            return None
        ds.private_block(0x0099, "CLINFLOW PLANTED", create=True).add_new(0x12, "UL", int(value))
    elif how == "glued":
        ds.StudyComments = "x" + value + "9"
    elif how == "pixels" and not _plant_pixels(ds, value):
        return None
    return _saved(ds)


PLANTINGS = (
    "kept_text",
    "private",
    "sequence",
    "sequence_undefined_length",
    "latin1",
    "utf8",
    "bytes_upper_case",
    "person_name",
    "number",
    "glued",
    "pixels",
)


@pytest.mark.parametrize("policy_name", PLANTED_POLICIES)
def test_hits_identical_on_planted_outputs(
    corpus: list[tuple[str, bytes]], legacy: ModuleType, policy_name: str
) -> None:
    """(c) identifying values written back into the outputs: identical hits, and the value is found."""
    policy = parse_dicom_policy(POLICIES[policy_name])
    variants: Counter[str] = Counter()
    for name, data in corpus:
        values = _outcome(lambda data=data: legacy.legacy_input_values(data, policy))
        output = deidentify_dicom(data, KEY, policy, {}).output
        if isinstance(values, str) or output is None:
            continue
        for category, value in _first_values(values):
            for how in PLANTINGS:
                planted = _outcome(lambda output=output, value=value, how=how: _plant(output, value, how))
                if not isinstance(planted, bytes):
                    continue
                old = legacy.legacy_scan_dicom_output(planted, values)
                assert residual.scan_dicom_output(planted, values) == old, (name, how, category)
                # A number in a private element of an implicit VR file has no known VR: its bytes are not text.
                findable = how != "glued" and value.isascii() and not (how == "number" and _implicit(planted))
                if findable:
                    assert residual.OutputScan(planted, values).places(category, value), (name, how, category)
                variants[how] += 1
    assert all(variants[how] > 20 for how in PLANTINGS if how != "number"), variants


# --------------------------------------------------------------------------- crafted values


def _crafted(charset: str | list[str] | None, implicit: bool) -> Dataset:
    """A dataset with the values whose decoding has rules: padding, multiplicity, numbers, charsets, VRs.

    Its values are searched in the file itself: the verbatim-bytes shortcut of the output side must
    agree with full decoding for every VR, character set and encoding quirk here.
    """
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.8\x00"
    ds.StudyDate = "20200101 "
    ds.StudyTime = "101010.5"
    ds.AcquisitionDateTime = "20200101101010.000000+0100"
    ds.PatientName = "DOE^JOHN^^^=" if charset in (None, "ISO_IR 100") else "Ärzte^Jörg=山田^太郎"
    ds.add_new(0x00101001, "PN", "SMITH^A\\JONES^B")  # OtherPatientNames, two values
    ds.PatientID = "  ID12345  "
    ds.add_new(0x00101002, "SQ", Sequence())  # OtherPatientIDsSequence, empty
    ds.add_new(0x00101000, "LO", "A1\\\\B2")  # OtherPatientIDs with an empty middle value
    ds.StudyDescription = "Ärzte und Pflege" if charset != ["", "ISO 2022 IR 87"] else "検査 study"
    ds.ImageComments = "line one\r\nline two \\ kept together  "
    ds.InstanceNumber = " 12 "
    ds.add_new(0x00200011, "IS", "1.0")  # SeriesNumber written as a decimal: pydicom's own rules
    ds.add_new(0x00200012, "IS", "007")  # AcquisitionNumber
    ds.add_new(0x00180050, "DS", " 1.50 ")  # SliceThickness
    ds.add_new(0x00280030, "DS", "0.5\\ .25")  # PixelSpacing
    ds.add_new(0x00201041, "DS", "-1e3")  # SliceLocation
    ds.add_new(0x00281050, "DS", "nan")  # WindowCenter: float() accepts it, pydicom keeps the text
    ds.Rows = 512
    ds.Columns = 256
    ds.add_new(0x00189087, "FD", 1000.5)  # DiffusionBValue
    ds.add_new(0x00700022, "FL", [1.5, 2.25])  # GraphicData
    ds.add_new(0x00280009, "AT", [0x00181063, 0x00185050])  # FrameIncrementPointer
    ds.add_new(0x00081190, "UR", "http://example.org/a b  ")  # RetrieveURL
    ds.add_new(0x00080190, "UR", "urn:unknown-public-tag ")  # not in the dictionary
    ds.add_new(0x00080054, "AE", "  AE1 \\AE2")  # RetrieveAETitle
    ds.add_new(0x00080119, "UC", "long code value  ")  # LongCodeValue
    ds.add_new(0x0040A160, "UT", "free text\\with backslash  ")  # TextValue
    ds.add_new(0x0008103E, "LO", "")  # SeriesDescription, empty
    ds.add_new(0x00280002, "US", b"")  # SamplesPerPixel, an empty number
    if not implicit:
        descriptor = struct.pack("<hHH", -1, 0, 16)  # a LUT descriptor: pydicom fixes the first value
        ds._dict[BaseTag(0x00281101)] = RawDataElement(BaseTag(0x00281101), "SS", 6, descriptor, 0, False, True)
        ds.add_new(0x00100030, "UN", b"19700101")  # PatientBirthDate sent as UN: pydicom reads a DA
        series = Dataset()
        series.add_new(0x00100020, "LO", "IMPLICIT-ITEM-ID")  # re-encoded in implicit VR (_implicit_item)
        ds.add_new(0x00081115, "SQ", Sequence([series]))  # ReferencedSeriesSequence
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291008, "UN" if not implicit else "CS", b"IMAGE NUM 4 ")  # CS in the private dictionary
    ds.add_new(0x00291010, "OB", b"printable private text\x00")
    ds.add_new(0x00291011, "OB", b"\xff\xfe binary")
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.CodeMeaning = "Größe in der Sequenz"
    item.add_new(0x00401001, "SH", "RP-0001")  # RequestedProcedureID
    nested = Dataset()
    nested.add_new(0x00100020, "LO", "NESTED-ID-42")
    item.add_new(0x00400275, "SQ", Sequence([nested]))
    ds.add_new(0x00081111, "SQ", Sequence([item, Dataset()]))  # ReferencedPerformedProcedureStepSequence
    ds["ReferencedPerformedProcedureStepSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7.8"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "SENDER AE "
    return ds


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize(
    "charset", [None, "ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"]], ids=["default", "latin1", "utf8", "jis"]
)
def test_crafted_values_identical(legacy: ModuleType, charset: str | list[str] | None, implicit: bool) -> None:
    ds = _crafted(charset, implicit)
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    data = buffer.getvalue()
    if not implicit:  # an item encoded in implicit VR inside an explicit VR dataset (pydicom reads it so)
        explicit_item = struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 16) + b"IMPLICIT-ITEM-ID"
        assert data.count(explicit_item) == 1
        data = data.replace(explicit_item, struct.pack("<HHL", 0x0010, 0x0020, 16) + b"IMPLICIT-ITEM-ID")
    assert sorted(residual.output_texts(data)) == _legacy_texts(legacy, data)
    for section in POLICIES.values():
        policy = parse_dicom_policy(section)
        values = legacy.legacy_input_values(data, policy)
        assert residual.input_identifying_values(data, policy) == values
        assert residual.scan_dicom_output(data, values) == legacy.legacy_scan_dicom_output(data, values)
