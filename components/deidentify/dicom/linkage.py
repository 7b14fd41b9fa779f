"""Patient linkage shared by the DICOM and device-log lanes (the brief's patient-linkage contract).

An MRN found in the crosswalk (``identifier value -> FHIR Patient logical id``) is *linked*: its
pseudonym is the FHIR patient's pseudonym and its date offset the FHIR patient's offset, so FHIR,
DICOM and device logs of one patient join and shift by the same number of days. Any other MRN is
*unlinked*: keyed pseudonym ``HMAC(key, "mrn:<mrn>")`` and offset ``date_offset_days(key, "mrn:<mrn>")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from components.deidentify.keys import date_offset_days, hmac_hex, pseudonym


@dataclass(frozen=True)
class PatientLink:
    """The pseudonym and date offset of one patient.

    Attributes:
        pseudonym: 64 hex characters.
        offset_days: Date shift in days (never 0).
        linked: Whether the MRN was in the crosswalk.
    """

    pseudonym: str
    offset_days: int
    linked: bool

    @property
    def status(self) -> str:
        """``linked`` or ``unlinked``."""
        return "linked" if self.linked else "unlinked"


def link_patient(key: bytes, mrn: str, crosswalk: Mapping[str, str]) -> PatientLink:
    """Resolves an MRN to the patient's pseudonym and date offset.

    Args:
        key: The HMAC key.
        mrn: The MRN (DICOM PatientID, device-log ``patient_mrn``); may be empty.
        crosswalk: MRN -> FHIR Patient logical id.

    Returns:
        The link.
    """
    fhir_id = crosswalk.get(mrn) if mrn else None
    if fhir_id:
        return PatientLink(pseudonym(key, "Patient", fhir_id), date_offset_days(key, fhir_id), True)
    return PatientLink(hmac_hex(key, "mrn:" + mrn), date_offset_days(key, "mrn:" + mrn), False)
