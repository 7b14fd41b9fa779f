"""Synthetic free text (DocumentReference notes, Annotations) and its redaction by free_text."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from clinflow.synthetic import RESOURCE_TYPES, generate_fhir_bulk
from components.deidentify.free_text import Redactor, known_identifiers_from_patient


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("notes")
    generate_fhir_bulk(out, patients=40, seed=11)
    return {
        t: [json.loads(line) for line in (out / f"{t}.000.ndjson").read_text(encoding="utf-8").splitlines()]
        for t in RESOURCE_TYPES
    }


def tokens(text: str) -> list[str]:
    return re.sub(r"[^\w]+", " ", text.casefold()).split()


def leaked_values(text: str, patient: dict[str, Any]) -> list[str]:
    """Known values of the patient whose token sequence still occurs in ``text``."""
    known = known_identifiers_from_patient(patient)
    haystack = " " + " ".join(tokens(text)) + " "
    values = (*known.names, *known.identifiers, *known.telecom, *known.addresses, *known.dates)
    return [v for v in values if len("".join(tokens(v))) >= 2 and f" {' '.join(tokens(v))} " in haystack]


def note_of(document: dict[str, Any]) -> str:
    attachment = document["content"][0]["attachment"]
    assert attachment["contentType"].startswith("text/plain")
    return base64.b64decode(attachment["data"]).decode("utf-8")


def test_document_references_carry_phi_and_resolve(export: dict[str, list[dict[str, Any]]]) -> None:
    patients = {p["id"]: p for p in export["Patient"]}
    encounters = {e["id"] for e in export["Encounter"]}
    documents = export["DocumentReference"]
    assert len(documents) >= len(patients)
    styles = {"urn": 0, "literal": 0, "contained": 0}
    for document in documents:
        patient = patients[document["subject"]["reference"].removeprefix("Patient/")]
        mrn = next(
            i["value"] for i in patient["identifier"] if i.get("type", {}).get("coding", [{}])[0].get("code") == "MR"
        )
        text = note_of(document)
        assert mrn in text and patient["name"][0]["family"].upper() in text
        assert "Electronically signed by Dr." in text
        reference = document["context"]["encounter"][0]["reference"]
        styles["urn" if reference.startswith("urn:uuid:") else "literal"] += 1
        assert reference.removeprefix("urn:uuid:").removeprefix("Encounter/") in encounters
        if "contained" in document:
            styles["contained"] += 1
            assert document["author"] == [{"reference": "#author1"}]
            assert document["contained"][0]["id"] == "author1"
        assert document["title"] if "title" in document else document["content"][0]["attachment"]["title"]
    assert all(styles.values()), styles


def test_some_conditions_and_medications_have_annotations(export: dict[str, list[dict[str, Any]]]) -> None:
    for resource_type in ("Condition", "MedicationRequest"):
        notes = [r["note"][0]["text"] for r in export[resource_type] if "note" in r]
        assert 0 < len(notes) < len(export[resource_type])


def test_redactor_removes_every_patient_value_from_the_notes(export: dict[str, list[dict[str, Any]]]) -> None:
    patients = {p["id"]: p for p in export["Patient"]}
    redactors = {pid: Redactor(known_identifiers_from_patient(p)) for pid, p in patients.items()}
    leaks: list[str] = []
    for document in export["DocumentReference"]:
        pid = document["subject"]["reference"].removeprefix("Patient/")
        redacted, counts = redactors[pid].redact(note_of(document))
        leaks += leaked_values(redacted, patients[pid])
        assert counts["name"] and counts["date"] and counts["identifier"]
        assert patients[pid]["birthDate"] not in redacted
    assert leaks == []
