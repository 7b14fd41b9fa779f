"""Unit tests of the residual-PHI scan."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from components.deidentify.phi_scan import build_index, patient_phi, scan_line, scan_text, tokens

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "3f0c-77aa",
    "identifier": [{"value": "999-12-3456"}, {"value": "MRN00042"}],
    "name": [{"family": "Quixote", "given": ["Zelda", "Ann"]}],
    "telecom": [{"system": "email", "value": "zq@example.org"}],
    "address": [{"line": ["12 Windmill Lane"], "city": "La Mancha", "state": "MA"}],
    "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Brisk"}],
    "contact": [{"name": {"family": "Panza"}}],
}


def index() -> Any:
    return build_index(patient_phi(PATIENT))


def test_collects_every_identifying_value_by_category() -> None:
    values = Counter(category for category, _ in patient_phi(PATIENT))
    assert values == Counter(ids=1, identifiers=2, names=5, telecom=1, addresses=2, maiden_names=1)
    assert ("names", "Zelda Ann Quixote") in set(patient_phi(PATIENT))


def test_finds_values_in_any_separator_and_case() -> None:
    phi, counts = index()
    assert counts["indexed\tnames"] == 5
    assert scan_text('{"x":"quixote"}', phi) == Counter(names=1)
    assert scan_text('{"ssn":"999 12 3456"}', phi) == Counter(identifiers=1)
    assert scan_text('{"line":"12 WINDMILL lane"}', phi) == Counter(addresses=1)
    assert scan_text('{"ref":"Patient/3f0c-77aa"}', phi) == Counter(ids=1)
    assert scan_text(orjson.dumps(PATIENT).decode(), phi)["names"] >= 4


def test_does_not_match_inside_longer_tokens_or_partial_phrases() -> None:
    phi, _ = index()
    assert scan_text('{"display":"Annual check-up; Quixotes"}', phi) == Counter()
    assert scan_text('{"line":"12 Windmill Road"}', phi) == Counter()
    assert scan_text('{"value":"999-12-3457"}', phi) == Counter()


def test_short_values_are_counted_as_skipped() -> None:
    _, counts = build_index([("names", "J"), ("names", "Jo")])
    assert counts == Counter({"skipped\tnames": 1, "indexed\tnames": 1})


def test_tokens_split_on_ascii_punctuation_and_keep_accented_letters() -> None:
    assert tokens("Véliz-O'Brien_42") == ["véliz", "o", "brien", "42"]


def test_single_word_names_inside_coded_vocabulary_are_exempt_not_leaks() -> None:
    phi, _ = build_index(patient_phi(dict(PATIENT, name=[{"family": "White", "given": ["Zelda"]}])))
    race = {"url": "text", "valueString": "White", "valueCoding": {"code": "2106-3", "display": "White"}}
    assert scan_line(orjson.dumps(race).decode(), phi) == (Counter(), 2)
    assert scan_line('{"code":"white"}', phi) == (Counter(names=1), 0)
    assert scan_line('{"text":"seen by Zelda White"}', phi) == (Counter(names=1), 2)  # full name never exempt
    assert scan_line('{"text":"ssn 999-12-3456"}', phi) == (Counter(identifiers=1), 0)
