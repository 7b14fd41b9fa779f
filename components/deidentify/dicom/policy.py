"""The ``dicom:`` section of the de-identification policy YAML, parsed into a typed :class:`DicomPolicy`.

Example::

    dicom:
      options: [retain_long_modified_dates, clean_descriptors]
      private_tags: remove        # or retain_safe
      burned_in: quarantine       # or mask
      date_mode: shift            # or remove
      ocr: true                   # OCR the pixels for burned-in text (never trust the tag alone)

``date_mode: shift`` implies the Retain Longitudinal Temporal Information with Modified Dates option
and ``private_tags: retain_safe`` implies Retain Safe Private; contradictory settings are user errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clinflow.errors import UserError

DICOM_POLICY_VERSION = "dicom-ps3.15-2024b-1"

OPTIONS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)
PRIVATE_TAG_MODES = ("remove", "retain_safe")
BURNED_IN_MODES = ("quarantine", "mask")
DATE_MODES = ("shift", "remove")


@dataclass(frozen=True)
class DicomPolicy:
    """How DICOM files are de-identified.

    Attributes:
        options: Enabled PS3.15 profile options (names in ``OPTIONS``), after implications.
        private_tags: ``remove`` every private attribute, or ``retain_safe`` (a small documented list).
        burned_in: ``quarantine`` files with burned-in text, or ``mask`` the text and re-check.
        date_mode: ``shift`` dates by the patient's offset, or ``remove`` them (Basic Profile actions).
        ocr: Whether to OCR the pixels; with ``False`` only ``BurnedInAnnotation`` is trusted (benchmarks only).
        ocr_min_chars: Minimum alphanumeric characters for an OCR word to count as text.
        ocr_min_confidence: Minimum tesseract confidence (0-100) for an OCR word to count.
        ocr_timeout_seconds: Per-image tesseract time limit; a timeout quarantines the file.
        version: Policy version recorded in ``DeidentificationMethod``.
    """

    options: frozenset[str] = frozenset({"retain_long_modified_dates"})
    private_tags: str = "remove"
    burned_in: str = "quarantine"
    date_mode: str = "shift"
    ocr: bool = True
    ocr_min_chars: int = 3
    ocr_min_confidence: float = 70.0
    ocr_timeout_seconds: float = 20.0
    version: str = DICOM_POLICY_VERSION


def _choice(section: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str, source: str) -> str:
    value = section.get(name, default)
    if value not in allowed:
        raise UserError(f"{source}: dicom.{name} is {value!r}; use one of {', '.join(allowed)}")
    return str(value)


def parse_dicom_policy(section: Mapping[str, Any] | None, source: str = "policy") -> DicomPolicy:
    """Parses the ``dicom:`` mapping of the policy YAML.

    Args:
        section: The mapping under ``dicom:`` (``None`` or empty gives the defaults).
        source: The policy file name, for error messages.

    Returns:
        The typed policy.

    Raises:
        UserError: Unknown keys, unknown options or contradictory settings.
    """
    section = dict(section or {})
    known = {"options", "private_tags", "burned_in", "date_mode", "ocr", "ocr_min_chars", "ocr_min_confidence"}
    unknown = sorted(set(section) - known - {"ocr_timeout_seconds", "version"})
    if unknown:
        raise UserError(f"{source}: unknown dicom keys {unknown}; allowed: {sorted(known)}")
    raw_options = section.get("options")
    if raw_options is None:
        raw_options = []
    if not isinstance(raw_options, list | tuple):
        raise UserError(f"{source}: dicom.options must be a list of option names from {list(OPTIONS)}")
    options = {str(option) for option in raw_options}
    bad = sorted(options - set(OPTIONS))
    if bad:
        raise UserError(f"{source}: unknown dicom options {bad}; use names from {list(OPTIONS)}")
    private_tags = _choice(section, "private_tags", PRIVATE_TAG_MODES, "remove", source)
    burned_in = _choice(section, "burned_in", BURNED_IN_MODES, "quarantine", source)
    date_mode = _choice(section, "date_mode", DATE_MODES, "shift", source)
    if private_tags == "retain_safe":
        options.add("retain_safe_private")
    elif "retain_safe_private" in options:
        raise UserError(f"{source}: option retain_safe_private needs dicom.private_tags: retain_safe")
    if date_mode == "shift":
        options.add("retain_long_modified_dates")
    elif "retain_long_modified_dates" in options:
        raise UserError(f"{source}: option retain_long_modified_dates contradicts dicom.date_mode: remove")
    if {"retain_long_full_dates", "retain_long_modified_dates"} <= options:
        raise UserError(
            f"{source}: retain_long_full_dates and retain_long_modified_dates exclude each other; "
            "date_mode: shift implies the second"
        )
    return DicomPolicy(
        options=frozenset(options),
        private_tags=private_tags,
        burned_in=burned_in,
        date_mode=date_mode,
        ocr=bool(section.get("ocr", True)),
        ocr_min_chars=int(section.get("ocr_min_chars", 3)),
        ocr_min_confidence=float(section.get("ocr_min_confidence", 70.0)),
        ocr_timeout_seconds=float(section.get("ocr_timeout_seconds", 20.0)),
        version=str(section.get("version", DICOM_POLICY_VERSION)),
    )
