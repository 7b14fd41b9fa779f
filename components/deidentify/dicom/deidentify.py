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

Speed: the file is parsed once and nothing is decoded up front. One pass over the elements applies the
action looked up per (tag, VR) in a per-policy cache; elements the profile keeps (pixel data included)
stay pydicom ``RawDataElement`` bytes and are copied to the output unchanged by :mod:`.writer`; the values
it changes (UIDs, shifted dates, dummies, empties) are written as new raw bytes. Only values that need
pydicom's rules are decoded: cleaned free text (against the input's identifying words, computed on first
use), Patient ID/Name, retained private values, and tags whose VR pydicom must resolve (implicit-VR
ambiguous or unknown tags, explicit ``UN``). Output is semantically identical to decoding everything and
re-encoding with pydicom (``tests/dicom/test_writer.py``), except that the 128-byte preamble is zeroed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO
from typing import Any, AnyStr

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.hooks import hooks, raw_element_vr
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from components.deidentify.dicom import burned_in, writer
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
    scrub_source: Callable[[], frozenset[str]]
    plans: dict[tuple[int, str], _Plan]
    counts: Counter[str] = field(default_factory=Counter)
    cached_scrub_words: frozenset[str] | None = None

    @property
    def scrub_words(self) -> frozenset[str]:
        """The identifying words of the input, computed on first use (only cleaned free text needs them)."""
        if self.cached_scrub_words is None:
            self.cached_scrub_words = self.scrub_source()
        return self.cached_scrub_words


@dataclass(frozen=True)
class _Plan:
    """What the table says for one (tag, VR) under one policy; computed once and cached.

    Attributes:
        action: ``D Z X K C U`` (for unlisted UIDs, ``U`` before the standard-UID check).
        counts: Counter keys to increment (the action and ``option:<name>`` rows).
        removes_group: An ``X`` on the curve/overlay data rows (the whole repeating group goes).
        unlisted: The table does not list the tag.
    """

    action: str
    counts: tuple[str, ...]
    removes_group: bool
    unlisted: bool


_UNLISTED_COUNT = {"K": "unlisted_kept", "C": "unlisted_cleaned", "U": "unlisted_uid_remapped", "X": "unlisted_removed"}
_PLAN_CACHES: dict[tuple[frozenset[str], int], dict[tuple[int, str], _Plan]] = {}
_STANDARD_UIDS: dict[str, bool] = {}
_UID_MAP: dict[tuple[bytes, str], str] = {}
_CACHE_LIMIT = 200_000


def _plans_for(policy: DicomPolicy, table: ProfileTable) -> dict[tuple[int, str], _Plan]:
    cache_key = (policy.options, id(table))
    plans = _PLAN_CACHES.get(cache_key)
    if plans is None:
        plans = _PLAN_CACHES[cache_key] = {}
    return plans


def _keyword(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    return entry[4] if entry is not None else ""


def _make_plan(table: ProfileTable, options: frozenset[str], tag: int, vr: str) -> _Plan:
    keyword = _keyword(tag)
    row = table.lookup(tag)
    if row is None:
        action = unlisted_action(keyword, vr)
        return _Plan(action, (), False, True)
    action = resolve_action(row, options, keyword)
    basic = row.basic if "/" not in row.basic else action
    counts = [action]
    if action != basic:
        counts.extend(f"option:{option}" for option in options if option in row.options)
    removes_group = action == "X" and row.id in ("50xxxxxx", "60xx3000")
    return _Plan(action, tuple(counts), removes_group, False)


def _plan(ctx: _Context, tag: int, vr: str) -> _Plan:
    plan = ctx.plans.get((tag, vr))
    if plan is None:
        plan = ctx.plans[(tag, vr)] = _make_plan(ctx.table, ctx.policy.options, tag, vr)
    return plan


def _is_standard_uid(value: str) -> bool:
    known = _STANDARD_UIDS.get(value)
    if known is None:
        if len(_STANDARD_UIDS) > _CACHE_LIMIT:
            _STANDARD_UIDS.clear()
        known = _STANDARD_UIDS[value] = UID(value).name != value
    return known


def _pseudonymous_uid(key: bytes, value: str) -> str:
    mapped = _UID_MAP.get((key, value))
    if mapped is None:
        if len(_UID_MAP) > _CACHE_LIMIT:
            _UID_MAP.clear()
        mapped = _UID_MAP[(key, value)] = pseudonymous_uid(key, value)
    return mapped


def _remap_uid(ctx: _Context, value: str) -> str:
    if not value or _is_standard_uid(value):
        return value
    ctx.counts["uids_remapped"] += 1
    return _pseudonymous_uid(ctx.key, value)


def _values(elem: DataElement) -> list[Any]:
    return _value_list(elem.value)


def _value_list(value: Any) -> list[Any]:
    """The values of an element value (``[]`` when empty, one item unless it is multi-valued)."""
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


# --------------------------------------------------------------------------- raw (undecoded) elements
#
# Elements the profile keeps stay pydicom RawDataElements (never decoded, written back byte for byte);
# values the profile changes are written as new raw bytes. Only values whose text matters beyond ASCII
# (cleaned free text, Patient ID/Name, retained private values) or whose VR needs pydicom's rules
# (implicit-VR ambiguous or unknown tags, explicit UN) are decoded into DataElements.

_RAW_VRS = STRING_VRS | NUMERIC_VRS | (BINARY_VRS - {"UN"}) | {"AT"}
_ZERO_BYTES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "UV": 8, "SV": 8}


def _raw_vr(elem: RawDataElement) -> str | None:
    """The VR pydicom would give a raw public element, or ``None`` when pydicom's own rules are needed."""
    vr = elem.VR
    if vr is None:
        entry = DicomDictionary.get(elem.tag)
        vr = entry[0] if entry is not None else None
    return vr if vr in _RAW_VRS else None


def _raw_strings(elem: RawDataElement) -> list[str]:
    """The values of an ASCII-valued raw element, as pydicom decodes them (``[]`` when empty)."""
    text = (elem.value or b"").decode("latin-1").rstrip(" \x00")
    return text.split("\\") if text else []


def _set_raw(ds: Dataset, elem: RawDataElement, vr: str, data: bytes) -> None:
    ds._dict[elem.tag] = elem._replace(VR=vr, length=len(data), value=data)


def _set_raw_strings(ds: Dataset, elem: RawDataElement, vr: str, values: list[str]) -> None:
    data = "\\".join(values).encode("latin-1")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    _set_raw(ds, elem, vr, data)


def _raw_uids(elem: RawDataElement) -> list[str]:
    return [value.strip() for value in _raw_strings(elem)]


def _raw_dummy(ctx: _Context, ds: Dataset, elem: RawDataElement, vr: str) -> bool:
    """Writes the dummy value of :func:`_dummy`; False when the VR needs the DataElement path."""
    if vr == "UI":
        values = [_remap_uid(ctx, value) for value in _raw_uids(elem)]
        _set_raw_strings(ds, elem, vr, values or [_pseudonymous_uid(ctx.key, "dummy")])
    elif vr in NUMERIC_VRS:
        _set_raw(ds, elem, vr, b"\x00" * _ZERO_BYTES[vr])
    elif vr in BINARY_VRS:
        _set_raw(ds, elem, vr, b"\x00\x00")
    elif vr in STRING_VRS:
        _set_raw_strings(ds, elem, vr, [DUMMY_TEXT if vr == "PN" else DUMMY_BY_VR.get(vr, DUMMY_TEXT)])
    else:
        return False
    return True


def _raw_temporal(ctx: _Context, ds: Dataset, elem: RawDataElement, vr: str) -> None:
    """The ``C`` action on a raw DA/DT/TM element (see :func:`_shift_temporal`)."""
    if vr == "TM" and "retain_long_modified_dates" in ctx.policy.options:
        return
    if "retain_long_modified_dates" in ctx.policy.options:
        shifter = shift_date if vr == "DA" else shift_datetime
        shifted = [shifter(value, ctx.link.offset_days) for value in _raw_strings(elem)]
        if not any(value is None for value in shifted):
            _set_raw_strings(ds, elem, vr, [value for value in shifted if value is not None])
            ctx.counts["dates_shifted"] += len(shifted)
            return
    del ds._dict[elem.tag]
    ctx.counts["dates_removed"] += 1


def _raw_ages(ctx: _Context, ds: Dataset, elem: RawDataElement, vr: str) -> None:
    before = _raw_strings(elem)
    capped = [_cap_age(value) for value in before]
    changed = sum(new != old.strip() for new, old in zip(capped, before, strict=True))
    if changed:
        _set_raw_strings(ds, elem, vr, capped)
    ctx.counts["ages_capped"] += changed


def _apply_raw(ctx: _Context, ds: Dataset, elem: RawDataElement, vr: str, action: str) -> bool:
    """Applies an action to a raw element; False when it needs the DataElement path (:func:`_apply`)."""
    if action == "X":
        del ds._dict[elem.tag]
    elif action == "K":
        if vr == "AS":
            _raw_ages(ctx, ds, elem, vr)
    elif action == "Z":
        _set_raw(ds, elem, vr, b"")
    elif action == "D" or (action == "U" and vr != "UI"):
        return _raw_dummy(ctx, ds, elem, vr)
    elif action == "U":
        _set_raw_strings(ds, elem, vr, [_remap_uid(ctx, value) for value in _raw_uids(elem)])
    elif vr in ("DA", "DT", "TM"):  # C
        _raw_temporal(ctx, ds, elem, vr)
    elif vr == "UI":
        _set_raw_strings(ds, elem, vr, [_remap_uid(ctx, value) for value in _raw_uids(elem)])
    elif vr == "AS":
        _set_raw_strings(ds, elem, vr, [_cap_age(value) for value in _raw_strings(elem)])
    elif vr in BINARY_VRS:
        del ds._dict[elem.tag]
        ctx.counts["C_removed_unverifiable"] += 1
    elif vr in TEXT_VRS:
        return False  # cleaned free text: decoded with the character set
    return True


# --------------------------------------------------------------------------- DataElement path


def _dummy(ctx: _Context, elem: DataElement) -> None:
    vr = elem.VR
    if vr == "UI":
        _set_values(elem, [_remap_uid(ctx, str(v)) for v in _values(elem)] or [_pseudonymous_uid(ctx.key, "dummy")])
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


def _private(ctx: _Context, ds: Dataset, tag: BaseTag) -> None:
    keep = False
    element = tag & 0xFFFF
    if "retain_safe_private" in ctx.policy.options and element >= 0x1000:
        group = tag >> 16
        creator_elem = ds.get((group, element >> 8))
        creator = str(creator_elem.value).strip() if creator_elem is not None else ""
        if (creator, group, element & 0xFF) in SAFE_PRIVATE:
            elem = ds[tag]
            values = [v.decode("latin-1") if isinstance(v, bytes) else v for v in _values(elem)]
            keep = elem.VR in SAFE_UNLISTED_VRS or all(_NUMERIC_TEXT.match(str(v)) for v in values)
    if keep:
        ctx.counts["private_retained"] += 1
    else:
        del ds._dict[tag]
        ctx.counts["private_removed"] += 1


def _drop_orphan_private_creators(ds: Dataset) -> None:
    tags = [int(tag) for tag in ds._dict]
    used = {(tag >> 16, (tag & 0xFFFF) >> 8) for tag in tags if tag >> 16 & 1 and tag & 0xFFFF >= 0x1000}
    for tag in tags:
        if tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF and (tag >> 16, tag & 0xFFFF) not in used:
            del ds._dict[tag]  # type: ignore[arg-type]


def _process(ctx: _Context, ds: Dataset) -> None:
    """Applies the profile to every element of ``ds`` (one pass; sequences recursively)."""
    removed_groups: set[int] = set()
    elements = ds._dict
    for tag in list(elements):
        elem = elements.get(tag)
        if elem is None:
            continue
        tag_int = int(tag)
        group, element = tag_int >> 16, tag_int & 0xFFFF
        if group & 1:
            if 0x0010 <= element <= 0x00FF:
                continue  # private creators: kept only while a retained element uses them (below)
            _private(ctx, ds, tag)
            continue
        if element == 0:
            del elements[tag]  # group length, deprecated and stale after editing
            continue
        if tag_int == PATIENT_ID:
            elem = ds[tag]
            mrn = str(elem.value or "")
            elem.value = ctx.link.pseudonym if mrn == ctx.mrn else link_patient(ctx.key, mrn, {}).pseudonym
            ctx.counts["D"] += 1
            continue
        if tag_int == PATIENT_NAME:
            ds[tag].value = "ANON^" + ctx.link.pseudonym[:16].upper()
            ctx.counts["D"] += 1
            continue
        vr = _raw_vr(elem) if type(elem) is RawDataElement else None
        if vr is None:
            elem = ds[tag]  # decoded with pydicom's VR rules
            vr = elem.VR
        plan = _plan(ctx, tag_int, vr)
        action = plan.action
        if plan.unlisted:
            if action == "U":
                values = _raw_uids(elem) if isinstance(elem, RawDataElement) else [str(v) for v in _values(elem)]
                if all(_is_standard_uid(value) for value in values):
                    action = "K"
            ctx.counts[_UNLISTED_COUNT[action]] += 1
        else:
            for name in plan.counts:
                ctx.counts[name] += 1
            if plan.removes_group:
                removed_groups.add(group)
        if type(elem) is RawDataElement and _apply_raw(ctx, ds, elem, vr, action):
            continue
        _apply(ctx, ds, ds[tag], action)
    if removed_groups:
        for tag in list(elements):
            if tag >> 16 in removed_groups:
                del elements[tag]
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


def _marks(policy: DicomPolicy, table: ProfileTable, pixels_cleaned: bool) -> Dataset:
    """The elements that record the de-identification (PS3.15 E.1.1 and CID 7050)."""
    marks = Dataset()
    codes = [CODE_BASIC]
    if pixels_cleaned:
        codes.append(CODE_CLEAN_PIXELS)
    codes.extend(OPTION_CODES[option] for option in sorted(policy.options) if option in OPTION_CODES)
    marks.PatientIdentityRemoved = "YES"
    options = ",".join(sorted(policy.options)) or "none"
    method = f"clinflow {policy.version}; PS3.15 {table.revision} Basic Profile; options {options}"
    marks.DeidentificationMethod = method[:64]
    marks.DeidentificationMethodCodeSequence = Sequence([_code_item(code) for code in codes])
    if "retain_long_modified_dates" in policy.options:
        marks.LongitudinalTemporalInformationModified = "MODIFIED"
    elif "retain_long_full_dates" in policy.options:
        marks.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        marks.LongitudinalTemporalInformationModified = "REMOVED"
    return marks


_RAW_MARKS: dict[tuple[frozenset[str], str, str, bool, bool], list[RawDataElement]] = {}


def _mark_deidentified(ds: Dataset, policy: DicomPolicy, table: ProfileTable, pixels_cleaned: bool) -> None:
    implicit, little_endian = ds.original_encoding
    if implicit is None or not little_endian:
        for elem in _marks(policy, table, pixels_cleaned):
            ds[elem.tag] = elem
        return
    cache_key = (policy.options, policy.version, table.revision, pixels_cleaned, implicit)
    raws = _RAW_MARKS.get(cache_key)
    if raws is None:  # encoded once per policy and encoding, then copied into every file as raw bytes
        raws = _RAW_MARKS[cache_key] = [
            writer.raw_element(elem, implicit) for elem in _marks(policy, table, pixels_cleaned)
        ]
    for raw in raws:
        ds._dict[raw.tag] = raw


_WORD_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")


def contains_whole_word(text: AnyStr, needle: AnyStr, word: Container[object] = _WORD_CHARS) -> bool:
    """True when ``needle`` occurs in ``text`` with no character of ``word`` glued to either side.

    Works on text and on bytes (``word`` then holds byte values); an empty needle is never found.
    """
    if not needle:
        return False
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        if (start == 0 or text[start - 1] not in word) and (end == len(text) or text[end] not in word):
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


def _deidentify_header(
    ds: Dataset,
    key: bytes,
    policy: DicomPolicy,
    crosswalk: Mapping[str, str],
    scrub_source: Callable[[], frozenset[str]] | None,
) -> tuple[PatientLink, Counter[str]]:
    table = load_table()
    mrn = str(ds.get("PatientID", "") or "").strip()
    link = link_patient(key, mrn, crosswalk)
    if scrub_source is None:
        words = _scrub_words(ds, policy, table)  # from the dataset before any change

        def scrub_source() -> frozenset[str]:
            return words

    ctx = _Context(key, policy, table, link, mrn, scrub_source, _plans_for(policy, table))
    _process(ctx, ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _finish_meta(ds, key)
    return link, ctx.counts


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
    return _deidentify_header(ds, key, policy, crosswalk, None)


def _encode(ds: Dataset) -> bytes:
    """The output file: the raw-copying writer when it applies, else pydicom's ``save_as``."""
    meta = ds.file_meta
    complete = bool(meta.get("MediaStorageSOPClassUID")) and bool(meta.get("MediaStorageSOPInstanceUID"))
    if complete:
        data = writer.write_part10(ds)
        if data is not None:
            return data
    for _ in ds.iterall():  # pydicom re-encodes: decode every raw element first (their VRs may be implicit)
        pass
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=complete)  # bare datasets without SOP UIDs are written as read
    return buffer.getvalue()


def deidentify_dicom(
    data: bytes,
    key: bytes,
    policy: DicomPolicy,
    crosswalk: Mapping[str, str],
) -> DicomResult:
    """De-identifies one DICOM file; never raises for bad input.

    Elements the profile keeps (pixel data included) are copied byte for byte; only the values the
    profile changes are decoded and re-encoded (see :mod:`.writer`).

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

    def scrub_source() -> frozenset[str]:  # the input's identifying words, read again only when needed
        return _scrub_words(_read(data), policy, load_table())

    try:
        mrn = str(ds.get("PatientID", "") or "").strip()
        link = link_patient(key, mrn, crosswalk)
        result.patient_link, result.date_offset_days = link.status, link.offset_days
        reason, masked = _burned_in(ds, policy, result)
        if reason:
            result.outcome, result.reason_code, result.reason = "quarantined", reason, REASONS[reason]
            return result
        link, counts = _deidentify_header(ds, key, policy, crosswalk, scrub_source)
        _mark_deidentified(ds, policy, load_table(), masked)
        result.action_counts = counts
        result.study_uid = str(ds.get("StudyInstanceUID", ""))
        result.series_uid = str(ds.get("SeriesInstanceUID", ""))
        result.instance_uid = str(ds.get("SOPInstanceUID", ""))
        result.output = _encode(ds)
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
#
# The lane's self-check lives in :mod:`.residual` (pydicom reads the input and the output); the rules
# for the identifying values of an input are here, because cleaned free text uses them too
# (:func:`_scrub_words`).


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


def _strings_of(value: Any) -> list[str]:
    """The text of each value of an element's (converted) value: printable UTF-8 bytes, or ``str``."""
    out = []
    for item in _value_list(value):
        if isinstance(item, bytes):
            try:
                text = item.decode("utf-8").strip("\x00 ")
            except UnicodeDecodeError:
                continue
            if text.isprintable():
                out.append(text)
        elif not isinstance(item, Dataset):
            out.append(str(item).strip())
    return out


def _value_strings(elem: DataElement) -> list[str]:
    return _strings_of(elem.value)


_ASCII_DECODED_VRS = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})


def _fast_strings(raw: RawDataElement) -> list[str] | None:
    """:func:`_value_strings` of a raw element whose VR pydicom decodes as plain ASCII, without decoding it.

    pydicom decodes these VRs (with ``datetime_conversion`` off) as Latin-1 text without trailing
    spaces/NULs, split at backslashes. ``None`` for every other element (decode it with pydicom).
    """
    vr = _raw_vr(raw)
    if vr not in _ASCII_DECODED_VRS or pydicom.config.datetime_conversion:
        return None
    return [value.strip() for value in _raw_strings(raw)]


def _worth_scanning(value: str, category: str) -> bool:
    if category == "uid":
        return bool(value) and not _is_standard_uid(value)
    return len(value) >= 4 and value.strip("0 .-^") != "" and value.upper() != DUMMY_TEXT


def is_private_creator(tag: int) -> bool:
    """Whether a tag is a private creator element (odd group, element 0x0010-0x00FF)."""
    return bool(tag >> 16 & 1) and 0x0010 <= tag & 0xFFFF <= 0x00FF


class IdentifyingValues:
    """Collects the identifying values of an input, one element at a time (see :func:`dicom_identifying_values`).

    The rules live here once; :func:`dicom_identifying_values` feeds it the elements of a pydicom dataset.
    """

    def __init__(self, policy: DicomPolicy, table: ProfileTable) -> None:
        self._policy = policy
        self._table = table
        self._plans = _plans_for(policy, table)
        self._found: dict[tuple[str, str], None] = {}
        self._kept: set[str] = set()

    def add(self, category: str, value: str) -> None:
        """Records a value (and a name's components) when it is worth scanning for."""
        if _worth_scanning(value, category):
            self._found[(category, value)] = None
        if category == "name":
            for part in re.split(r"[\^=]", value):
                if len(part.strip()) >= 4 and part.strip().upper() != DUMMY_TEXT:
                    self._found[("name_part", part.strip())] = None

    def meta_element(self, tag: int, vr: str, text: str) -> None:
        """A file meta element: its non-standard UIDs and AE titles (``text`` is ``str(value)``)."""
        if tag == 0x00020012:
            return  # Implementation Class UID names the writing software, not the patient
        if vr == "UI":
            self.add("uid", text)
        elif vr == "AE":
            self.add("text", text.strip())

    # VRs of undecoded public elements that cannot hold a value (not text, or times and ages)
    SKIPPED_RAW_VRS = frozenset(vr for vr in _RAW_VRS if vr in ("TM", "AS") or vr not in STRING_VRS)

    @classmethod
    def skips(cls, tag: int, raw_vr: str | None) -> bool:
        """Whether an undecoded public element cannot hold a value (``raw_vr`` from :func:`_raw_vr`)."""
        return not tag >> 16 & 1 and raw_vr in cls.SKIPPED_RAW_VRS

    def element(self, tag: int, vr: str, strings: list[str]) -> None:
        """A dataset element (not a sequence, not a private creator) with its value strings."""
        if tag >> 16 & 1:
            for value in strings:
                if not _NUMERIC_TEXT.match(value):
                    self.add("private", value)
            return
        if vr in ("TM", "AS") or vr not in STRING_VRS:
            return
        plan = self._plans.get((tag, vr)) or self._plans.setdefault(
            (tag, vr), _make_plan(self._table, self._policy.options, tag, vr)
        )
        action = "D" if tag in (PATIENT_ID, PATIENT_NAME) else plan.action
        if action == "K" or (action == "C" and vr not in ("DA", "DT", "UI")):
            self._kept.update(value.casefold() for value in strings)
            return
        category = _category(vr, _keyword(tag))
        for value in strings:
            self.add(category, value)

    def values(self) -> list[tuple[str, str]]:
        """The values found, without those the profile keeps elsewhere in a public attribute."""
        kept_folded = "\n".join(self._kept).casefold()
        return [
            (category, value)
            for category, value in self._found
            if not contains_whole_word(kept_folded, value.casefold())
        ]


_SPECIFIC_CHARACTER_SET = 0x00080005


def raw_value_strings(dataset: Dataset, raw: RawDataElement) -> list[str] | None:
    """:func:`_value_strings` of ``dataset[raw.tag]`` for a raw element of a plain VR, without a ``DataElement``.

    An element read (not deferred) with a VR that needs no resolving (not a sequence, not ``UN``, not
    ambiguous or unknown) gets its value from pydicom's ``raw_element_value`` hook, called as
    ``Dataset.__getitem__`` calls it (same VR, character set and dataset); the dataset is left as read.

    Args:
        dataset: The dataset pydicom read ``raw`` into.
        raw: One of its raw elements.

    Returns:
        The value strings, or ``None`` when pydicom's element conversion must decide (``dataset[tag]``).
    """
    vr = _raw_vr(raw)
    if vr is None or raw.value is None or raw.tag == _SPECIFIC_CHARACTER_SET or not _default_vr_hooks():
        return None
    data: dict[str, Any] = {"VR": vr}
    encoding = dataset.original_character_set or dataset._character_set
    try:
        hooks.raw_element_value(raw, data, encoding=encoding, ds=dataset, **hooks.raw_element_kwargs)
    except Exception:  # dataset[tag] raises it, or decides otherwise
        return None
    if data["VR"] != vr:  # a wrong length read as UN: dataset[tag] decides
        return None
    return _strings_of(data["value"])


def _default_vr_hooks() -> bool:
    """Whether pydicom resolves raw elements' VRs its default way (no callback replaces it)."""
    return hooks.raw_element_vr is raw_element_vr and pydicom.config.data_element_callback is None


def _walk_identifying(collector: IdentifyingValues, dataset: Dataset) -> None:
    elements = dataset._dict
    for tag in sorted(elements, key=int):
        raw = elements[tag]
        tag_int = int(tag)
        if is_private_creator(tag_int):
            continue
        strings: list[str] | None = None
        if isinstance(raw, RawDataElement):
            vr = _raw_vr(raw)
            if collector.skips(tag_int, vr):
                continue  # not a string: no need to decode it
            strings = _fast_strings(raw)
            if strings is None:
                strings = raw_value_strings(dataset, raw)
        if strings is None:
            elem = dataset[tag]
            if elem.VR == "SQ":
                for item in elem.value or []:
                    _walk_identifying(collector, item)
                continue
            vr, strings = elem.VR, _value_strings(elem)
        collector.element(tag_int, str(vr), strings)


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
    collector = IdentifyingValues(policy or DicomPolicy(), table or load_table())
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for elem in meta:
            collector.meta_element(int(elem.tag), elem.VR, str(elem.value))
    _walk_identifying(collector, ds)
    return collector.values()


def scan_dicom_output(data: bytes, values: Iterable[tuple[str, str]]) -> Counter[str]:
    """Searches a de-identified file for identifying values of its input.

    See :func:`components.deidentify.dicom.residual.scan_dicom_output` (this is the same function).

    Args:
        data: The output file.
        values: ``(category, value)`` pairs from :func:`dicom_identifying_values` of the input.

    Returns:
        Hits keyed ``<category>:<attribute keyword>`` (or ``<category>:raw_bytes``); empty means clean.
    """
    from components.deidentify.dicom import residual

    return residual.scan_dicom_output(data, values)
