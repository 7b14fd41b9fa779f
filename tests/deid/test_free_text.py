"""Free-text PHI redaction: known identifiers of the patient, pattern PHI, XHTML narratives."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from clinflow.synthetic import generate_fhir_bulk
from components.deidentify.free_text import (
    CATEGORIES,
    KnownIdentifiers,
    Redactor,
    date_renderings,
    known_identifiers_from_patient,
    redact_xhtml,
)
from components.deidentify.pipeline import known_of, merge_known

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Greta Voss"},
        {
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "valueAddress": {"city": "Springfield", "state": "Massachusetts", "country": "US"},
        },
    ],
    "identifier": [
        {"system": "https://github.com/synthetichealth/synthea", "value": "6f1c2d3e-aaaa-4bbb-8ccc-123456789abc"},
        {"type": {"coding": [{"code": "MR"}]}, "value": "48213377"},
        {"type": {"coding": [{"code": "SS"}]}, "value": "999-41-2207"},
        {"type": {"coding": [{"code": "DL"}]}, "value": "S99954321"},
        {"type": {"coding": [{"code": "PPN"}]}, "value": "X41234567X"},
    ],
    "name": [
        {"use": "official", "family": "Okafor", "given": ["Adaeze", "Marie"], "prefix": ["Mrs."], "suffix": ["PhD"]},
        {"use": "maiden", "family": "Lindqvist", "given": ["Adaeze"]},
    ],
    "telecom": [
        {"system": "phone", "value": "555-318-0427"},
        {"system": "email", "value": "adaeze.okafor77@example.com"},
    ],
    "birthDate": "1948-07-04",
    "deceasedDateTime": "2021-11-30T08:15:00-05:00",
    "address": [{"line": ["742 Evergreen Terrace"], "city": "Shelbyville", "state": "MA", "postalCode": "01103"}],
}


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(known_identifiers_from_patient(PATIENT))


def redact(redactor: Redactor, text: str) -> str:
    return redactor.redact(text)[0]


def test_known_identifiers_from_patient_collects_every_field() -> None:
    known = known_identifiers_from_patient(PATIENT)
    for part in ("Okafor", "Adaeze", "Marie", "Mrs.", "PhD", "Lindqvist", "Greta Voss", "Voss", "Greta"):
        assert part in known.names
    assert {"48213377", "999-41-2207", "S99954321", "X41234567X"} <= set(known.identifiers)
    assert set(known.telecom) == {"555-318-0427", "adaeze.okafor77@example.com"}
    assert {"742 Evergreen Terrace", "Shelbyville", "01103", "Springfield"} <= set(known.addresses)
    assert known.dates == ("1948-07-04", "2021-11-30")


def test_known_identifiers_travel_encoded_and_merge_every_value() -> None:
    known = known_identifiers_from_patient(PATIENT)
    assert KnownIdentifiers.from_bytes(known.to_bytes()) == known
    other = KnownIdentifiers(names=("Zoë", "Okafor"), identifiers=("MRN-7",))
    merged = KnownIdentifiers.from_bytes(merge_known([known.to_bytes(), other.to_bytes()]))
    assert merged.names == (*known.names, "Zoë")  # every value of each, repeats once
    assert merged.identifiers == (*known.identifiers, "MRN-7") and merged.dates == known.dates
    assert merge_known([other.to_bytes()]) == other.to_bytes()
    side_input = {"p1": known.to_bytes()}
    assert known_of(side_input, "p1") == known
    assert known_of(side_input, "p2") is None and known_of(side_input, None) is None


@pytest.mark.parametrize(
    ("text", "expected", "category"),
    [
        ("Seen: Mrs. Adaeze Marie Okafor, PhD.", "Seen: [NAME] [NAME] [NAME] [NAME], [NAME].", "name"),
        ("OKAFOR, ADAEZE", "[NAME], [NAME]", "name"),
        ("née Lindqvist; mother Greta Voss", "née [NAME]; mother [NAME]", "name"),
        ("born in Springfield", "born in [ADDRESS]", "address"),
        ("lives at 742  Evergreen Terrace, Shelbyville", "lives at [ADDRESS], [ADDRESS]", "address"),
        ("zip 01103", "zip [ZIP]", "zip"),
        ("id 48213377 and S99954321 and x41234567x", "id [IDENTIFIER] and [IDENTIFIER] and [IDENTIFIER]", "identifier"),
        ("mail adaeze.okafor77@example.com", "mail [EMAIL]", "email"),
    ],
)
def test_known_values_are_redacted(redactor: Redactor, text: str, expected: str, category: str) -> None:
    redacted, counts = redactor.redact(text)
    assert redacted == expected
    assert counts[category] >= 1


@pytest.mark.parametrize(
    "rendering",
    ["318-0427", "555-318-0427", "(555) 318-0427", "555.318.0427", "5553180427", "+1 555 318 0427", "1-555-318-0427"],
)
def test_known_phone_in_any_formatting(redactor: Redactor, rendering: str) -> None:
    assert redact(redactor, f"call {rendering} today") == "call [PHONE] today"


@pytest.mark.parametrize("rendering", ["999-41-2207", "999412207", "999 41 2207"])
def test_known_ssn_with_and_without_dashes(redactor: Redactor, rendering: str) -> None:
    redacted = redact(redactor, f"ssn on file {rendering}.")
    assert "2207" not in redacted
    assert redacted.endswith("].")


@pytest.mark.parametrize(
    "rendering",
    ["1948-07-04", "07/04/1948", "7/4/1948", "7/4/48", "July 4, 1948", "Jul 4 1948", "4 July 1948", "19480704"],
)
def test_known_birth_date_renderings(redactor: Redactor, rendering: str) -> None:
    redacted, counts = redactor.redact(f"DOB {rendering}; follow-up")
    assert redacted == "DOB [DATE]; follow-up"
    assert counts["date"] == 1


def test_known_date_renderings_cover_all_forms() -> None:
    renderings = date_renderings("2021-03-05")
    for form in ("2021-03-05", "03/05/2021", "3/5/2021", "3/5/21", "March 5, 2021", "5 March 2021", "20210305"):
        assert form in renderings
    assert date_renderings("2021-02-30") == []


def test_longest_known_value_wins() -> None:
    known = KnownIdentifiers(names=("Ann", "Ann Marie"), addresses=("12 Ann Marie Street",))
    redacted, counts = Redactor(known).redact("from 12 Ann Marie Street; Ann Marie called")
    assert redacted == "from [ADDRESS]; [NAME] called"
    assert counts == {"address": 1, "name": 1}


def test_known_names_are_whole_word_only(redactor: Redactor) -> None:
    known = KnownIdentifiers(names=("Ann", "Lee"))
    assert (
        Redactor(known).redact("Annual review; Leeds; fleet; ANN. lee")[0]
        == "Annual review; Leeds; fleet; [NAME]. [NAME]"
    )


def test_unicode_names() -> None:
    known = KnownIdentifiers(names=("José", "Müller-Lüdenscheidt", "Łucja", "Ōtani"))
    redacted, counts = Redactor(known).redact("JOSÉ Müller-Lüdenscheidt met łucja ŌTANI; Josévich stays")
    assert redacted == "[NAME] [NAME] met [NAME] [NAME]; Josévich stays"
    assert counts["name"] == 4


@pytest.mark.parametrize(
    ("text", "expected", "category"),
    [
        ("Call 617-555-0100 ext 12 or (617) 555-0199.", "Call [PHONE] or [PHONE].", "phone"),
        ("phone: 6175550100", "phone: [PHONE]", "phone"),
        ("SSN 123-45-6789", "SSN [SSN]", "ssn"),
        ("social security number: 123456789", "social security number: [SSN]", "ssn"),
        ("write to someone.else@clinic.org now", "write to [EMAIL] now", "email"),
        ("portal https://portal.example.com/p?id=7, or www.example.org.", "portal [URL], or [URL].", "url"),
        ("from 192.168.10.4 today", "from [IP] today", "ip"),
        ("from fe80::1ff:fe23:4567:890a and 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "from [IP] and [IP]", "ip"),
        ("MRN: A1234567", "MRN: [MRN]", "mrn"),
        ("medical record number 7654321", "medical record number [MRN]", "mrn"),
        ("chart #123456789", "chart #[MRN]", "mrn"),
        ("Cambridge, MA 02139 and Texas 75001", "Cambridge, MA [ZIP] and Texas [ZIP]", "zip"),
        ("box 02139-1234", "box [ZIP]", "zip"),
        ("A 93-year-old woman", "A [AGE] woman", "age"),
        ("aged 95", "aged [AGE]", "age"),
        ("91 y/o male", "[AGE] male", "age"),
    ],
)
def test_pattern_phi(text: str, expected: str, category: str) -> None:
    redacted, counts = Redactor().redact(text)
    assert redacted == expected
    assert set(counts) == {category}


@pytest.mark.parametrize(
    "date",
    [
        "2021-04-05",
        "2021-04-05T10:30:00Z",
        "2021/4/5",
        "04/05/2021",
        "4/5/21",
        "04-05-2021",
        "04.05.2021",
        "20210405",
        "April 5, 2021",
        "Apr. 5th, 2021",
        "5 April 2021",
        "5th of April, 2021",
        "05-Apr-2021",
        "April 2021",
        "Sept 5",
        "APR 5 2021",
    ],
)
def test_date_patterns(date: str) -> None:
    redacted, counts = Redactor().redact(f"seen {date} in clinic")
    assert redacted == "seen [DATE] in clinic"
    assert counts == {"date": 1}


@pytest.mark.parametrize(
    "text",
    [
        "Hypertension, essential (disorder)",
        "LOINC 8867-4 heart rate 72 /min",
        "Lisinopril 5 mg daily; metformin 500 mg BID; insulin 10 units",
        "BP 120/80 mmHg; HbA1c 7.5 %; eGFR 60 mL/min/1.73m2",
        "SNOMED 44054006; RxNorm 314076; ICD-10 E11.9",
        "Mary Jane is not this patient",
        "A 45-year-old man, aged 60, 89 yo",
        "in 2021 the patient may 2 tablets",
        "OID 2.16.840.1.113883.4.3.25 version 1.2.3.4.5",
        "time 10:30:00; ratio 1:2; score 12345",
        "Follow up in 3 months; Grade 2/4 murmur; 3/4 strength",
    ],
)
def test_no_false_redaction_of_clinical_text(redactor: Redactor, text: str) -> None:
    assert redactor.redact(text) == (text, {})


def test_categories_can_be_restricted() -> None:
    only_dates = Redactor(categories=frozenset({"date"}))
    assert only_dates.redact("2021-04-05 call 617-555-0100")[0] == "[DATE] call 617-555-0100"
    with pytest.raises(ValueError, match="unknown free-text categories"):
        Redactor(categories=frozenset({"bogus"}))
    assert {"name", "identifier", "mrn", "ssn", "phone", "email", "url", "ip", "date", "address", "zip", "age"} == (
        CATEGORIES
    )


def test_known_values_redacted_even_with_patterns_disabled() -> None:
    known = KnownIdentifiers(names=("Okafor",), telecom=("555-318-0427",), dates=("1948-07-04",))
    restricted = Redactor(known, categories=frozenset())
    assert restricted.redact("Okafor 555 318 0427 7/4/1948 other 617-555-0100")[0] == (
        "[NAME] [PHONE] [DATE] other 617-555-0100"
    )


def test_redact_xhtml_redacts_text_and_drops_unsafe_attributes(redactor: Redactor) -> None:
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p class="x" title="Adaeze Okafor">'
        '<a href="https://portal.example.com/p/48213377">Adaeze <b>Okafor</b></a>, born 1948-07-04 &amp; MRN 48213377'
        '<img src="photo-okafor.png" alt="Okafor"/></p><br/></div>'
    )
    redacted, counts = redact_xhtml(div, redactor)
    assert redacted == (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p class="x"><a>[NAME] <b>[NAME]</b></a>, born [DATE] &amp; '
        "MRN [IDENTIFIER]<img/></p><br/></div>"
    )
    assert counts["attribute_removed"] == 4
    assert counts["name"] == 2


def test_redaction_speed_is_reported_not_asserted(redactor: Redactor) -> None:
    note = (
        "Mrs. Adaeze Okafor (MRN 48213377) seen 03/02/2021 for hypertension follow-up. BP 132/84. "
        "Continue lisinopril 10 mg daily. Call 555-318-0427 with questions. Dr. Sam Reyes"
    )
    start = time.perf_counter()
    for _ in range(500):
        redactor.redact(note)
    per_note_us = (time.perf_counter() - start) / 500 * 1e6
    print(f"free-text redaction: {per_note_us:.0f} us per {len(note)}-char note")


# --------------------------------------------------------------------------- old vs new (differential)


@pytest.mark.parametrize("seed", [3, 17])
def test_new_redactor_never_keeps_what_the_original_removed(
    tmp_path: Path, seed: int, legacy_redactor: ModuleType
) -> None:
    from components.deidentify.transform import provider_redactor

    bench = legacy_redactor
    generate_fhir_bulk(tmp_path, patients=20, seed=seed)
    export = bench.load_export(tmp_path)
    new_provider = provider_redactor(export.providers)
    old_provider = bench.legacy_provider_redactor(export.providers)
    knowns = {pid: known_identifiers_from_patient(patient) for pid, patient in export.patients.items()}
    new_redactors = {pid: Redactor(known) for pid, known in knowns.items()}
    old_redactors = {pid: bench.LegacyRedactor(known) for pid, known in knowns.items()}
    checked = 0
    for _, pid, texts in export.resources:
        for text in texts:
            new_text, new_counts = new_redactors.get(pid, Redactor()).redact(text)
            old_text, old_counts = old_redactors.get(pid, bench.LegacyRedactor()).redact(text)
            new_text, more = new_provider.redact(new_text)
            new_counts.update(more)
            old_text, more = old_provider.redact(old_text)
            old_counts.update(more)
            assert not bench.kept_tokens(old_text, new_text), "the new redactor keeps a token the original removed"
            assert bool(new_counts) >= bool(old_counts)
            checked += 1
    assert checked > 200


def test_overlapping_known_values_are_redacted_as_their_union() -> None:
    known = KnownIdentifiers(names=("Ann Marie", "Marie Lee"))
    redacted, counts = Redactor(known, categories=frozenset()).redact("Ann Marie Lee came")
    assert redacted == "[NAME] came"
    assert counts == {"name": 1}


def test_known_values_fold_case_like_the_regex_engine() -> None:
    known = KnownIdentifiers(names=("Kline", "Stein", "İpek"), identifiers=("AB-00012",))
    redacted = Redactor(known, categories=frozenset()).redact("\u212aLINE, ſtein, i̇pek, İPEK, ab00012, AB 00012")[0]
    assert redacted.count("[NAME]") == 3 and redacted.count("[IDENTIFIER]") == 2, redacted


def test_pattern_results_are_cached_without_changing_them() -> None:
    redactor = Redactor()
    first = redactor.redact("Take as directed; call 617-555-0100")
    second = redactor.redact("Take as directed; call 617-555-0100")
    assert first == second == ("Take as directed; call [PHONE]", {"phone": 1})
    second[1]["phone"] += 5  # callers own their counters
    assert redactor.redact("Take as directed; call 617-555-0100")[1] == {"phone": 1}


def test_long_notes_equal_the_original_redactor_exactly(tmp_path: Path, legacy_redactor: ModuleType) -> None:
    """Generated clinical notes joined across newlines, with PHI-like snippets between: byte-identical output."""
    import random

    bench = legacy_redactor
    generate_fhir_bulk(tmp_path, patients=12, seed=5)
    export = bench.load_export(tmp_path)
    notes = [
        max(texts, key=len) for resource_type, _, texts in export.resources if resource_type == "DocumentReference"
    ]
    assert len(notes) > 20
    snippets = [
        "MRN:\n12345678",
        "call +1 (555) 234-5678 x12",
        "seen 4th of September, 2018",
        "DOB 10/04/1959; 9/18/18",
        "Seattle, WA\n98165-1234",
        "SSN 123-45-6789",
        "a 95-year-old",
        "#1234567",
        "2020-01-02T10:30:00Z",
        "IP 10.0.0.1",
        "Zoë Kline, 01/02/2003",
    ]
    rnd = random.Random(41)
    knowns = {pid: known_identifiers_from_patient(patient) for pid, patient in export.patients.items()}
    patient_ids = sorted(knowns)
    for index in range(0, len(notes), 4):
        pieces = []
        for note in notes[index : index + 4]:
            pieces += [note, rnd.choice(["\n", "\n\n", " ", ""]), rnd.choice(snippets), rnd.choice(["\n", "\t", ", "])]
        text = "".join(pieces)
        known = knowns[patient_ids[index % len(patient_ids)]]
        assert Redactor().redact(text) == bench.LegacyRedactor().redact(text)
        assert Redactor(known).redact(text) == bench.LegacyRedactor(known).redact(text)
