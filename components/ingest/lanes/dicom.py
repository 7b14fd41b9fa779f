"""DICOM lane: header checks with pydicom, never decoding (or loading) pixel data.

A file is read with ``defer_size`` so large values (pixel data) stay on disk; the declared pixel
data length is compared with the bytes the file really has. Required attributes, the transfer
syntax allow-list and truncation decide the verdict; study/series/instance UIDs go in ``details``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from components.ingest import sniff
from components.ingest.lanes.verdict import LaneVerdict, promote, quarantine

LANE = "dicom"
REQUIRED_ATTRIBUTES: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "PatientID",
)
ALLOWED_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
DEFER_BYTES = 1024
_PIXEL_TAGS = (
    BaseTag(0x7FE00010),
    BaseTag(0x7FE00008),
    BaseTag(0x7FE00009),
)  # PixelData, FloatPixelData, DoubleFloatPixelData
_UNDEFINED = 0xFFFFFFFF
_REQUIRED_TAGS: dict[str, BaseTag] = {keyword: Tag(keyword) for keyword in REQUIRED_ATTRIBUTES}
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
# Explicit VR little endian PixelData with undefined length (encapsulated).
_ENCAPSULATED_PIXEL_HEADER = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"


def _file_contains(path: Path, needle: bytes, chunk_bytes: int = 1 << 20) -> bool:
    """Searches a file for ``needle`` in bounded chunks (overlapping so a match across chunks is found)."""
    carry = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            if needle in carry + chunk:
                return True
            carry = chunk[-(len(needle) - 1) :]
    return False


def _truncation(path: Path, dataset: pydicom.Dataset, size: int) -> tuple[str, str] | None:
    """Finds a truncated element by comparing declared lengths with the bytes present.

    Returns:
        ``(reason_code, where)`` or None when every top-level element is complete.
    """
    raw_elements = dataset._dict  # raw (unconverted) elements keep their declared length and offset
    for tag, element in raw_elements.items():
        if not isinstance(element, RawDataElement) or element.length == _UNDEFINED:
            continue
        present = len(element.value) if element.value is not None else max(0, size - element.value_tell)
        if present < element.length:
            code = "truncated_pixel_data" if int(tag) in _PIXEL_TAGS else "truncated_file"
            return code, f"tag {tag} declares {element.length:,} bytes but only {present:,} are present"
    last = raw_elements[max(raw_elements)] if raw_elements else None  # elements are stored in tag (= file) order
    if isinstance(last, RawDataElement) and last.length != _UNDEFINED and size > last.value_tell + last.length:
        leftover = size - last.value_tell - last.length
        return "truncated_file", f"{leftover:,} byte(s) after the last complete element are an incomplete element"
    pixel = next((raw_elements[t] for t in _PIXEL_TAGS if t in raw_elements), None)
    if pixel is None and _file_contains(path, _ENCAPSULATED_PIXEL_HEADER):
        # pydicom drops the whole data set when encapsulated pixel data ends without its delimiter.
        return "truncated_pixel_data", "encapsulated pixel data (7FE0,0010) ends without its sequence delimiter"
    if not raw_elements:
        return "truncated_file", "no data set elements could be read after the file meta information"
    if pixel is None and "Rows" in dataset and "Columns" in dataset:
        return "truncated_pixel_data", "pixel attributes (Rows, Columns) are present but the pixel data is missing"
    if isinstance(pixel, RawDataElement) and pixel.length == _UNDEFINED:
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 4096))
            tail = handle.read()
        if _SEQUENCE_DELIMITER not in tail:
            return "truncated_pixel_data", "encapsulated pixel data has no sequence delimiter at the end of the file"
    return None


def _uid(value: Any) -> str:
    """A UID attribute as a plain string."""
    return str(value) if value is not None else ""


def _text_value(dataset: pydicom.Dataset, tag: BaseTag) -> str:
    """A top-level string attribute's text, read from the raw bytes when not yet converted (fast path)."""
    element = dataset._dict.get(tag)
    if element is None:
        return ""
    if isinstance(element, RawDataElement):
        if element.value is None:  # deferred: too long for an identifier, convert normally
            return str(dataset[tag].value or "").strip()
        return element.value.decode("latin-1").strip(" \x00")
    return str(element.value or "").strip()


def validate(path: Path, content_type: str) -> LaneVerdict:
    """Checks one DICOM file's header without decoding pixels.

    Args:
        path: The file.
        content_type: The sniffed content type (``dicom`` or ``dicom_no_preamble``).

    Returns:
        ``promote`` with study/series/instance UIDs in ``details`` (PatientID in ``extracted``), or
        ``quarantine`` with ``not_dicom``, ``dicom_missing_preamble``, ``truncated_file``,
        ``truncated_pixel_data``, ``missing_required_attribute``, ``missing_transfer_syntax`` or
        ``unsupported_transfer_syntax``.
    """
    name = path.name
    if content_type == sniff.DICOM_NO_PREAMBLE:
        return quarantine(
            name,
            LANE,
            content_type,
            "dicom_missing_preamble",
            f"{name}: a bare DICOM data set without the 128-byte preamble and 'DICM' marker (not a Part 10 "
            "file); re-export it as a DICOM Part 10 file",
        )
    if content_type != sniff.DICOM:
        return quarantine(
            name,
            LANE,
            content_type,
            "not_dicom",
            f"{name}: content is {content_type}, not DICOM (no 'DICM' marker at byte 128); send the real DICOM file",
        )
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as error:
        return quarantine(
            name,
            LANE,
            content_type,
            "truncated_file",
            f"{name}: the DICOM header cannot be parsed ({type(error).__name__}); the file may be truncated or "
            "corrupt, re-send it",
        )
    transfer_syntax = _uid(dataset.file_meta.get("TransferSyntaxUID")) if dataset.file_meta is not None else ""
    if not transfer_syntax:
        return quarantine(
            name,
            LANE,
            content_type,
            "missing_transfer_syntax",
            f"{name}: file meta (0002,0010) TransferSyntaxUID is missing; re-export as a DICOM Part 10 file",
        )
    if transfer_syntax not in ALLOWED_TRANSFER_SYNTAXES:
        return quarantine(
            name,
            LANE,
            content_type,
            "unsupported_transfer_syntax",
            f"{name}: transfer syntax {transfer_syntax} ({UID(transfer_syntax).name}) is not supported; "
            "re-export as Explicit VR Little Endian, JPEG, JPEG 2000 or RLE",
            {"transfer_syntax": transfer_syntax},
        )
    truncated = _truncation(path, dataset, size)
    if truncated is not None:
        code, where = truncated
        return quarantine(name, LANE, content_type, code, f"{name}: {where}; the file is truncated, re-send it")
    values = {keyword: _text_value(dataset, tag) for keyword, tag in _REQUIRED_TAGS.items()}
    missing = [keyword for keyword, value in values.items() if not value]
    if missing:
        return quarantine(
            name,
            LANE,
            content_type,
            "missing_required_attribute",
            f"{name}: required attribute(s) {', '.join(missing)} missing or empty; fix the export at the modality "
            "or PACS and re-send",
            {"missing": missing},
        )
    details = {
        "study_instance_uid": values["StudyInstanceUID"],
        "series_instance_uid": values["SeriesInstanceUID"],
        "sop_instance_uid": values["SOPInstanceUID"],
        "sop_class_uid": values["SOPClassUID"],
        "modality": values["Modality"],
        "transfer_syntax": transfer_syntax,
        "has_pixel_data": any(tag in dataset._dict for tag in _PIXEL_TAGS),
        "bytes": size,
    }
    return promote(
        name,
        LANE,
        content_type,
        f"{name}: {details['modality']} instance with all required attributes",
        details=details,
        extracted={"patient_id": str(dataset.PatientID).strip()},
    )


def summarize_batch(verdicts: Iterable[LaneVerdict]) -> dict[str, Any]:
    """Summarises DICOM verdicts: promoted instances per study and series, plus outcome counts.

    Returns:
        ``{"studies": {study_uid: {"series": {series_uid: {"modality", "instances"}}, "instances"}},
        "totals": {"studies", "series", "instances", "promote", "quarantine", "reject"}}``.
    """
    studies: dict[str, dict[str, Any]] = {}
    outcomes = {"promote": 0, "quarantine": 0, "reject": 0}
    for verdict in verdicts:
        if verdict.lane != LANE:
            continue
        outcomes[verdict.outcome] += 1
        if not verdict.promoted:
            continue
        details: Mapping[str, Any] = verdict.details
        study = studies.setdefault(details["study_instance_uid"], {"series": {}, "instances": 0})
        series = study["series"].setdefault(
            details["series_instance_uid"], {"modality": details["modality"], "instances": 0}
        )
        series["instances"] += 1
        study["instances"] += 1
    totals = {
        "studies": len(studies),
        "series": sum(len(study["series"]) for study in studies.values()),
        "instances": sum(study["instances"] for study in studies.values()),
        **outcomes,
    }
    return {"studies": dict(sorted(studies.items())), "totals": totals}
