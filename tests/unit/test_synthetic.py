"""The synthetic FHIR Bulk generator: determinism, counts, PHI coverage, references and signal."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from clinflow.errors import UserError
from clinflow.prediction_task import (
    CHRONIC_RISK_CONDITION_CODES,
    HORIZON_DAYS,
    LOINC_BMI,
    LOINC_HBA1C,
    LOINC_SYSTOLIC_BP,
    is_acute_encounter_class,
)
from clinflow.synthetic import RESOURCE_TYPES, file_name, generate_fhir_bulk
from clinflow.synthetic.__main__ import main as cli_main

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
REFERENCE_END = datetime(2025, 6, 30, 23, 59, 59, tzinfo=timezone.utc)


def read_export(directory: Path, types: tuple[str, ...] = RESOURCE_TYPES) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.iterdir()):
        if path.name.split(".")[0] not in types:
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            found[path.name.split(".")[0]] = [json.loads(line) for line in handle]
    return found


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="module")
def export(synthetic_fhir_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return read_export(synthetic_fhir_dir)


@pytest.fixture(scope="module")
def larger_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("synthetic-600")
    generate_fhir_bulk(out, patients=600, seed=11)
    return read_export(out, ("Patient", "Encounter", "Condition"))


# --------------------------------------------------------------------------- determinism and counts


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_fhir_bulk(first, patients=25, seed=3)
    generate_fhir_bulk(second, patients=25, seed=3)
    generate_fhir_bulk(other, patients=25, seed=4)
    for resource_type in RESOURCE_TYPES:
        name = file_name(resource_type, compress=False)
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "Patient.000.ndjson").read_bytes() != (other / "Patient.000.ndjson").read_bytes()


def test_gzip_and_worker_processes_give_identical_bytes(tmp_path: Path) -> None:
    generate_fhir_bulk(tmp_path / "a", patients=60, seed=5, compress=True)
    generate_fhir_bulk(tmp_path / "b", patients=60, seed=5, compress=True, workers=2)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(file_name(t, compress=True) for t in RESOURCE_TYPES)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    plain = tmp_path / "plain"
    generate_fhir_bulk(plain, patients=60, seed=5)
    assert (
        gzip.decompress((tmp_path / "a" / "Patient.000.ndjson.gz").read_bytes())
        == (plain / "Patient.000.ndjson").read_bytes()
    )


def test_counts_match_the_files_and_resource_types(tmp_path: Path) -> None:
    counts = generate_fhir_bulk(tmp_path, patients=40, seed=8)
    assert set(counts) == set(RESOURCE_TYPES)
    assert counts["Patient"] == 40
    for resource_type, count in counts.items():
        lines = (tmp_path / file_name(resource_type, False)).read_text(encoding="utf-8").splitlines()
        assert len(lines) == count
        assert all(json.loads(line)["resourceType"] == resource_type for line in lines)
    assert counts["Encounter"] > 40 and counts["Observation"] > counts["Encounter"]


def test_regenerating_with_gzip_removes_the_plain_twin(tmp_path: Path) -> None:
    generate_fhir_bulk(tmp_path, patients=3, seed=1)
    generate_fhir_bulk(tmp_path, patients=3, seed=1, compress=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(file_name(t, True) for t in RESOURCE_TYPES)


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least 1 patient"):
        generate_fhir_bulk(tmp_path, patients=0, seed=1)
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        generate_fhir_bulk(target, patients=1, seed=1)


def test_cli_writes_gzip_export_and_has_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--patients", "5", "--seed", "2", "--output", str(tmp_path), "--gzip", "--quiet"]) == 0
    assert "Patient.000.ndjson.gz" in capsys.readouterr().out
    assert len(gzip.decompress((tmp_path / "Patient.000.ndjson.gz").read_bytes()).splitlines()) == 5
    result = subprocess.run(
        [sys.executable, "-m", "clinflow.synthetic", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--patients", "--seed", "--output", "--gzip", "--workers"):
        assert flag in result.stdout


# --------------------------------------------------------------------------- PHI coverage


def extension(resource: dict[str, Any], suffix: str) -> dict[str, Any] | None:
    return next((e for e in resource.get("extension", []) if e["url"].endswith(suffix)), None)


def identifier(resource: dict[str, Any], type_code: str) -> dict[str, Any] | None:
    for item in resource["identifier"]:
        codes = [c["code"] for c in item.get("type", {}).get("coding", [])]
        if type_code in codes:
            return item
    return None


def test_every_patient_carries_the_phi_synthea_fills(export: dict[str, list[dict[str, Any]]]) -> None:
    for patient in export["Patient"]:
        official = next(n for n in patient["name"] if n["use"] == "official")
        assert official["family"] in patient["text"]["div"] and official["given"][0] in patient["text"]["div"]
        assert any(t["system"] == "phone" and re.fullmatch(r"555-\d{3}-\d{4}", t["value"]) for t in patient["telecom"])
        address = patient["address"][0]
        assert {"line", "city", "state", "postalCode", "country"} <= set(address)
        geo = address["extension"][0]
        assert geo["url"].endswith("/geolocation")
        assert {e["url"] for e in geo["extension"]} == {"latitude", "longitude"}
        ssn = identifier(patient, "SS")
        assert ssn and ssn["system"] == "http://hl7.org/fhir/sid/us-ssn"
        assert re.fullmatch(r"999-\d{2}-\d{4}", ssn["value"])
        assert identifier(patient, "MR")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", patient["birthDate"])
        assert patient["maritalStatus"]["coding"][0]["code"] in {"M", "S", "D", "W"}
        assert "multipleBirthBoolean" in patient or "multipleBirthInteger" in patient
        assert patient["communication"][0]["language"]["coding"][0]["system"] == "urn:ietf:bcp:47"
        for suffix in (
            "us-core-race",
            "us-core-ethnicity",
            "us-core-birthsex",
            "patient-mothersMaidenName",
            "disability-adjusted-life-years",
            "quality-adjusted-life-years",
        ):
            assert extension(patient, suffix), suffix
        birthplace = extension(patient, "patient-birthPlace")
        assert birthplace and {"city", "state", "country"} <= set(birthplace["valueAddress"])


def test_optional_phi_appears_somewhere(export: dict[str, list[dict[str, Any]]]) -> None:
    patients = export["Patient"]
    assert any(n["use"] == "maiden" for p in patients for n in p["name"])
    assert any("prefix" in n for p in patients for n in p["name"])
    assert any("suffix" in n for p in patients for n in p["name"])
    assert any(t["system"] == "email" for p in patients for t in p["telecom"])
    assert any(identifier(p, "DL") for p in patients)
    assert any(identifier(p, "PPN") for p in patients)
    assert any("deceasedDateTime" in p for p in patients)
    assert {p["gender"] for p in patients} >= {"female", "male"}


def test_providers_carry_names_addresses_and_npis(export: dict[str, list[dict[str, Any]]]) -> None:
    for practitioner in export["Practitioner"]:
        assert practitioner["identifier"][0]["system"] == "http://hl7.org/fhir/sid/us-npi"
        assert practitioner["name"][0]["family"] and practitioner["address"][0]["city"]
    for organization in export["Organization"]:
        systems = {i["system"] for i in organization["identifier"]}
        assert "http://hl7.org/fhir/sid/us-npi" in systems
        assert organization["name"] and organization["address"][0]["line"]


# --------------------------------------------------------------------------- clinical content


def test_references_resolve(export: dict[str, list[dict[str, Any]]]) -> None:
    ids = {t: {r["id"] for r in export[t]} for t in RESOURCE_TYPES}
    for encounter in export["Encounter"]:
        assert encounter["subject"]["reference"].removeprefix("Patient/") in ids["Patient"]
        assert (
            encounter["participant"][0]["individual"]["reference"].removeprefix("Practitioner/") in ids["Practitioner"]
        )
        assert encounter["serviceProvider"]["reference"].removeprefix("Organization/") in ids["Organization"]
    for resource_type in ("Condition", "Observation", "MedicationRequest"):
        for resource in export[resource_type]:
            assert resource["subject"]["reference"].removeprefix("Patient/") in ids["Patient"]
            assert resource["encounter"]["reference"].removeprefix("Encounter/") in ids["Encounter"]
    all_ids = [r["id"] for t in RESOURCE_TYPES for r in export[t]]
    assert len(all_ids) == len(set(all_ids))


def test_encounters_conditions_observations_medications(export: dict[str, list[dict[str, Any]]]) -> None:
    classes = Counter(e["class"]["code"] for e in export["Encounter"])
    assert set(classes) == {"AMB", "EMER", "IMP"}
    assert all(e["class"]["system"] == ACT_CODE for e in export["Encounter"])
    assert all(e["type"][0]["coding"][0]["system"] == "http://snomed.info/sct" for e in export["Encounter"])
    assert all(when(e["period"]["start"]) <= when(e["period"]["end"]) for e in export["Encounter"])
    assert any("reasonCode" in e for e in export["Encounter"])

    condition_codes = {c["code"]["coding"][0]["code"] for c in export["Condition"]}
    assert condition_codes & CHRONIC_RISK_CONDITION_CODES
    assert any("abatementDateTime" in c for c in export["Condition"])
    assert all("onsetDateTime" in c for c in export["Condition"])

    codes = Counter(o["code"]["coding"][0]["code"] for o in export["Observation"])
    assert {"85354-9", LOINC_BMI, LOINC_HBA1C, "29463-7", "8302-2"} <= set(codes)
    panel = next(o for o in export["Observation"] if o["code"]["coding"][0]["code"] == "85354-9")
    assert {c["code"]["coding"][0]["code"] for c in panel["component"]} == {LOINC_SYSTOLIC_BP, "8462-4"}
    for observation in export["Observation"]:
        quantities = [observation.get("valueQuantity")] + [c["valueQuantity"] for c in observation.get("component", [])]
        for quantity in filter(None, quantities):
            assert quantity["system"] == "http://unitsofmeasure.org" and isinstance(quantity["value"], (int, float))
        assert "effectiveDateTime" in observation

    for medication in export["MedicationRequest"]:
        assert (
            medication["medicationCodeableConcept"]["coding"][0]["system"]
            == "http://www.nlm.nih.gov/research/umls/rxnorm"
        )
        assert medication["authoredOn"] and medication["requester"]["reference"].startswith("Practitioner/")


def test_births_deaths_and_history_window(export: dict[str, list[dict[str, Any]]]) -> None:
    for patient in export["Patient"]:
        assert "1930-01-01" <= patient["birthDate"] <= "2020-12-31"
        if "deceasedDateTime" in patient:
            assert when(patient["deceasedDateTime"]) <= REFERENCE_END
    starts = [when(e["period"]["start"]) for e in export["Encounter"]]
    assert max(starts) <= REFERENCE_END
    assert max(starts) >= REFERENCE_END - timedelta(days=30)
    recent = [s for s in starts if s >= REFERENCE_END - timedelta(days=4 * 365)]
    assert len({s.year for s in recent}) >= 4


# --------------------------------------------------------------------------- signal


def acute_starts(export: dict[str, list[dict[str, Any]]]) -> dict[str, list[datetime]]:
    found: dict[str, list[datetime]] = defaultdict(list)
    for encounter in export["Encounter"]:
        if is_acute_encounter_class(encounter["class"]["code"]):
            found[encounter["subject"]["reference"].removeprefix("Patient/")].append(when(encounter["period"]["start"]))
    return found


def chronic_patients(export: dict[str, list[dict[str, Any]]], before: datetime) -> set[str]:
    return {
        c["subject"]["reference"].removeprefix("Patient/")
        for c in export["Condition"]
        if c["code"]["coding"][0]["code"] in CHRONIC_RISK_CONDITION_CODES and when(c["onsetDateTime"]) < before
    }


def auroc(scores: list[float], labels: list[int]) -> float:
    """Mann-Whitney AUROC with average ranks for ties."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and scores[order[stop + 1]] == scores[order[start]]:
            stop += 1
        for k in range(start, stop + 1):
            ranks[order[k]] = (start + stop) / 2 + 1
        start = stop + 1
    positives = sum(labels)
    negatives = len(labels) - positives
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def patient_quarters(export: dict[str, list[dict[str, Any]]]) -> tuple[list[float], list[int]]:
    """Scores and 90-day labels per living patient per quarter over the last three years."""
    acute = acute_starts(export)
    births = {p["id"]: datetime.fromisoformat(p["birthDate"]).replace(tzinfo=timezone.utc) for p in export["Patient"]}
    deaths = {p["id"]: when(p["deceasedDateTime"]) for p in export["Patient"] if "deceasedDateTime" in p}
    scores: list[float] = []
    labels: list[int] = []
    t = datetime(2022, 4, 15, tzinfo=timezone.utc)
    while t + timedelta(days=HORIZON_DAYS) <= REFERENCE_END:
        chronic = chronic_patients(export, t)
        for patient_id, birth in births.items():
            if birth > t or deaths.get(patient_id, REFERENCE_END) <= t:
                continue
            starts = acute.get(patient_id, [])
            past = sum(1 for s in starts if t - timedelta(days=365) <= s < t)
            labels.append(int(any(t < s <= t + timedelta(days=HORIZON_DAYS) for s in starts)))
            scores.append(past + (patient_id in chronic) + (t - birth).days / 365.25 / 40)
        t += timedelta(days=91)
    return scores, labels


def test_chronic_patients_have_more_acute_encounters(larger_export: dict[str, list[dict[str, Any]]]) -> None:
    acute = acute_starts(larger_export)
    window_start = REFERENCE_END - timedelta(days=3 * 365)
    chronic = chronic_patients(larger_export, window_start)
    with_chronic = [
        sum(s >= window_start for s in acute.get(p["id"], [])) for p in larger_export["Patient"] if p["id"] in chronic
    ]
    without = [
        sum(s >= window_start for s in acute.get(p["id"], []))
        for p in larger_export["Patient"]
        if p["id"] not in chronic
    ]
    assert len(with_chronic) >= 50 and len(without) >= 50
    assert sum(with_chronic) / len(with_chronic) > 2 * sum(without) / len(without)


def test_positive_rate_and_past_features_beat_chance(larger_export: dict[str, list[dict[str, Any]]]) -> None:
    scores, labels = patient_quarters(larger_export)
    rate = sum(labels) / len(labels)
    assert 0.10 <= rate <= 0.25, rate
    assert auroc(scores, labels) > 0.68
