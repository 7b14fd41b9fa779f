"""Rewrite FHIR ``Reference.reference`` values to pseudonyms so joins survive de-identification.

Forms and what becomes of them:

* ``Type/id`` and absolute ``https://server/fhir/Type/id[/_history/v]`` -> ``Type/<pseudonym>``
  (the server base and the version are dropped).
* ``urn:uuid:<id>`` -> ``Type/<pseudonym>`` when the target type is known from ``Reference.type``
  or from the element name (``patient`` -> Patient, ``encounter`` -> Encounter, ...); otherwise
  the reference is removed, because ``HMAC("<Type>/<id>")`` needs the type.
* Conditional ``Type?query`` (e.g. ``Practitioner?identifier=...|<npi>``) ->
  ``Type/<HMAC("Type?query")>``: stable, so resources that cite the same target still group
  together, but it does not equal the target's own id pseudonym.
* Contained ``#x`` stays as it is.
* Anything else (``urn:oid:``, free text, other URLs) is removed.
"""

from __future__ import annotations

import re
from typing import Any

from components.deidentify.keys import conditional_pseudonym, pseudonym

LITERAL_RE = re.compile(
    r"^(?:[a-z][a-z0-9+.\-]*://[^?#]*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
CONDITIONAL_RE = re.compile(r"^([A-Z][A-Za-z]{1,63})\?(.+)$")
URN_UUID_PREFIX = "urn:uuid:"
RESOURCE_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")

# Target type implied by the element that holds a reference (used for urn:uuid references only).
ELEMENT_TARGET_TYPES: dict[str, str] = {
    "patient": "Patient",
    "beneficiary": "Patient",
    "subject": "Patient",
    "encounter": "Encounter",
    "practitioner": "Practitioner",
    "organization": "Organization",
    "managingOrganization": "Organization",
    "serviceProvider": "Organization",
    "custodian": "Organization",
    "insurer": "Organization",
    "location": "Location",
    "claim": "Claim",
    "prescription": "MedicationRequest",
    "coverage": "Coverage",
}

# Elements of a resource that name its patient (for the per-patient date shift).
PATIENT_ELEMENTS = ("subject", "patient", "beneficiary")


def _urn_target_type(holder: dict[str, Any], element: str) -> str | None:
    declared = holder.get("type")
    if isinstance(declared, str) and RESOURCE_TYPE_RE.match(declared):
        return declared
    return ELEMENT_TARGET_TYPES.get(element)


def rewrite_reference(key: bytes, reference: str, holder: dict[str, Any], element: str) -> str | None:
    """Returns the de-identified form of one ``Reference.reference``.

    Args:
        key: The HMAC key.
        reference: The original reference string.
        holder: The Reference object (its ``type`` helps resolve ``urn:uuid:`` references).
        element: The name of the element holding the Reference (e.g. ``"subject"``).

    Returns:
        The rewritten reference, the unchanged ``#x`` contained reference, or None to remove it.
    """
    if reference.startswith("#"):
        return reference
    literal = LITERAL_RE.match(reference)
    if literal:
        return f"{literal.group(1)}/{pseudonym(key, literal.group(1), literal.group(2))}"
    if reference.startswith(URN_UUID_PREFIX):
        target = _urn_target_type(holder, element)
        target_id = reference[len(URN_UUID_PREFIX) :]
        if target and target_id:
            return f"{target}/{pseudonym(key, target, target_id)}"
        return None
    conditional = CONDITIONAL_RE.match(reference)
    if conditional:
        return f"{conditional.group(1)}/{conditional_pseudonym(key, conditional.group(1), conditional.group(2))}"
    return None


def referenced_patient_id(holder: Any, element: str) -> str | None:
    """Returns the original Patient id a Reference points to, if it points to a Patient.

    Args:
        holder: The Reference object (anything else gives None).
        element: The element name holding it (``urn:uuid:`` under ``subject``/``patient``/
            ``beneficiary`` counts as a Patient unless ``Reference.type`` says otherwise).

    Returns:
        The id, or None.
    """
    if not isinstance(holder, dict):
        return None
    reference = holder.get("reference")
    if not isinstance(reference, str):
        return None
    literal = LITERAL_RE.match(reference)
    if literal:
        return literal.group(2) if literal.group(1) == "Patient" else None
    if reference.startswith(URN_UUID_PREFIX) and _urn_target_type(holder, element) == "Patient":
        return reference[len(URN_UUID_PREFIX) :] or None
    return None


def resource_patient_id(resource: dict[str, Any]) -> str | None:
    """Finds the patient a resource belongs to.

    A Patient is its own patient; other resources name it in ``subject``, ``patient`` or
    ``beneficiary`` (first match wins).

    Args:
        resource: The original resource.

    Returns:
        The original Patient id, or None for resources without a patient (Organization, ...).
    """
    if resource.get("resourceType") == "Patient":
        value = resource.get("id")
        return value if isinstance(value, str) and value else None
    for element in PATIENT_ELEMENTS:
        found = referenced_patient_id(resource.get(element), element)
        if found:
            return found
    return None
