"""Synthetic free text: clinical notes (DocumentReference) and Annotation notes full of PHI.

Notes restate what a real chart note restates (the patient's name, MRN, date of birth in US
format, phone in another formatting, address fragments, visit dates in several renderings, the
signing clinician), so free-text de-identification has something real to find. Everything here
draws from its own RNG (seeded by the patient id), never from the patient's main RNG, so adding
notes leaves every other resource byte-identical.
"""

from __future__ import annotations

import base64
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from clinflow.synthetic import vocab
from clinflow.synthetic.clock import DAY
from clinflow.synthetic.people import Organization, Person, Practitioner, new_id

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
DOC_CATEGORY_SYSTEM = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
FORMAT_SYSTEM = "http://ihe.net/fhir/ValueSet/IHE.FormatCode.codesystem"
ROUTINE_NOTE_SHARE = 0.25  # share of non-acute visits that get a progress note (acute visits always do)
ANNOTATION_SHARE = 0.2  # share of Conditions / MedicationRequests with a free-text note
OUTSIDE_AUTHOR_SHARE = 0.2  # share of notes authored by a contained (outside) clinician
URN_UUID_SHARE = 0.3  # share of notes whose encounter reference is a ``urn:uuid:`` (Synthea bundle style)

NOTE_TYPES = {
    "EMER": vocab.Code(vocab.LOINC, "34111-5", "Emergency department note"),
    "IMP": vocab.Code(vocab.LOINC, "18842-5", "Discharge summary"),
    "checkup": vocab.Code(vocab.LOINC, "34117-2", "History and physical note"),
}
PROGRESS_NOTE = vocab.Code(vocab.LOINC, "11506-3", "Progress note")
_CLINICAL_NOTE = [{"coding": [{"system": DOC_CATEGORY_SYSTEM, "code": "clinical-note", "display": "Clinical Note"}]}]
_FORMAT = {"system": FORMAT_SYSTEM, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient", "display": "mimeType Sufficient"}
_META = {"profile": [f"{US_CORE}/us-core-documentreference"]}


def notes_rng(person: Person) -> random.Random:
    """Returns the RNG of one patient's free text (independent of their clinical RNG)."""
    return random.Random(f"clinflow-synthetic/notes/{person.id}")


def _local(seconds: int, person: Person) -> datetime:
    return datetime.fromtimestamp(seconds, timezone(timedelta(hours=person.utc_offset)))


def _long_date(day: datetime) -> str:
    return f"{day:%B} {day.day}, {day.year}"


def _short_date(day: datetime) -> str:
    return f"{day.month}/{day.day}/{day:%y}"


def _us_date(day: datetime) -> str:
    return f"{day:%m/%d/%Y}"


def _phone_parenthesised(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"


def full_name(person: Person) -> str:
    """The patient's name as a note header shows it (given names and family)."""
    return " ".join((*person.given, person.family))


def _article(age: int) -> str:
    return "an" if str(age).startswith(("8", "11", "18")) else "a"


def note_text(
    rng: random.Random,
    person: Person,
    kind: str,
    start: int,
    author: Practitioner,
    organization: Organization,
    diagnoses: list[str],
    medications: list[str],
    reason: str | None,
) -> str:
    """Writes one plain-text clinical note for a visit.

    Args:
        rng: The patient's notes RNG.
        person: The patient.
        kind: The visit kind (``checkup``, ``EMER``, ...).
        start: Visit start, Unix seconds.
        author: The signing clinician.
        organization: Where the visit happened.
        diagnoses: Displays of conditions first recorded at the visit.
        medications: Displays of medications ordered at the visit.
        reason: Display of the visit reason, if any.

    Returns:
        The note.
    """
    seen = _local(start, person)
    born = _local(person.birth, person)
    age = int((start - person.birth) / (365.2425 * DAY))
    name = full_name(person)
    title = NOTE_TYPES.get(kind, PROGRESS_NOTE).display.upper()
    gender = {"female": "woman", "male": "man"}.get(person.gender, "patient") if age >= 18 else "child"
    phone = person.phones[-1]
    lines = [
        title,
        f"Patient: {person.family.upper()}, {' '.join(person.given)}    MRN: {person.mrn}    DOB: {_us_date(born)}",
        f"Date of service: {_long_date(seen)}    Location: {organization.name}",
        "",
        f"RE: {' '.join(filter(None, (person.prefix, name)))}",
        f"{person.given[0]} is {_article(age)} {age}-year-old {gender} seen "
        + (f"for {reason.lower()}." if reason else "for a routine visit."),
    ]
    if rng.random() < 0.5:
        lines.append(
            f"Lives at {person.address.line} in {person.address.city.name}; best contact {_phone_parenthesised(phone)}."
        )
    else:
        lines.append(f"Home phone {phone}. Address on file: {person.address.city.name}, {person.address.city.state} "
                     f"{person.address.postal_code}.")  # fmt: skip
    if rng.random() < 0.2:
        lines.append(
            f"Born in {person.birthplace.name}. Mother ({person.mothers_maiden_name}) accompanies the patient."
        )
    if person.email and rng.random() < 0.2:
        lines.append(f"Prefers e-mail: {person.email}.")
    if rng.random() < 0.05:
        lines.append(f"Insurance verification: SSN {person.ssn}.")
    if diagnoses:
        lines.append("Assessment: " + "; ".join(diagnoses) + ".")
    else:
        lines.append("Assessment: no new problems identified.")
    if medications:
        lines.append("Plan: start " + "; ".join(medications) + ".")
    follow_up = _local(start + rng.choice((14, 30, 90, 180)) * DAY, person)
    lines.append(f"Follow up on {_short_date(follow_up)} or sooner if symptoms worsen.")
    lines.append("")
    lines.append(f"Electronically signed by {author.display}, {organization.name}, {seen:%m/%d/%Y %H:%M}.")
    return "\n".join(lines) + "\n"


def _contained_author(author: Practitioner) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": "author1",
        "name": [{"family": author.family, "given": [author.given], "prefix": ["Dr."]}],
        "telecom": [{"system": "email", "value": author.email}],
    }


def document_reference(
    rng: random.Random,
    person: Person,
    visit_kind: str,
    visit_start: int,
    period: dict[str, str],
    encounter_id: str,
    author: Practitioner,
    organization: Organization,
    texts: dict[str, Any],
) -> dict[str, Any]:
    """Renders one DocumentReference carrying a base64 plain-text note of a visit.

    Args:
        rng: The patient's notes RNG.
        person: The patient.
        visit_kind: The visit kind.
        visit_start: Visit start, Unix seconds.
        period: The encounter period (``start``/``end`` dateTimes).
        encounter_id: The encounter's resource id.
        author: The signing clinician.
        organization: The custodian organization.
        texts: ``diagnoses``/``medications`` display lists and ``reason`` (str or None).

    Returns:
        The DocumentReference resource.
    """
    note_type = NOTE_TYPES.get(visit_kind, PROGRESS_NOTE)
    text = note_text(
        rng, person, visit_kind, visit_start, author, organization, texts["diagnoses"], texts["medications"],
        texts["reason"],
    )  # fmt: skip
    resource: dict[str, Any] = {"resourceType": "DocumentReference", "id": new_id(rng), "meta": _META}
    outside = rng.random() < OUTSIDE_AUTHOR_SHARE
    if outside:
        resource["contained"] = [_contained_author(author)]
    urn = rng.random() < URN_UUID_SHARE
    encounter = (
        {"reference": f"urn:uuid:{encounter_id}", "type": "Encounter"}
        if urn
        else {"reference": f"Encounter/{encounter_id}"}
    )
    resource.update(
        {
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [{"system": vocab.LOINC, "code": note_type.code, "display": note_type.display}]},
            "category": _CLINICAL_NOTE,
            "subject": {"reference": f"Patient/{person.id}", "display": full_name(person)},
            "date": period["end"],
            "author": [{"reference": "#author1"}] if outside else [author.reference],
            "custodian": organization.reference,
            "description": f"{note_type.display} for {full_name(person)}",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain; charset=utf-8",
                        "language": "en-US",
                        "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                        "title": f"{note_type.display} - {person.family}, {person.given[0]}",
                        "creation": period["end"],
                    },
                    "format": _FORMAT,
                }
            ],
            "context": {"encounter": [encounter], "period": dict(period)},
        }
    )
    return resource


def wants_note(rng: random.Random, acute: bool) -> bool:
    """Tells whether a visit gets a clinical note (acute visits always; others sometimes)."""
    return acute or rng.random() < ROUTINE_NOTE_SHARE


def annotation(
    rng: random.Random, person: Person, time: str, author: Practitioner, subject: str
) -> list[dict[str, Any]] | None:
    """Returns an Annotation list for a Condition/MedicationRequest, or None (most get none).

    Args:
        rng: The patient's notes RNG.
        person: The patient.
        time: When the note was written (a dateTime).
        author: Who wrote it.
        subject: What it is about (the condition or medication display).

    Returns:
        ``[Annotation]`` mentioning the patient's name or phone, or None.
    """
    if rng.random() >= ANNOTATION_SHARE:
        return None
    templates = (
        f"Discussed {subject.lower()} with {person.given[0]} {person.family}; questions answered.",
        f"Called patient at {person.phones[0]} to review {subject.lower()}.",
        f"{person.prefix or person.given[0]} {person.family} prefers a reminder call at {person.phones[-1]}.",
    )
    return [{"authorReference": author.reference, "time": time, "text": rng.choice(templates)}]
