"""Applies the PS3.15 Basic Application Level Confidentiality Profile (and options) to DICOM files.

Every attribute is handled by the action Table E.1-1 gives it under the enabled options
(:mod:`components.deidentify.dicom.profile` documents how compound actions and unlisted attributes
are resolved), recursively into sequences:

- ``X`` removes, ``Z`` empties, ``D`` writes a non-identifying dummy of the attribute's VR, ``K`` keeps.
- ``U`` remaps UIDs with ``pseudonymous_uid(key, uid)`` (standard well-known UIDs such as SOP Class and
  Transfer Syntax UIDs are never remapped), so the study/series/instance structure and every
  Referenced* UID stay consistent across files; the file meta MediaStorageSOPInstanceUID follows.
- ``C`` cleans: dates (DA, DT) shift by the patient's offset (times of day are kept), UIDs remap,
  free text keeps only the words that are not identifying values of the same file and not long digit
  runs, overlay/curve bitmaps (which cannot be verified) are removed.
- Patient ID becomes the keyed patient pseudonym (the linked FHIR patient's pseudonym when the MRN is in
  the crosswalk) and Patient's Name ``ANON^<first 16 pseudonym characters>``.
- Private attributes are removed, or with Retain Safe Private only ``SAFE_PRIVATE`` numeric elements stay.
- Ages (AS) kept by an option are capped at ``090Y``.
- Then ``PatientIdentityRemoved``, ``DeidentificationMethod``, ``DeidentificationMethodCodeSequence``
  (CID 7050) and, when dates shift, ``LongitudinalTemporalInformationModified = MODIFIED`` are set.

Files with pixel data go through burned-in text detection first (:mod:`.burned_in`).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from components.deidentify.dicom import burned_in
from components.deidentify.dicom.linkage import PatientLink, link_patient
from components.deidentify.dicom.policy import DicomPolicy
from components.deidentify.dicom.profile import SAFE_UNLISTED_VRS, resolve_action, unlisted_action
from components.deidentify.dicom.table import ProfileTable, load_table
from components.deidentify.keys import pseudonymous_uid

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT", "PN"})
DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, Any] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "UR": "urn:anonymized",
}
NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
AGE_CAP = "090Y"

# Retain Safe Private: (private creator, group, element low byte). Diffusion b-values and directions
# (numeric acquisition parameters, cf. PS3.15 Table E.3.10-1); only numeric values are kept.
SAFE_PRIVATE: frozenset[tuple[str, int, int]] = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0019, 0x0C),
        ("SIEMENS MR HEADER", 0x0019, 0x0D),
        ("SIEMENS MR HEADER", 0x0019, 0x0E),
        ("SIEMENS MR HEADER", 0x0019, 0x27),
        ("GEMS_PARM_01", 0x0043, 0x39),
        ("Philips Imaging DD 001", 0x2001, 0x03),
    }
)
_NUMERIC_TEXT = re.compile(r"^[\s0-9.+\-eE\\]*$")
_LONG_DIGITS = re.compile(r"\d{5,}")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# CID 7050 De-identification Method codes.
CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_PIXELS = ("113101", "Clean Pixel Data Option")
OPTION_CODES: dict[str, tuple[str, str]] = {
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}
REASONS = {
    "malformed_dicom": "the input is not a readable DICOM file",
    "deidentify_error": "the file could not be de-identified and was not written",
    "burned_in_text_detected": "burned-in text was detected in the pixels (OCR or BurnedInAnnotation)",
    "burned_in_text_unlocated": "BurnedInAnnotation is YES but OCR located no text to mask",
    "burned_in_text_remains": "OCR still found text after masking",
    "pixel_data_undecodable": "the pixel data could not be decoded for the burned-in text check",
    "ocr_timeout": "OCR exceeded its time limit",
}


@dataclass
class DicomResult:
    """The outcome of de-identifying one DICOM file (no PHI in any field).

    Attributes:
        output: The de-identified file, or ``None`` unless ``outcome == "deidentified"``.
        outcome: ``deidentified``, ``quarantined`` (burned-in text) or ``dead_letter``.
        reason_code: Machine-readable reason for quarantine/dead-letter, else ``""``.
        reason: A human sentence for the reason.
        action_counts: Counts per table action (``D Z X K C U``), ``unlisted_*``, ``private_*``,
            ``dates_shifted``, ``ages_capped``, ``uids_remapped`` and ``option:<name>`` (rows an
            enabled option changed).
        patient_link: ``linked`` or ``unlinked``.
        date_offset_days: The patient's date offset (0 when the file was not processed).
        study_uid: Pseudonymous Study Instance UID.
        series_uid: Pseudonymous Series Instance UID.
        instance_uid: Pseudonymous SOP Instance UID.
        burned_in: ``none``, ``masked`` or the detection that quarantined it (``tag``, ``ocr``, ``tag+ocr``).
        ocr_words: Number of OCR words counted as text (before masking).
    """

    output: bytes | None
    outcome: str
    reason_code: str = ""
    reason: str = ""
    action_counts: Counter[str] = field(default_factory=Counter)
    patient_link: str = "unlinked"
    date_offset_days: int = 0
    study_uid: str = ""
    series_uid: str = ""
    instance_uid: str = ""
    burned_in: str = "none"
    ocr_words: int = 0


@dataclass
class _Context:
    key: bytes
    policy: DicomPolicy
    table: ProfileTable
    link: PatientLink
    mrn: str
    scrub_words: frozenset[str]
    counts: Counter[str] = field(default_factory=Counter)


def _is_standard_uid(value: str) -> bool:
    return UID(value).name != value


def _remap_uid(ctx: _Context, value: str) -> str:
    if not value or _is_standard_uid(value):
        return value
    ctx.counts["uids_remapped"] += 1
    return pseudonymous_uid(ctx.key, value)


def _values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _set_values(elem: DataElement, values: list[Any]) -> None:
    elem.value = values[0] if len(values) == 1 else (values or "")


def shift_date(value: str, days: int) -> str | None:
    """Shifts a DICOM DA value (``YYYYMMDD``); ``None`` when it is not a full valid date."""
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        shifted = date(int(text[:4]), int(text[4:6]), int(text[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return shifted.strftime("%Y%m%d")


def shift_datetime(value: str, days: int) -> str | None:
    """Shifts the date part of a DICOM DT value, keeping time of day, fraction and UTC offset."""
    text = value.strip()
    head = shift_date(text[:8], days)
    return None if head is None else head + text[8:]


def _cap_age(value: str) -> str:
    text = value.strip()
    if len(text) == 4 and text[:3].isdigit() and text[3] == "Y" and int(text[:3]) > 89:
        return AGE_CAP
    return text


def _clean_text(ctx: _Context, value: str) -> str:
    kept = []
    for word in str(value).split():
        parts = _WORD.findall(word)
        if any(part.casefold() in ctx.scrub_words for part in parts) or _LONG_DIGITS.search(word):
            continue
        kept.append(word)
    return " ".join(kept)


def _dummy(ctx: _Context, elem: DataElement) -> None:
    vr = elem.VR
    if vr == "UI":
        _set_values(elem, [_remap_uid(ctx, str(v)) for v in _values(elem)] or [pseudonymous_uid(ctx.key, "dummy")])
    elif vr in NUMERIC_VRS:
        elem.value = 0
    elif vr in BINARY_VRS:
        elem.value = b"\x00\x00"
    elif vr == "PN":
        elem.value = DUMMY_TEXT
    else:
        elem.value = DUMMY_BY_VR.get(vr, DUMMY_TEXT)


def _zero(elem: DataElement) -> None:
    if elem.VR == "SQ":
        elem.value = Sequence()
    elif elem.VR in STRING_VRS or elem.VR in TEXT_VRS:
        elem.value = ""
    else:
        elem.value = None


def _shift_temporal(ctx: _Context, elem: DataElement) -> bool:
    """Shifts a DA/DT element in place (TM is kept); returns False when the value must go."""
    if elem.VR == "TM":
        return True
    shifter = shift_date if elem.VR == "DA" else shift_datetime
    shifted = [shifter(str(v), ctx.link.offset_days) for v in _values(elem)]
    if any(v is None for v in shifted):
        return False
    _set_values(elem, [v for v in shifted if v is not None])
    ctx.counts["dates_shifted"] += len(shifted)
    return True


def _clean(ctx: _Context, ds: Dataset, elem: DataElement) -> None:
    vr = elem.VR
    if vr == "SQ":
        for item in elem.value:
            _process(ctx, item)
    elif vr in ("DA", "DT", "TM"):
        if "retain_long_modified_dates" not in ctx.policy.options or not _shift_temporal(ctx, elem):
            del ds[elem.tag]
            ctx.counts["dates_removed"] += 1
    elif vr == "UI":
        _set_values(elem, [_remap_uid(ctx, str(v)) for v in _values(elem)])
    elif vr == "AS":
        _set_values(elem, [_cap_age(str(v)) for v in _values(elem)])
    elif vr in TEXT_VRS:
        cleaned = [_clean_text(ctx, str(v)) for v in _values(elem)]
        _set_values(elem, cleaned)
    elif vr in BINARY_VRS:
        del ds[elem.tag]
        ctx.counts["C_removed_unverifiable"] += 1


def _private(ctx: _Context, ds: Dataset, elem: DataElement) -> None:
    tag = elem.tag
    keep = False
    if "retain_safe_private" in ctx.policy.options and tag.element >= 0x1000:
        creator_elem = ds.get((tag.group, tag.element >> 8))
        creator = str(creator_elem.value).strip() if creator_elem is not None else ""
        if (creator, tag.group, tag.element & 0xFF) in SAFE_PRIVATE:
            values = [v.decode("latin-1") if isinstance(v, bytes) else v for v in _values(elem)]
            keep = elem.VR in SAFE_UNLISTED_VRS or all(_NUMERIC_TEXT.match(str(v)) for v in values)
    if keep:
        ctx.counts["private_retained"] += 1
    else:
        del ds[tag]
        ctx.counts["private_removed"] += 1


def _drop_orphan_private_creators(ds: Dataset) -> None:
    tags = [elem.tag for elem in ds]
    used = {(tag.group, tag.element >> 8) for tag in tags if tag.is_private and tag.element >= 0x1000}
    for tag in list(ds.keys()):
        if tag.is_private and 0x0010 <= tag.element <= 0x00FF and (tag.group, tag.element) not in used:
            del ds[tag]


def _process(ctx: _Context, ds: Dataset) -> None:
    removed_groups: set[int] = set()
    for tag in list(ds.keys()):
        if tag not in ds:
            continue
        elem = ds[tag]
        if tag.is_private:
            if 0x0010 <= tag.element <= 0x00FF:
                continue  # private creators: kept only while a retained element uses them (below)
            _private(ctx, ds, elem)
            continue
        if tag.element == 0:
            del ds[tag]  # group length, deprecated and stale after editing
            continue
        if tag == PATIENT_ID:
            mrn = str(elem.value or "")
            elem.value = ctx.link.pseudonym if mrn == ctx.mrn else link_patient(ctx.key, mrn, {}).pseudonym
            ctx.counts["D"] += 1
            continue
        if tag == PATIENT_NAME:
            elem.value = "ANON^" + ctx.link.pseudonym[:16].upper()
            ctx.counts["D"] += 1
            continue
        keyword = elem.keyword
        row = ctx.table.lookup(int(tag))
        if row is None:
            action = unlisted_action(keyword, elem.VR)
            if action == "U" and all(_is_standard_uid(str(v)) for v in _values(elem)):
                action = "K"
            ctx.counts[f"unlisted_{ {'K': 'kept', 'C': 'cleaned', 'U': 'uid_remapped', 'X': 'removed'}[action] }"] += 1
        else:
            action = resolve_action(row, ctx.policy.options, keyword)
            basic = row.basic if "/" not in row.basic else action
            if action != basic:
                for option in ctx.policy.options:
                    if option in row.options:
                        ctx.counts[f"option:{option}"] += 1
            ctx.counts[action] += 1
            if action == "X" and row.id in ("50xxxxxx", "60xx3000"):
                removed_groups.add(tag.group)
        _apply(ctx, ds, elem, action)
    for tag in list(ds.keys()):
        if tag.group in removed_groups:
            del ds[tag]
            ctx.counts["graphics_group_removed"] += 1
    _drop_orphan_private_creators(ds)


def _apply(ctx: _Context, ds: Dataset, elem: DataElement, action: str) -> None:
    if action == "X":
        del ds[elem.tag]
    elif action == "Z":
        _zero(elem)
    elif action == "D":
        if elem.VR == "SQ":
            for item in elem.value:
                _process(ctx, item)
        else:
            _dummy(ctx, elem)
    elif action == "U":
        if elem.VR == "SQ":
            for item in elem.value:
                _process(ctx, item)
        elif elem.VR == "UI":
            _set_values(elem, [_remap_uid(ctx, str(v)) for v in _values(elem)])
        else:
            _dummy(ctx, elem)
    elif action == "C":
        _clean(ctx, ds, elem)
    elif elem.VR == "SQ":  # K: keep, but walk the items
        for item in elem.value:
            _process(ctx, item)
    elif elem.VR == "AS":
        before = _values(elem)
        _set_values(elem, [_cap_age(str(v)) for v in before])
        ctx.counts["ages_capped"] += sum(_cap_age(str(v)) != str(v).strip() for v in before)


def _code_item(code: tuple[str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue = code[0]
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = code[1]
    return item


def _mark_deidentified(ds: Dataset, policy: DicomPolicy, table: ProfileTable, pixels_cleaned: bool) -> None:
    codes = [CODE_BASIC]
    if pixels_cleaned:
        codes.append(CODE_CLEAN_PIXELS)
    codes.extend(OPTION_CODES[option] for option in sorted(policy.options) if option in OPTION_CODES)
    ds.PatientIdentityRemoved = "YES"
    options = ",".join(sorted(policy.options)) or "none"
    method = f"clinflow {policy.version}; PS3.15 {table.revision} Basic Profile; options {options}"
    ds.DeidentificationMethod = method[:64]
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(code) for code in codes])
    if "retain_long_modified_dates" in policy.options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif "retain_long_full_dates" in policy.options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


_WORD_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")


def _contains_whole_word(text: str, needle: str) -> bool:
    """True when ``needle`` occurs in ``text`` with no ASCII letter or digit glued to either side."""
    if not needle:
        return False
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        if (start == 0 or text[start - 1] not in _WORD_CHARS) and (end == len(text) or text[end] not in _WORD_CHARS):
            return True
        start = text.find(needle, start + 1)
    return False


def _scrub_words(ds: Dataset, policy: DicomPolicy, table: ProfileTable) -> frozenset[str]:
    words: set[str] = set()
    for category, value in dicom_identifying_values(ds, policy, table):
        if category in ("uid", "date"):
            continue
        words.update(part.casefold() for part in _WORD.findall(value) if len(part) >= 3)
    return frozenset(words)


def _read(data: bytes) -> Dataset:
    try:
        ds = pydicom.dcmread(BytesIO(data))
    except InvalidDicomError:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        if len(ds) == 0 or "SOPClassUID" not in ds:
            raise
    for _ in ds.iterall():  # force every deferred/raw element to parse now
        pass
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in meta:
        raise InvalidDicomError("no SOP Class UID")
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _burned_in(ds: Dataset, policy: DicomPolicy, result: DicomResult) -> tuple[str, bool]:
    """Runs the burned-in check; returns (quarantine reason or '', pixels masked)."""
    if not any(tag in ds for tag in PIXEL_DATA_TAGS):
        return "", False
    flagged = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    finding = burned_in.OcrFinding()
    frames: np.ndarray | None = None
    if policy.ocr:
        try:
            frames = burned_in.pixel_frames(ds)
            finding = burned_in.detect_text(
                frames, policy.ocr_min_chars, policy.ocr_min_confidence, policy.ocr_timeout_seconds
            )
        except burned_in.PixelDecodeError:
            return "pixel_data_undecodable", False
        except burned_in.OcrTimeoutError:
            return "ocr_timeout", False
    result.ocr_words = len(finding.boxes)
    if not flagged and not finding.has_text:
        return "", False
    result.burned_in = "tag+ocr" if flagged and finding.has_text else ("tag" if flagged else "ocr")
    if policy.burned_in == "quarantine":
        return "burned_in_text_detected", False
    if frames is None or not finding.has_text:
        return "burned_in_text_unlocated", False
    masked = burned_in.mask_boxes(frames, finding.boxes)
    try:
        recheck = burned_in.detect_text(
            masked, policy.ocr_min_chars, policy.ocr_min_confidence, policy.ocr_timeout_seconds
        )
    except burned_in.OcrTimeoutError:
        return "ocr_timeout", False
    if recheck.has_text:
        return "burned_in_text_remains", False
    _write_pixels(ds, masked)
    result.burned_in = "masked"
    return "", True


def _write_pixels(ds: Dataset, frames: np.ndarray) -> None:
    array = frames if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else frames[0]
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    elif str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        ds.PhotometricInterpretation = "MONOCHROME2"
    array = np.ascontiguousarray(array)
    ds.BitsAllocated = array.dtype.itemsize * 8
    ds.BitsStored = min(int(getattr(ds, "BitsStored", ds.BitsAllocated)), ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if array.dtype.kind == "i" else 0
    ds.PixelData = array.tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BurnedInAnnotation = "NO"
    for tag in ("LossyImageCompressionRatio",):
        if tag in ds:
            del ds[tag]


def _finish_meta(ds: Dataset, key: bytes) -> None:
    meta = ds.file_meta
    for tag in list(meta.keys()):
        if tag.element in (0x0016, 0x0017, 0x0018, 0x0100, 0x0102) or tag.element == 0:
            del meta[tag]
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    elif meta.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = UID(pseudonymous_uid(key, str(meta.MediaStorageSOPInstanceUID)))
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CLINFLOW_DEID"


def deidentify_dataset(
    ds: Dataset, key: bytes, policy: DicomPolicy, crosswalk: Mapping[str, str]
) -> tuple[PatientLink, Counter[str]]:
    """De-identifies the header of a dataset in place (no pixel check; see :func:`deidentify_dicom`).

    Args:
        ds: The dataset (with ``file_meta``); modified in place.
        key: The HMAC key.
        policy: The DICOM policy.
        crosswalk: MRN -> FHIR Patient logical id.

    Returns:
        The patient link and the action counts.
    """
    table = load_table()
    mrn = str(ds.get("PatientID", "") or "").strip()
    link = link_patient(key, mrn, crosswalk)
    ctx = _Context(key, policy, table, link, mrn, _scrub_words(ds, policy, table))
    _process(ctx, ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _finish_meta(ds, key)
    return link, ctx.counts


def deidentify_dicom(
    data: bytes,
    key: bytes,
    policy: DicomPolicy,
    crosswalk: Mapping[str, str],
) -> DicomResult:
    """De-identifies one DICOM file; never raises for bad input.

    Args:
        data: The file bytes (Part 10, or a bare dataset with a SOP Class UID).
        key: The HMAC key.
        policy: The DICOM policy.
        crosswalk: MRN (the DICOM PatientID) -> FHIR Patient logical id.

    Returns:
        The result: ``deidentified`` with the output bytes, ``quarantined`` (burned-in text; no
        pixels written) or ``dead_letter`` (malformed or failed) with a reason code.
    """
    try:
        ds = _read(data)
    except Exception:
        return DicomResult(None, "dead_letter", "malformed_dicom", REASONS["malformed_dicom"])
    result = DicomResult(None, "deidentified")
    try:
        mrn = str(ds.get("PatientID", "") or "").strip()
        link = link_patient(key, mrn, crosswalk)
        result.patient_link, result.date_offset_days = link.status, link.offset_days
        reason, masked = _burned_in(ds, policy, result)
        if reason:
            result.outcome, result.reason_code, result.reason = "quarantined", reason, REASONS[reason]
            return result
        link, counts = deidentify_dataset(ds, key, policy, crosswalk)
        _mark_deidentified(ds, policy, load_table(), masked)
        result.action_counts = counts
        result.study_uid = str(ds.get("StudyInstanceUID", ""))
        result.series_uid = str(ds.get("SeriesInstanceUID", ""))
        result.instance_uid = str(ds.get("SOPInstanceUID", ""))
        buffer = BytesIO()
        complete = bool(ds.file_meta.get("MediaStorageSOPClassUID")) and bool(
            ds.file_meta.get("MediaStorageSOPInstanceUID")
        )
        ds.save_as(buffer, enforce_file_format=complete)  # bare datasets without SOP UIDs are written as read
        result.output = buffer.getvalue()
    except Exception as error:  # a file must never crash the stage; the class name carries no PHI
        return DicomResult(
            None,
            "dead_letter",
            "deidentify_error",
            f"{REASONS['deidentify_error']} ({type(error).__name__})",
            patient_link=result.patient_link,
            date_offset_days=result.date_offset_days,
        )
    return result


# --------------------------------------------------------------------------- residual-PHI scan


def _category(vr: str, keyword: str) -> str:
    if vr == "PN":
        return "name"
    if vr in ("DA", "DT"):
        return "date"
    if vr == "UI":
        return "uid"
    if "ID" in keyword or "Number" in keyword:
        return "identifier"
    return "text"


def _value_strings(elem: DataElement) -> list[str]:
    out = []
    for value in _values(elem):
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8").strip("\x00 ")
            except UnicodeDecodeError:
                continue
            if text.isprintable():
                out.append(text)
        elif not isinstance(value, Dataset):
            out.append(str(value).strip())
    return out


def _worth_scanning(value: str, category: str) -> bool:
    if category == "uid":
        return bool(value) and not _is_standard_uid(value)
    return len(value) >= 4 and value.strip("0 .-^") != "" and value.upper() != DUMMY_TEXT


def dicom_identifying_values(
    ds: Dataset, policy: DicomPolicy | None = None, table: ProfileTable | None = None
) -> list[tuple[str, str]]:
    """Lists the identifying values of an input dataset, for the residual-PHI scan.

    Included: values of attributes whose resolved action under ``policy`` is not ``K`` (for ``C``, only
    dates and UIDs, since cleaned text keeps its non-identifying words), unlisted free-text and UID
    values the fail-closed rule removes or remaps, every private string value, non-standard UIDs in
    the file meta, and the name components (4+ characters) of person names. Times (TM) and ages are
    not included. Values shorter than 4 characters are skipped (too common to scan for).

    Args:
        ds: The input dataset.
        policy: The policy (defaults to :class:`DicomPolicy`'s defaults).
        table: The profile table (the shipped one by default).

    Returns:
        ``(category, value)`` pairs, deduplicated, in first-seen order; categories are ``name``,
        ``name_part``, ``identifier``, ``date``, ``uid``, ``text`` and ``private``.
    """
    policy = policy or DicomPolicy()
    table = table or load_table()
    found: dict[tuple[str, str], None] = {}
    kept_values: set[str] = set()

    def add(category: str, value: str) -> None:
        if _worth_scanning(value, category):
            found[(category, value)] = None
        if category == "name":
            for part in re.split(r"[\^=]", value):
                if len(part.strip()) >= 4 and part.strip().upper() != DUMMY_TEXT:
                    found[("name_part", part.strip())] = None

    def walk(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
                continue
            if elem.tag.is_private:
                if 0x0010 <= elem.tag.element <= 0x00FF:
                    continue
                for value in _value_strings(elem):
                    if not _NUMERIC_TEXT.match(value):
                        add("private", value)
                continue
            if elem.VR in ("TM", "AS") or elem.VR not in STRING_VRS:
                continue
            row = table.lookup(int(elem.tag))
            if row is None:
                action = unlisted_action(elem.keyword, elem.VR)
            else:
                action = resolve_action(row, policy.options, elem.keyword)
            if elem.tag in (PATIENT_ID, PATIENT_NAME):
                action = "D"
            if action == "K" or (action == "C" and elem.VR not in ("DA", "DT", "UI")):
                kept_values.update(value.casefold() for value in _value_strings(elem))
                continue
            category = _category(elem.VR, elem.keyword)
            for value in _value_strings(elem):
                add(category, value)

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for elem in meta:
            if elem.tag == 0x00020012:
                continue  # Implementation Class UID names the writing software, not the patient
            if elem.VR == "UI":
                add("uid", str(elem.value))
            elif elem.VR == "AE":
                add("text", str(elem.value).strip())
    walk(ds)
    # A value equal to one the profile keeps in a public attribute (a body part, a coding scheme) is not PHI.
    kept_text = "\n".join(kept_values)
    kept_folded = kept_text.casefold()
    return [(category, value) for category, value in found if not _contains_whole_word(kept_folded, value.casefold())]


def _output_strings(ds: Dataset) -> Iterable[tuple[str, str]]:
    meta = getattr(ds, "file_meta", None)
    elements = list(meta) if meta is not None else []
    for elem in elements:
        for value in _value_strings(elem):
            yield elem.keyword or str(elem.tag), value
    for elem in ds.iterall():
        if elem.VR == "SQ" or elem.tag in PIXEL_DATA_TAGS:
            continue
        for value in _value_strings(elem):
            yield elem.keyword or f"private{elem.tag}", value


def scan_dicom_output(data: bytes, values: Iterable[tuple[str, str]]) -> Counter[str]:
    """Searches a de-identified file for identifying values of its input.

    Every element is searched (file meta, sequences at any depth, private elements; case-insensitive
    substring match of the decoded value), and then the raw bytes (UTF-8 and Latin-1 encodings) for
    values no element matched.

    Args:
        data: The output file.
        values: ``(category, value)`` pairs from :func:`dicom_identifying_values` of the input.

    Returns:
        Hits keyed ``<category>:<attribute keyword>`` (or ``<category>:raw_bytes``); empty means clean.
    """
    hits: Counter[str] = Counter()
    pairs = list(values)
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        strings = [(where, text.casefold()) for where, text in _output_strings(ds)]
    except Exception:
        strings = []
    for category, value in pairs:
        edge = "0-9a-z." if category == "uid" else "0-9a-z"
        needle = re.compile(f"(?<![{edge}])" + re.escape(value.casefold()) + f"(?![{edge}])")
        matched = False
        for where, text in strings:
            if needle.search(text):
                hits[f"{category}:{where}"] += 1
                matched = True
        if matched:
            continue
        encodings = {value.encode("utf-8")}
        with contextlib.suppress(UnicodeEncodeError):
            encodings.add(value.encode("latin-1"))
        raw_edge = edge.replace("a-z", "A-Za-z").encode()
        patterns = [
            re.compile(b"(?<![" + raw_edge + b"])" + re.escape(enc) + b"(?![" + raw_edge + b"])", re.I)
            for enc in encodings
        ]
        if any(pattern.search(data) for pattern in patterns):
            hits[f"{category}:raw_bytes"] += 1
    return hits
