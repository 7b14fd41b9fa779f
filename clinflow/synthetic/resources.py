"""Render a simulated history as FHIR R4 Encounter/Condition/Observation/MedicationRequest resources.

Constant fragments (codings, categories, profiles) are built once and shared between resources;
each visit formats its timestamps once. That keeps rendering fast enough for 10,000 patients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from clinflow.prediction_task import LOINC_BMI, LOINC_HBA1C, LOINC_SYSTOLIC_BP
from clinflow.synthetic import vocab
from clinflow.synthetic.clock import DAY, REFERENCE_END, iso_datetime
from clinflow.synthetic.history import Episode, History, State, Visit, state_at
from clinflow.synthetic.notes import annotation, document_reference, notes_rng, wants_note
from clinflow.synthetic.people import Organization, Person, Practitioner, concept, new_id

CLINICAL_TYPES = ("Encounter", "Condition", "Observation", "MedicationRequest", "DocumentReference")

ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
LOINC_BP_PANEL = "85354-9"
LOINC_DIASTOLIC_BP = "8462-4"
LOINC_WEIGHT = "29463-7"
LOINC_HEIGHT = "8302-2"

BP_PANEL = vocab.Code(vocab.LOINC, LOINC_BP_PANEL, "Blood pressure panel with all children optional")
SYSTOLIC = vocab.Code(vocab.LOINC, LOINC_SYSTOLIC_BP, "Systolic Blood Pressure")
DIASTOLIC = vocab.Code(vocab.LOINC, LOINC_DIASTOLIC_BP, "Diastolic Blood Pressure")
HEIGHT = vocab.Code(vocab.LOINC, LOINC_HEIGHT, "Body Height")
WEIGHT = vocab.Code(vocab.LOINC, LOINC_WEIGHT, "Body Weight")
BMI = vocab.Code(vocab.LOINC, LOINC_BMI, "Body mass index (BMI) [Ratio]")
HBA1C = vocab.Code(vocab.LOINC, LOINC_HBA1C, "Hemoglobin A1c/Hemoglobin.total in Blood")

_CLASSES = {
    code: {"system": ACT_CODE_SYSTEM, "code": code, "display": display}
    for code, display in (("AMB", "ambulatory"), ("EMER", "emergency"), ("IMP", "inpatient encounter"))
}
_PERFORMER_TYPE = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "PPRF",
                "display": "primary performer",
            }
        ],
        "text": "primary performer",
    }
]
_DISCHARGE = {
    "dischargeDisposition": {
        "coding": [
            {
                "system": "http://www.nubc.org/patient-discharge",
                "code": "01",
                "display": "Discharged to home care or self care (routine discharge)",
            }
        ],
        "text": "Discharged to home care or self care (routine discharge)",
    }
}
_CATEGORIES = {
    category: [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": category,
                    "display": display,
                }
            ]
        }
    ]
    for category, display in (("vital-signs", "Vital Signs"), ("laboratory", "Laboratory"))
}
_OBSERVATION_META = {
    "vital-signs": {"profile": [f"{US_CORE}/us-core-vital-signs"]},
    "laboratory": {"profile": [f"{US_CORE}/us-core-observation-lab"]},
}
_CONDITION_STATUS = {
    status: {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]}
    for status in ("active", "resolved")
}
_CONFIRMED = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]}
_DIAGNOSIS_CATEGORY = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "encounter-diagnosis",
                "display": "Encounter Diagnosis",
            }
        ]
    }
]
_DOSAGE = [{"sequence": 1, "text": "Take as directed", "asNeededBoolean": False}]


def _meta(name: str) -> dict[str, list[str]]:
    """A ``meta`` with one US Core profile."""
    return {"profile": [f"{US_CORE}/{name}"]}


_ENCOUNTER_META = _meta("us-core-encounter")
_CONDITION_META = _meta("us-core-condition-encounter-diagnosis")
_MEDICATION_META = _meta("us-core-medicationrequest")


@dataclass
class Rendered:
    """The resources of one patient's history, by resource type."""

    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in CLINICAL_TYPES})


@dataclass
class _Context:
    """What every resource of one visit refers to, with its timestamps formatted once."""

    person: Person
    subject: dict[str, str]
    subject_named: dict[str, str]
    encounter: dict[str, str]
    practitioner: Practitioner
    organization: Organization
    start: str
    end: str
    last: int


def encounter_resource(visit: Visit, ctx: _Context, encounter_id: str, state: State) -> dict[str, Any]:
    """Renders one Encounter."""
    kind = visit.kind
    if kind == "checkup":
        kind = "wellness" if state.age < 18 else "checkup"
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "meta": _ENCOUNTER_META,
        "identifier": [
            {"use": "official", "system": "https://github.com/synthetichealth/synthea", "value": encounter_id}
        ],
        "status": "finished",
        "class": _CLASSES[visit.kind if visit.acute else "AMB"],
        "type": [concept(vocab.ENCOUNTER_TYPES[kind])],
        "subject": ctx.subject_named,
        "participant": [
            {
                "type": _PERFORMER_TYPE,
                "individual": ctx.practitioner.reference,
            }
        ],
        "period": {"start": ctx.start, "end": ctx.end},
        "serviceProvider": ctx.organization.reference,
    }
    if visit.reason is not None:
        resource["reasonCode"] = [concept(visit.reason)]
    if visit.kind == "IMP":
        resource["hospitalization"] = _DISCHARGE
    return resource


def condition_resource(rng: random.Random, episode: Episode, ctx: _Context) -> dict[str, Any]:
    """Renders one Condition, with ``abatementDateTime`` when it resolved before the end of history."""
    resolved = episode.abatement is not None and episode.abatement <= ctx.last
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": new_id(rng),
        "meta": _CONDITION_META,
        "clinicalStatus": _CONDITION_STATUS["resolved" if resolved else "active"],
        "verificationStatus": _CONFIRMED,
        "category": _DIAGNOSIS_CATEGORY,
        "code": concept(episode.code),
        "subject": ctx.subject,
        "encounter": ctx.encounter,
        "onsetDateTime": ctx.start,
    }
    if resolved and episode.abatement is not None:
        resource["abatementDateTime"] = iso_datetime(episode.abatement, ctx.person.utc_offset)
    resource["recordedDate"] = ctx.start
    return resource


def _quantity(value: float, unit: str) -> dict[str, Any]:
    """Builds a UCUM valueQuantity."""
    return {"value": value, "unit": unit, "system": vocab.UCUM, "code": unit}


def _observation(rng: random.Random, ctx: _Context, category: str, code: vocab.Code) -> dict[str, Any]:
    """Builds the common part of an Observation; the caller adds the value or components."""
    return {
        "resourceType": "Observation",
        "id": new_id(rng),
        "meta": _OBSERVATION_META[category],
        "status": "final",
        "category": _CATEGORIES[category],
        "code": concept(code),
        "subject": ctx.subject,
        "encounter": ctx.encounter,
        "effectiveDateTime": ctx.start,
        "issued": ctx.start,
    }


def blood_pressure(rng: random.Random, state: State, acute: bool, ctx: _Context) -> dict[str, Any]:
    """Renders a blood-pressure panel (LOINC 85354-9) with diastolic and systolic components."""
    systolic = round(state.sbp + (8.0 if acute else 0.0) + rng.gauss(0, 7))
    diastolic = round(systolic * 0.62 + rng.gauss(4, 5))
    resource = _observation(rng, ctx, "vital-signs", BP_PANEL)
    resource["component"] = [
        {"code": concept(DIASTOLIC), "valueQuantity": _quantity(diastolic, "mm[Hg]")},
        {"code": concept(SYSTOLIC), "valueQuantity": _quantity(systolic, "mm[Hg]")},
    ]
    return resource


def body_measures(rng: random.Random, state: State, ctx: _Context) -> list[dict[str, Any]]:
    """Renders height, weight and (from age 2) BMI."""
    height = state.height + rng.gauss(0, 0.8)
    bmi = state.bmi + rng.gauss(0, 0.5)
    values = [(HEIGHT, round(height, 1), "cm"), (WEIGHT, round(bmi * (height / 100) ** 2, 1), "kg")]
    if state.age >= 2:
        values.append((BMI, round(bmi, 1), "kg/m2"))
    found = []
    for code, value, unit in values:
        resource = _observation(rng, ctx, "vital-signs", code)
        resource["valueQuantity"] = _quantity(value, unit)
        found.append(resource)
    return found


def hba1c(rng: random.Random, state: State, ctx: _Context) -> dict[str, Any]:
    """Renders a hemoglobin A1c result (LOINC 4548-4)."""
    resource = _observation(rng, ctx, "laboratory", HBA1C)
    resource["valueQuantity"] = _quantity(round(state.a1c + rng.gauss(0, 0.2), 1), "%")
    return resource


def observations(rng: random.Random, state: State, visit: Visit, ctx: _Context) -> list[dict[str, Any]]:
    """Renders the vitals and labs measured at a visit.

    Blood pressure from age 3 at every visit but sick visits; body measures at check-ups and
    follow-ups; HbA1c at check-ups from age 40 and for diabetics at follow-ups, diagnosis visits
    and admissions.
    """
    found: list[dict[str, Any]] = []
    if state.age >= 3 and visit.kind != "sick":
        found.append(blood_pressure(rng, state, visit.acute, ctx))
    if visit.kind in {"checkup", "followup"}:
        found.extend(body_measures(rng, state, ctx))
    diabetic = state.has("diabetes")
    if (visit.kind == "checkup" and (diabetic or state.age >= 40)) or (
        diabetic and visit.kind in {"followup", "diagnosis", "IMP"}
    ):
        found.append(hba1c(rng, state, ctx))
    return found


def medication_request(rng: random.Random, medication: vocab.Code, visit: Visit, ctx: _Context) -> dict[str, Any]:
    """Renders one MedicationRequest (active when ordered in the last year of a living patient)."""
    recent = visit.start >= REFERENCE_END - 365 * DAY and ctx.last == REFERENCE_END
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": new_id(rng),
        "meta": _MEDICATION_META,
        "status": "active" if recent else "stopped",
        "intent": "order",
        "medicationCodeableConcept": concept(medication),
        "subject": ctx.subject,
        "encounter": ctx.encounter,
        "authoredOn": ctx.start,
        "requester": ctx.practitioner.reference,
    }
    if visit.reason is not None:
        resource["reasonCode"] = [concept(visit.reason)]
    resource["dosageInstruction"] = _DOSAGE
    return resource


def render_history(rng: random.Random, person: Person, history: History) -> Rendered:
    """Renders every visit of a history with its conditions, observations and medications.

    Args:
        rng: This person's RNG (ids and measurement noise).
        person: The person.
        history: The simulated history.

    Returns:
        The resources by type, in visit order.
    """
    rendered = Rendered()
    encounters, conditions = rendered.by_type["Encounter"], rendered.by_type["Condition"]
    observation_list, medications = rendered.by_type["Observation"], rendered.by_type["MedicationRequest"]
    documents = rendered.by_type["DocumentReference"]
    text_rng = notes_rng(person)
    last = history.death if history.death is not None else REFERENCE_END
    subject = {"reference": f"Patient/{person.id}"}
    subject_named = {**subject, "display": " ".join((*person.given, person.family))}
    for visit in history.visits:
        organization = person.hospital if visit.acute else person.clinic
        practitioner = rng.choice(organization.practitioners) if visit.acute else person.pcp
        encounter_id = new_id(rng)
        ctx = _Context(
            person=person,
            subject=subject,
            subject_named=subject_named,
            encounter={"reference": f"Encounter/{encounter_id}"},
            practitioner=practitioner,
            organization=organization,
            start=iso_datetime(visit.start, person.utc_offset),
            end=iso_datetime(max(visit.end, visit.start), person.utc_offset),
            last=last,
        )
        state = state_at(history.profile, person, visit.start)
        encounters.append(encounter_resource(visit, ctx, encounter_id, state))
        visit_conditions = [condition_resource(rng, episode, ctx) for episode in visit.diagnoses]
        conditions.extend(visit_conditions)
        observation_list.extend(observations(rng, state, visit, ctx))
        visit_medications = [medication_request(rng, medication, visit, ctx) for medication in visit.medications]
        medications.extend(visit_medications)
        _add_free_text(text_rng, visit, ctx, encounter_id, visit_conditions, visit_medications, documents)
    return rendered


def _add_free_text(
    rng: random.Random,
    visit: Visit,
    ctx: _Context,
    encounter_id: str,
    visit_conditions: list[dict[str, Any]],
    visit_medications: list[dict[str, Any]],
    documents: list[dict[str, Any]],
) -> None:
    """Adds Annotation notes to some of a visit's resources and, for some visits, a clinical note.

    Draws only from the patient's notes RNG, so the clinical content stays byte-identical.
    """
    for resource in (*visit_conditions, *visit_medications):
        display = (resource.get("code") or resource.get("medicationCodeableConcept") or {}).get("text", "")
        note = annotation(rng, ctx.person, ctx.start, ctx.practitioner, display)
        if note is not None:
            resource["note"] = note
    if wants_note(rng, visit.acute):
        texts = {
            "diagnoses": [episode.code.display for episode in visit.diagnoses],
            "medications": [medication.display for medication in visit.medications],
            "reason": visit.reason.display if visit.reason is not None else None,
        }
        documents.append(
            document_reference(
                rng,
                ctx.person,
                visit.kind,
                visit.start,
                {"start": ctx.start, "end": ctx.end},
                encounter_id,
                ctx.practitioner,
                ctx.organization,
                texts,
            )
        )
