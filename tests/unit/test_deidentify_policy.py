"""Unit tests of the de-identification policy as code: loading, validation, hashing, policy-driven rules."""

from __future__ import annotations

import base64
import copy
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinflow.errors import UserError
from components.deidentify import policy
from components.deidentify.free_text import Redactor, known_identifiers_from_patient
from components.deidentify.keys import pseudonym
from components.deidentify.policy import DEFAULT_POLICY, load_policy, parse_policy, rules_of
from components.deidentify.transform import (
    REWRITTEN_PREFIX,
    crosswalk_entries,
    deidentify_patient,
    deidentify_resource,
)

KEY = b"unit-test-key-0123456789abcdef0123456789"


def document() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_POLICY.read_bytes())


def variant(tmp_path: Path, change: Any) -> Path:
    data = document()
    change(data)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_shipped_policy_loads_with_version_and_content_hash() -> None:
    loaded = load_policy()
    assert loaded.policy_id == "safe-harbor" and loaded.version == "1.0.0" and loaded.label == "safe-harbor@1.0.0"
    assert loaded.sha256 == hashlib.sha256(DEFAULT_POLICY.read_bytes()).hexdigest()
    assert (
        set(loaded.fhir["safe_harbor"]) == set(policy.SAFE_HARBOR_CATEGORIES)
        and len(policy.SAFE_HARBOR_CATEGORIES) == 18
    )
    rules = rules_of(loaded)
    assert len(rules.restricted_zip3) == 17 and rules.zip3_replacement == "000"
    assert loaded.document["reidentification_map"] is False
    assert loaded.document["dicom"]["burned_in"] == "quarantine" and "device_logs" in loaded.document
    assert len(policy.code_sha256()) == 64 and policy.code_sha256() == policy.code_sha256()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("version"), "<top level>"),
        (lambda d: d.__setitem__("version", "one"), "version"),
        (lambda d: d["fhir"]["dates"].__setitem__("mode", "scramble"), "fhir.dates.mode"),
        (lambda d: d["fhir"]["zip3"]["restricted_prefixes"].append("12"), "fhir.zip3.restricted_prefixes.17"),
        (lambda d: d["fhir"]["safe_harbor"].pop("biometric"), "fhir.safe_harbor"),
        (lambda d: d["fhir"]["remove"].__setitem__("name", "nicknames"), "fhir.remove.name"),
        (lambda d: d.__setitem__("reidentification_map", "no"), "reidentification_map"),
        (lambda d: d["fhir"].__setitem__("surprise", 1), "fhir"),
        (lambda d: d["fhir"]["ages"].__setitem__("reported_as", 80), "fhir.ages.reported_as"),
    ],
)
def test_bad_policy_is_a_user_error_naming_the_field(tmp_path: Path, change: Any, field: str) -> None:
    with pytest.raises(UserError, match=rf"policy\.yaml: invalid field '{field}'"):
        load_policy(variant(tmp_path, change))


def test_unreadable_or_non_yaml_policy_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        parse_policy(b"policy_id: [unclosed", "broken.yaml")
    with pytest.raises(UserError, match="invalid field '<top level>'"):
        parse_policy(b"- a list\n", "list.yaml")


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p-old",
    "name": [{"family": "Oldenburg", "given": ["Methuselah"]}],
    "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-775533"}],
    "birthDate": "1921-05-17",
    "address": [{"postalCode": "89301", "state": "NV"}],
}


def test_year_mode_keeps_only_years_and_aggregates_ages_over_89(tmp_path: Path) -> None:
    loaded = load_policy(variant(tmp_path, lambda d: d["fhir"]["dates"].__setitem__("mode", "year")))
    rules = rules_of(loaded)
    stats: Counter[str] = Counter()
    out = deidentify_patient(copy.deepcopy(PATIENT), KEY, stats, "2021-01-01", rules, loaded)
    assert out["birthDate"] == "1931"  # age 99 on 2021-01-01 -> reported as 90
    assert out["address"] == [{"postalCode": "000", "state": "NV"}]  # 893 is a restricted ZIP3
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "subject": {"reference": "Patient/p-old"},
        "period": {"start": "2020-03-01T10:15:00-05:00", "end": "2020-03-02"},
    }
    result = deidentify_resource(encounter, KEY, stats, rules, loaded).resource
    assert result["period"] == {"start": "2020", "end": "2020"}
    assert stats[REWRITTEN_PREFIX + policy.DATES_GENERALISED] >= 3 and stats[REWRITTEN_PREFIX + policy.AGES_CAPPED] == 1


def test_age_quantities_over_89_are_aggregated() -> None:
    loaded = load_policy()
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p-old"},
        "onsetAge": {"value": 97, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
        "abatementAge": {"value": 40, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
    }
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "subject": {"reference": "Patient/p-old"},
        "valueQuantity": {"value": 93.5, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
    }
    stats: Counter[str] = Counter()
    out = deidentify_resource(condition, KEY, stats, rules_of(loaded), loaded).resource
    assert out["onsetAge"]["value"] == 90 and out["abatementAge"]["value"] == 40
    assert (
        deidentify_resource(observation, KEY, stats, rules_of(loaded), loaded).resource["valueQuantity"]["value"] == 90
    )
    assert stats[REWRITTEN_PREFIX + policy.AGES_CAPPED] == 2


def test_identifiers_can_be_pseudonymised_by_policy(tmp_path: Path) -> None:
    loaded = load_policy(variant(tmp_path, lambda d: d["fhir"]["identifiers"].__setitem__("action", "pseudonymise")))
    out = deidentify_patient(copy.deepcopy(PATIENT), KEY, Counter(), "2021-01-01", rules_of(loaded), loaded)
    [identifier] = out["identifier"]
    assert identifier["system"] == "http://hospital.example/mrn" and len(identifier["value"]) == 64
    assert "MRN-775533" not in str(out)
    again = deidentify_patient(copy.deepcopy(PATIENT), KEY, Counter(), "2021-01-01", rules_of(loaded), loaded)
    assert again["identifier"] == out["identifier"]


def test_conditional_reference_resolves_through_the_identifier_crosswalk() -> None:
    loaded = load_policy()
    practitioner = {
        "resourceType": "Practitioner",
        "id": "pr-9",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999912345"}],
    }
    crosswalk = dict(crosswalk_entries(practitioner))
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "subject": {"reference": "Patient/p-old"},
        "participant": [
            {"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999912345"}},
            {"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|0000000000"}},
        ],
    }
    stats: Counter[str] = Counter()
    out = deidentify_resource(encounter, KEY, stats, rules_of(loaded), loaded, crosswalk=crosswalk).resource
    resolved, unresolved = (p["individual"]["reference"] for p in out["participant"])
    assert resolved == f"Practitioner/{pseudonym(KEY, 'Practitioner', 'pr-9')}"
    assert unresolved.startswith("Practitioner/") and "0000000000" not in unresolved
    assert stats[REWRITTEN_PREFIX + policy.REFERENCES_RESOLVED] == 1


def test_text_attachments_are_decoded_redacted_reencoded_and_binary_removed() -> None:
    loaded = load_policy()
    note = "Seen Methuselah Oldenburg (MRN-775533) today, call 555-201-3344."
    report = {
        "resourceType": "DiagnosticReport",
        "id": "dr1",
        "subject": {"reference": "Patient/p-old"},
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(note.encode()).decode(),
                "size": len(note),
                "hash": "abc=",
                "title": "Note for Methuselah Oldenburg",
            },
            {"contentType": "image/png", "data": base64.b64encode(b"\x89PNG....").decode()},
        ],
    }
    redactor = Redactor(known_identifiers_from_patient(PATIENT))
    stats: Counter[str] = Counter()
    out = deidentify_resource(report, KEY, stats, rules_of(loaded), loaded, redactor=redactor).resource
    [text_form, image_form] = out["presentedForm"]
    decoded = base64.b64decode(text_form["data"]).decode()
    assert "Oldenburg" not in decoded and "MRN-775533" not in decoded and "555-201-3344" not in decoded
    assert "[NAME]" in decoded and text_form["size"] == len(decoded.encode()) and "hash" not in text_form
    assert text_form["title"] == "Note for [NAME] [NAME]"
    assert image_form == {"contentType": "image/png"}
    assert stats[REWRITTEN_PREFIX + policy.ATTACHMENTS_REDACTED] == 1
