"""Unit tests of the deidentify transforms: keys, pseudonyms, references, dates, the element walk."""

from __future__ import annotations

import copy
import datetime as dt
from collections import Counter
from typing import Any

import orjson
import pytest

from clinflow.errors import UserError
from components.deidentify import policy
from components.deidentify.dates import looks_like_date, shift_date
from components.deidentify.free_text import Redactor, known_identifiers_from_patient
from components.deidentify.keys import date_offset_days, load_key, pseudonym, pseudonymous_uid
from components.deidentify.policy import load_policy, rules_of
from components.deidentify.references import resource_patient_id, rewrite_reference
from components.deidentify.transform import (
    FREE_TEXT_PREFIX,
    REMOVED_PREFIX,
    REWRITTEN_PREFIX,
    UNCLASSIFIED_PATH_PREFIX,
    deidentify_patient,
    deidentify_resource,
)

POLICY = load_policy()
RULES = rules_of(POLICY)

KEY = b"unit-test-key-0123456789abcdef0123456789"
OTHER_KEY = b"another-unit-test-key-0123456789abcdef01"
RACE = policy.US_CORE + "us-core-race"


def make_patient(**overrides: Any) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "pat-1",
        "text": {"status": "generated", "div": "<div>Zelda Quixote</div>"},
        "extension": [
            {
                "url": RACE,
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": "urn:oid:2.16", "code": "2106-3", "display": "White"},
                    },
                    {"url": "text", "valueString": "White"},
                ],
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": "Wilhelmina Brisk",
            },
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Gotham"}},
            {"url": policy.US_CORE + "us-core-birthsex", "valueCode": "F"},
            {"url": "http://example.org/unknown", "valueDecimal": 1.5},
        ],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"}],
        "name": [{"use": "official", "family": "Quixote", "given": ["Zelda"]}],
        "telecom": [{"system": "phone", "value": "555-867-5309"}],
        "gender": "female",
        "birthDate": "1970-06-15",
        "address": [
            {
                "line": ["12 Windmill Lane"],
                "city": "La Mancha",
                "district": "Somewhere County",
                "state": "MA",
                "postalCode": "01843",
                "country": "US",
                "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation"}],
            }
        ],
        "photo": [{"data": "aGVsbG8="}],
        "contact": [{"name": {"family": "Panza"}}],
        "link": [{"other": {"reference": "Patient/pat-2"}, "type": "seealso"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org", "code": "M"}], "text": "Married"},
    }
    patient.update(overrides)
    return patient


def encounter(patient_id: str = "pat-1") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "enc-1",
        "identifier": [{"value": "visit-77"}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": f"Patient/{patient_id}", "display": "Mrs. Zelda Quixote"},
        "participant": [{"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|99"}}],
        "period": {"start": "2020-03-01T10:15:00-05:00", "end": "2020-03-01T11:00:00-05:00"},
        "meta": {"lastUpdated": "2020-03-02T00:00:00Z", "versionId": "3"},
    }


def observation(patient_id: str = "pat-1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
        "subject": {"reference": f"urn:uuid:{patient_id}"},
        "encounter": {"reference": "https://fhir.example.org/r4/Encounter/enc-1/_history/2"},
        "effectiveDateTime": "2020-03-01",
        "issued": "2020-03-01T10:20:00.123Z",
        "valueQuantity": {"value": 128, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "valueString": "Patient Zelda said she felt dizzy",
        "note": [{"text": "call back at 555-867-5309"}],
        "hasMember": [{"reference": "#contained-1"}],
    }


def strip_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """Drops the policy stamp (meta.tag/meta.security) so tests can compare the rest."""
    out = dict(resource)
    meta = {k: v for k, v in out.pop("meta", {}).items() if k not in ("tag", "security")}
    if meta:
        out["meta"] = meta
    return out


def run(
    resource: dict[str, Any], key: bytes = KEY, redactor: Redactor | None = None
) -> tuple[dict[str, Any], Counter[str]]:
    stats: Counter[str] = Counter()
    outcome = deidentify_resource(copy.deepcopy(resource), key, stats, RULES, POLICY, redactor=redactor)
    return strip_meta(outcome.resource), stats


def run_patient(resource: dict[str, Any], end_of_data: str = "2021-01-01") -> tuple[dict[str, Any], Counter[str]]:
    stats: Counter[str] = Counter()
    redactor = Redactor(known_identifiers_from_patient(resource))
    out = deidentify_patient(copy.deepcopy(resource), KEY, stats, end_of_data, RULES, POLICY, redactor)
    return strip_meta(out), stats


# --- key handling ----------------------------------------------------------------------------


def test_missing_key_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"CLINFLOW_HMAC_KEY is not set.*export CLINFLOW_HMAC_KEY"):
        load_key({})


def test_short_key_is_a_user_error_without_echoing_the_key() -> None:
    with pytest.raises(UserError, match="too short") as caught:
        load_key({"CLINFLOW_HMAC_KEY": "short-secret-value"})
    assert "short-secret-value" not in str(caught.value)


def test_key_from_environment(hmac_key: str) -> None:
    assert load_key() == hmac_key.encode()


# --- pseudonyms and references ---------------------------------------------------------------


def test_pseudonym_is_stable_per_key_and_differs_between_keys() -> None:
    first = pseudonym(KEY, "Patient", "pat-1")
    assert first == pseudonym(KEY, "Patient", "pat-1")
    assert first != pseudonym(OTHER_KEY, "Patient", "pat-1")
    assert first != pseudonym(KEY, "Encounter", "pat-1")
    assert len(first) == 64 and int(first, 16) >= 0
    assert run(encounter())[0] == run(encounter())[0]
    assert run(encounter())[0]["id"] != run(encounter(), OTHER_KEY)[0]["id"]


def test_references_match_the_pseudonyms_of_their_targets_across_resources() -> None:
    patient_out, _ = run_patient(make_patient())
    encounter_out, _ = run(encounter())
    observation_out, stats = run(observation())
    assert encounter_out["subject"] == {"reference": f"Patient/{patient_out['id']}"}
    assert observation_out["subject"]["reference"] == f"Patient/{patient_out['id']}"  # urn:uuid form
    assert observation_out["encounter"]["reference"] == f"Encounter/{encounter_out['id']}"  # absolute URL
    assert observation_out["hasMember"] == [{"reference": "#contained-1"}]  # contained stays
    assert stats[REWRITTEN_PREFIX + policy.REFERENCES_REKEYED] == 2


def test_conditional_reference_becomes_a_stable_pseudonym_without_the_identifier() -> None:
    out, _ = run(encounter())
    reference = out["participant"][0]["individual"]["reference"]
    assert reference.startswith("Practitioner/") and "npi" not in reference and "|99" not in reference
    assert reference == run(encounter())[0]["participant"][0]["individual"]["reference"]


def test_unresolvable_references_are_removed() -> None:
    assert rewrite_reference(KEY, "urn:oid:1.2.3", {}, "subject") is None
    assert rewrite_reference(KEY, "urn:uuid:abc", {}, "performer") is None  # type unknown
    assert rewrite_reference(KEY, "urn:uuid:abc", {"type": "Practitioner"}, "performer") == (
        f"Practitioner/{pseudonym(KEY, 'Practitioner', 'abc')}"
    )


def test_resource_finds_its_patient() -> None:
    assert resource_patient_id(make_patient()) == "pat-1"
    assert resource_patient_id(encounter("p9")) == "p9"
    assert resource_patient_id({"resourceType": "Claim", "patient": {"reference": "Patient/p3"}}) == "p3"
    assert resource_patient_id({"resourceType": "Coverage", "beneficiary": {"reference": "Patient/p4"}}) == "p4"
    assert resource_patient_id({"resourceType": "Organization", "id": "o1"}) is None


def test_uids_are_rekeyed_to_stable_2_25_uids() -> None:
    uid = pseudonymous_uid(KEY, "1.2.840.99999.1")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid == pseudonymous_uid(KEY, "1.2.840.99999.1")
    assert uid != pseudonymous_uid(OTHER_KEY, "1.2.840.99999.1")


# --- dates -----------------------------------------------------------------------------------


def test_date_offset_is_never_zero_and_within_a_year() -> None:
    offsets = {date_offset_days(KEY, f"patient-{n}") for n in range(2000)}
    assert 0 not in offsets
    assert min(offsets) >= -365 and max(offsets) <= 365
    assert min(offsets) < -300 and max(offsets) > 300  # spread over the whole range


def test_shift_keeps_precision_time_and_zone() -> None:
    assert shift_date("2020-03-01", 10) == "2020-03-11"
    assert shift_date("2020-03-01T10:15:00-05:00", -1) == "2020-02-29T10:15:00-05:00"
    assert shift_date("2020-12-31T23:59:59.5Z", 1) == "2021-01-01T23:59:59.5Z"
    assert shift_date("2020-03", 40) == "2020-04"
    assert shift_date("2020", 200) == "2021"
    assert shift_date("2019-02-30", 5) is None
    assert looks_like_date("1984", "birthDate") and not looks_like_date("1984", "code")
    assert not looks_like_date("8480-6", "valueString")


def test_one_date_shift_per_patient_across_all_resources() -> None:
    patient_out, _ = run_patient(make_patient())
    encounter_out, _ = run(encounter())
    observation_out, _ = run(observation())
    offset = date_offset_days(KEY, "pat-1")
    expected = dt.timedelta(days=offset)
    assert dt.date.fromisoformat(patient_out["birthDate"]) - dt.date(1970, 6, 15) == expected
    assert dt.date.fromisoformat(encounter_out["period"]["start"][:10]) - dt.date(2020, 3, 1) == expected
    assert dt.date.fromisoformat(observation_out["effectiveDateTime"]) - dt.date(2020, 3, 1) == expected
    assert encounter_out["period"]["start"][10:] == "T10:15:00-05:00"
    assert dt.date.fromisoformat(encounter_out["meta"]["lastUpdated"][:10]) - dt.date(2020, 3, 2) == expected
    other, _ = run(encounter("pat-2"))
    assert other["period"]["start"] != encounter_out["period"]["start"] or date_offset_days(KEY, "pat-2") == offset


def test_dates_of_resources_without_a_patient_are_removed() -> None:
    organization = {"resourceType": "Organization", "id": "o1", "meta": {"lastUpdated": "2020-01-01T00:00:00Z"}}
    out, stats = run(organization)
    assert "meta" not in out
    assert stats[REMOVED_PREFIX + policy.DATES_REMOVED] == 1
    stamped = deidentify_resource(organization, KEY, Counter(), RULES, POLICY).resource["meta"]
    assert {"system": policy.POLICY_TAG_SYSTEM, "code": "safe-harbor@1.0.0"} in stamped["tag"]
    assert {"system": policy.POLICY_HASH_TAG_SYSTEM, "code": POLICY.sha256} in stamped["tag"]
    assert {"system": policy.SECURITY_SYSTEM, "code": "PSEUDED"} in stamped["security"]


def test_age_over_89_is_capped_at_90_on_the_shifted_end_of_data() -> None:
    out, stats = run_patient(make_patient(birthDate="1920-06-15"), end_of_data="2021-01-01")
    offset = dt.timedelta(days=date_offset_days(KEY, "pat-1"))
    birth = dt.date.fromisoformat(out["birthDate"])
    reference = dt.date(2021, 1, 1) + offset
    age = reference.year - birth.year - ((reference.month, reference.day) < (birth.month, birth.day))
    assert age == 90
    assert stats[REWRITTEN_PREFIX + policy.AGES_CAPPED] == 1
    young, young_stats = run_patient(make_patient(birthDate="1990-06-15"))
    assert young_stats[REWRITTEN_PREFIX + policy.AGES_CAPPED] == 0
    assert dt.date.fromisoformat(young["birthDate"]) - dt.date(1990, 6, 15) == offset


def test_age_at_death_is_what_counts() -> None:
    _, stats = run_patient(make_patient(birthDate="1925-01-01", deceasedDateTime="2010-01-01T00:00:00Z"))
    assert stats[REWRITTEN_PREFIX + policy.AGES_CAPPED] == 0  # 85 at death


# --- the element walk ------------------------------------------------------------------------


def test_patient_identifying_elements_are_gone() -> None:
    out, stats = run_patient(make_patient())
    for element in ("text", "identifier", "name", "telecom", "photo", "contact", "link"):
        assert element not in out, element
    assert out["address"] == [{"state": "MA", "postalCode": "018", "country": "US"}]
    assert [e["url"] for e in out["extension"]] == [RACE, policy.US_CORE + "us-core-birthsex"]
    assert out["extension"][0]["extension"][1] == {"url": "text", "valueString": "White"}
    assert out["maritalStatus"]["text"] == "Married"  # CodeableConcept text next to a coding
    text = orjson.dumps(out).decode()
    for value in (
        "Quixote",
        "Zelda",
        "999-12-3456",
        "555-867-5309",
        "Windmill",
        "Mancha",
        "Somewhere",
        "Wilhelmina",
        "Gotham",
        "pat-1",
        "pat-2",
    ):
        assert value not in text, value
    assert stats[REMOVED_PREFIX + policy.EXTENSIONS] == 1  # the unknown URL
    assert stats[REMOVED_PREFIX + "names"] == 3  # name, mother's maiden name, contact
    assert stats[REMOVED_PREFIX + "geographic"] == 2  # birthPlace, street/city/district of the address
    assert stats[REMOVED_PREFIX + "ssn"] == 1 and stats[REMOVED_PREFIX + "telephone"] == 1
    assert stats[REMOVED_PREFIX + policy.NARRATIVES] == 1


@pytest.mark.parametrize(
    ("postal_code", "expected"),
    [("03601", "000"), ("05901-1234", "000"), ("89301", "000"), ("02139", "021"), ("10001", "100")],
)
def test_restricted_zip3_becomes_000(postal_code: str, expected: str) -> None:
    out, _ = run_patient(make_patient(address=[{"postalCode": postal_code, "state": "NH"}]))
    assert out["address"] == [{"postalCode": expected, "state": "NH"}]
    assert len(RULES.restricted_zip3) == 17


def test_non_us_postal_code_is_removed() -> None:
    out, stats = run_patient(make_patient(address=[{"postalCode": "SW1A 1AA", "country": "GB"}]))
    assert out["address"] == [{"country": "GB"}]
    assert stats[REMOVED_PREFIX + "geographic"] == 2  # the postal code and the birthPlace extension


def test_free_text_redacted_with_the_patients_values_reference_display_removed_coded_display_kept() -> None:
    redactor = Redactor(known_identifiers_from_patient(make_patient()))
    out, stats = run(observation(), redactor=redactor)
    assert out["valueString"] == "Patient [NAME] said she felt dizzy"
    assert out["note"] == [{"text": "call back at [PHONE]"}]
    assert stats[FREE_TEXT_PREFIX + "name"] == 1 and stats[FREE_TEXT_PREFIX + "phone"] == 1
    assert out["code"]["coding"][0]["display"] == "Systolic blood pressure"
    assert out["valueQuantity"]["value"] == 128
    enc, _ = run(encounter())
    assert "display" not in enc["subject"]
    assert "identifier" not in enc and "versionId" not in enc["meta"]


def test_free_text_waits_for_its_patient_when_deferred() -> None:
    outcome = deidentify_resource(observation(), KEY, Counter(), RULES, POLICY, defer_text=True)
    assert outcome.needs_text and outcome.patient_id == "pat-1"
    organization = {"resourceType": "Organization", "id": "o", "type": [{"text": "call 555-867-5309"}]}
    outcome = deidentify_resource(organization, KEY, Counter(), RULES, POLICY, defer_text=True)
    assert not outcome.needs_text and outcome.resource["type"] == [{"text": "call [PHONE]"}]


def test_practitioner_and_organization_lose_names_contacts_and_identifiers() -> None:
    practitioner = {
        "resourceType": "Practitioner",
        "id": "pr-1",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999999"}],
        "name": [{"family": "Casey", "given": ["Ben"], "prefix": ["Dr."]}],
        "telecom": [{"system": "email", "value": "ben@example.org"}],
        "address": [{"line": ["1 Hospital Way"], "city": "Springfield", "state": "MA"}],
        "gender": "male",
    }
    organization = {
        "resourceType": "Organization",
        "id": "o-1",
        "name": "General Hospital",
        "alias": ["GH"],
        "type": [{"coding": [{"system": "http://terminology.hl7.org", "code": "prov"}]}],
    }
    practitioner_out, _ = run(practitioner)
    assert practitioner_out == {  # names, telecom, address and the NPI removed
        "resourceType": "Practitioner",
        "id": pseudonym(KEY, "Practitioner", "pr-1"),
        "gender": "male",
    }
    organization_out, _ = run(organization)
    assert set(organization_out) == {"resourceType", "id", "type"}
    organization["address"] = [{"line": ["1 Hospital Way"], "city": "Springfield", "state": "MA"}]
    assert run(organization)[0]["address"] == [{"state": "MA"}]  # the policy keeps an organization's state


def test_unknown_string_elements_fail_closed_and_are_counted_by_path() -> None:
    resource = {
        "resourceType": "Condition",
        "id": "c-1",
        "subject": {"reference": "Patient/pat-1"},
        "mysteryField": "Zelda Quixote lives here",
        "stage": [{"summary": {"coding": [{"code": "1"}]}, "freeNotes": "spoke with Zelda"}],
        "onsetDateTime": "2019-01-01",
        "nullField": None,
    }
    out, stats = run(resource)
    assert "mysteryField" not in out and "freeNotes" not in out["stage"][0] and "nullField" not in out
    assert stats[UNCLASSIFIED_PATH_PREFIX + "Condition.mysteryField"] == 1
    assert stats[UNCLASSIFIED_PATH_PREFIX + "Condition.stage.freeNotes"] == 1
    assert stats[REMOVED_PREFIX + policy.UNCLASSIFIED] == 3


def test_invalid_element_names_are_not_echoed_in_paths() -> None:
    _, stats = run({"resourceType": "Basic", "id": "b", "Zelda Quixote": "x"})
    paths = [name for name in stats if name.startswith(UNCLASSIFIED_PATH_PREFIX)]
    assert paths == [UNCLASSIFIED_PATH_PREFIX + "Basic.<invalid-key>"]


def test_contained_resources_keep_local_ids_and_are_walked() -> None:
    eob = {
        "resourceType": "ExplanationOfBenefit",
        "id": "e-1",
        "patient": {"reference": "Patient/pat-1"},
        "contained": [
            {
                "resourceType": "ServiceRequest",
                "id": "referral",
                "subject": {"reference": "Patient/pat-1"},
                "requester": {"reference": "Practitioner/pr-1", "display": "Dr. Ben Casey"},
                "text": {"div": "<div>x</div>"},
            }
        ],
        "referral": {"reference": "#referral"},
    }
    out, _ = run(eob)
    contained = out["contained"][0]
    assert contained["id"] == "referral" and out["referral"] == {"reference": "#referral"}
    assert contained["requester"] == {"reference": f"Practitioner/{pseudonym(KEY, 'Practitioner', 'pr-1')}"}
    assert "text" not in contained


def test_device_identifiers_removed_and_model_name_kept() -> None:
    device = {
        "resourceType": "Device",
        "id": "d-1",
        "patient": {"reference": "Patient/pat-1"},
        "udiCarrier": [{"deviceIdentifier": "0123", "carrierHRF": "(01)0123"}],
        "serialNumber": "SN-42",
        "lotNumber": "L-1",
        "distinctIdentifier": "D-1",
        "deviceName": [{"name": "Cardiac pacemaker", "type": "user-friendly-name"}],
        "expirationDate": "2040-01-01",
    }
    out, stats = run(device)
    assert out["deviceName"] == [{"name": "Cardiac pacemaker", "type": "user-friendly-name"}]
    for element in ("udiCarrier", "serialNumber", "lotNumber", "distinctIdentifier"):
        assert element not in out
    assert stats[REMOVED_PREFIX + "device_identifiers"] == 4


def test_input_resource_is_not_modified() -> None:
    original = make_patient()
    snapshot = copy.deepcopy(original)
    deidentify_patient(original, KEY, Counter(), "2021-01-01", RULES, POLICY)
    assert original == snapshot


def _observation(number: int, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{number}",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-vital-signs"]},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2020-03-04T10:00:00Z",
        "valueQuantity": {"value": 170 + number, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"},
        "note": [{"text": f"Seen with {patient} at 555-010-{1000 + number}"}],
        "component": [{"code": {"text": "unknown element"}, "mystery": "Zelda Quixote"}],
    }


def test_memoised_walk_gives_the_same_output_and_counts_as_a_fresh_walk() -> None:
    """Identical objects repeat across resources; the memo must not change any output or count."""
    redactor = Redactor(None)
    outputs, counts = [], []
    for number in range(200):
        stats: Counter[str] = Counter()
        resource = _observation(number % 3, "pat-1")
        outcome = deidentify_resource(resource, KEY, stats, RULES, POLICY, redactor=redactor)
        outputs.append(orjson.dumps(outcome.resource))
        counts.append(stats)
    assert outputs[0] == outputs[3] == outputs[198]
    assert counts[0] == counts[3] == counts[198]
    assert counts[0][UNCLASSIFIED_PATH_PREFIX + "Observation.component.mystery"] == 1
    assert b"Zelda" not in outputs[0]
    assert b"555-010" not in outputs[0]


def test_policy_stamp_never_grows_a_shared_meta() -> None:
    """``meta`` objects may be shared through the memo; stamping must copy, not extend in place."""
    for number in range(100):
        outcome = deidentify_resource(_observation(number, "pat-2"), KEY, Counter(), RULES, POLICY)
        tags = outcome.resource["meta"]["tag"]
        assert len(tags) == 2, tags
        assert len(outcome.resource["meta"]["security"]) == 2
