"""End-to-end FHIR de-identification through ``components.deidentify.main`` on small real inputs.

Known identifiers are seeded into every field type of every resource type (narrative, notes,
identifiers, unknown elements and extensions, contained resources, attachments) of generated
data and of a slice of the shared Synthea export; every output byte (base64 attachments decoded)
is then searched with an independent matcher.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinflow.errors import UserError
from components.deidentify.keys import pseudonym
from components.deidentify.main import main

KEY_A = "fhir-deid-test-key-A-0123456789abcdef012345"
KEY_B = "fhir-deid-test-key-B-0123456789abcdef012345"
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
SEED_PREFIX = "SEEDX"


def stage_args(base: Path, input_dir: Path) -> list[str]:
    return [
        "--input-data",
        str(input_dir),
        "--output-data",
        str(base / "out"),
        "--dead-letter",
        str(base / "dead"),
        "--report",
        str(base / "report.html"),
        "--report-json",
        str(base / "report_json"),
        "--metrics",
        str(base / "metrics.json"),
    ]


def run(base: Path, input_dir: Path, key: str = KEY_A, *extra: str) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLINFLOW_HMAC_KEY", key)
        assert main([*stage_args(base, input_dir), *extra]) == 0
    return json.loads((base / "report_json" / "deid_report.json").read_text())


def read_resources(directory: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.glob("*.ndjson*")):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def write_resources(path: Path, resources: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")


def output_text(base: Path) -> str:
    """Every byte the stage wrote, with base64 attachment data decoded and appended."""
    parts = []
    for path in sorted(p for p in [*(base / "out").rglob("*"), *(base / "dead").glob("*")] if p.is_file()):
        text = path.read_text(encoding="utf-8")
        parts.append(text)
        for data in re.findall(r'"data":"([A-Za-z0-9+/=]+)"', text):
            parts.append(base64.b64decode(data).decode("utf-8", errors="replace"))
    parts += [(base / name).read_text(encoding="utf-8") for name in ("report.html", "metrics.json")]
    parts.append((base / "report_json" / "deid_report.json").read_text(encoding="utf-8"))
    return "\n".join(parts).lower()


def found(text: str, value: str) -> bool:
    """Whole-word, case-insensitive, any-separator match of a value's words."""
    words = re.findall(r"[^\W_]+", value.lower())
    if not words:
        return False
    return re.search(r"(?<![^\W_])" + r"[\W_]+".join(map(re.escape, words)) + r"(?![^\W_])", text) is not None


def patient_values(patient: dict[str, Any]) -> dict[str, str]:
    name = patient["name"][0]
    mrn = next(
        (i["value"] for i in patient.get("identifier", []) if "MR" in json.dumps(i.get("type", {}))),
        patient["identifier"][0]["value"],
    )
    return {
        "full": " ".join([*name.get("given", []), name["family"]]),
        "family": name["family"],
        "mrn": mrn,
        "phone": next((t["value"] for t in patient.get("telecom", []) if t.get("system") == "phone"), "555-010-9999"),
        "street": patient["address"][0]["line"][0],
        "city": patient["address"][0]["city"],
    }


def patient_of(resource: dict[str, Any]) -> str | None:
    for element in ("subject", "patient", "beneficiary"):
        reference = (
            (resource.get(element) or {}).get("reference", "") if isinstance(resource.get(element), dict) else ""
        )
        if reference.startswith("Patient/"):
            return reference.split("/", 1)[1]
        if reference.startswith("urn:uuid:"):
            return reference[len("urn:uuid:") :]
    return resource["id"] if resource.get("resourceType") == "Patient" else None


def seed(resource: dict[str, Any], values: dict[str, str] | None, number: int) -> list[str]:
    """Seeds known identifiers into every field type; returns the extra values that must vanish.

    Free text gets the resource's own patient's values (the only ones the redactor can know);
    resources without a patient get the structured seeds only.
    """
    secret = f"{SEED_PREFIX}{number:05d}Q"
    resource.setdefault("identifier", []).append({"system": "urn:seed", "value": secret + "I"})
    resource.setdefault("extension", []).append({"url": "http://example.org/unknown", "valueString": secret + "E"})
    resource["mysteryElement"] = secret + "M"
    if values is None:
        resource["text"] = {"status": "generated", "div": f"<div>{secret}</div>"}
        return [secret]
    note = f"Spoke with {values['full']} (MRN {values['mrn']}) at {values['phone']}, lives at {values['street']}."
    resource["text"] = {"status": "generated", "div": f"<div>{values['full']} {secret}</div>"}
    resource["note"] = [{"authorString": values["full"], "text": note}]
    resource["contained"] = [
        {
            "resourceType": "Practitioner",
            "id": "seeded",
            "name": [{"family": secret + "N"}],
            "telecom": [{"system": "email", "value": f"{secret.lower()}@example.org"}],
            "address": [{"line": [f"{secret}A Street"], "city": values["city"]}],
        }
    ]
    resource["description"] = f"Regarding {values['full']}, {values['city']}"
    resource.setdefault("presentedForm" if resource["resourceType"] != "Patient" else "photo", []).append(
        {"contentType": "text/plain", "data": base64.b64encode(note.encode()).decode(), "title": values["full"]}
    )
    return [secret]


def seeded_copy(source: Path, target: Path, per_type: int | None = None) -> list[str]:
    """Copies an export with seeded identifiers; returns every value that must not reach the output."""
    target.mkdir()
    resources = list(read_resources(source))
    patients = {r["id"]: patient_values(r) for r in resources if r["resourceType"] == "Patient"}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        kept = by_type.setdefault(resource["resourceType"], [])
        if per_type is None or resource["resourceType"] == "Patient" or len(kept) < per_type:
            kept.append(resource)
    forbidden: list[str] = []
    number = 0
    for resource_type, items in by_type.items():
        for resource in items:
            number += 1
            owner = patient_of(resource)
            values = patients.get(owner or "")
            forbidden += seed(resource, values, number)
            forbidden.append(resource["id"])
        write_resources(target / f"{resource_type}.000.ndjson", items)
    for values in patients.values():
        forbidden += [values["full"], values["mrn"], values["phone"], values["street"]]
    return forbidden


def assert_nothing_found(base: Path, forbidden: list[str]) -> None:
    text = output_text(base)
    words = set(re.findall(r"[^\W_]+", text))
    leaked = [
        value
        for value in forbidden
        if all(word in words for word in re.findall(r"[^\W_]+", value.lower())) and found(text, value)
    ]
    assert not leaked, f"{len(leaked)} seeded values reached the output (first lengths: {[len(v) for v in leaked[:5]]})"
    assert SEED_PREFIX.lower() not in text


@pytest.fixture(scope="module")
def generated_seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from clinflow.synthetic import generate_fhir_bulk

    raw = tmp_path_factory.mktemp("fhir-generated")
    generate_fhir_bulk(raw, patients=12, seed=11)
    target = tmp_path_factory.mktemp("fhir-generated-seeded") / "in"
    forbidden = seeded_copy(raw, target, per_type=40)
    return target, forbidden


@pytest.fixture(scope="module")
def generated_runs(
    generated_seeded: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    source, _ = generated_seeded
    first, again, other = (tmp_path_factory.mktemp(name) for name in ("key-a", "key-a-again", "key-b"))
    run(first, source, KEY_A)
    run(again, source, KEY_A)
    run(other, source, KEY_B)
    return first, again, other


def test_generated_seeded_identifiers_never_reach_the_output(
    generated_seeded: tuple[Path, list[str]], generated_runs: tuple[Path, Path, Path]
) -> None:
    _, forbidden = generated_seeded
    first, _, other = generated_runs
    assert_nothing_found(first, forbidden)
    assert_nothing_found(other, forbidden)
    report = json.loads((first / "report_json" / "deid_report.json").read_text())
    assert report["removed"]["unclassified"] > 0 and report["unclassified_paths"]
    assert all(path.endswith(".mysteryElement") for path in report["unclassified_paths"])
    assert report["removed"]["extensions"] > 0 and report["free_text"]["redactions"]["name"] > 0
    assert report["residual_phi_scan"]["passed"] and report["resources"]["balanced"]


def test_same_key_gives_identical_output_and_a_different_key_shares_no_pseudonym(
    generated_runs: tuple[Path, Path, Path],
) -> None:
    first, again, other = generated_runs
    names = sorted(p.name for p in (first / "out").iterdir())
    assert names == sorted(p.name for p in (again / "out").iterdir())
    for name in names:
        assert sorted((first / "out" / name).read_bytes().splitlines()) == sorted(
            (again / "out" / name).read_bytes().splitlines()
        )
    policy_hash = json.loads((first / "report_json" / "deid_report.json").read_text())["policy"]["sha256"]
    pseudonyms_a = {h for p in (first / "out").iterdir() for h in HEX64.findall(p.read_text())} - {policy_hash}
    pseudonyms_b = {h for p in (other / "out").iterdir() for h in HEX64.findall(p.read_text())} - {policy_hash}
    assert len(pseudonyms_a) > 100 and pseudonyms_a.isdisjoint(pseudonyms_b)


def test_every_output_resource_carries_the_policy(generated_runs: tuple[Path, Path, Path]) -> None:
    first, _, _ = generated_runs
    report = json.loads((first / "report_json" / "deid_report.json").read_text())
    policy = report["policy"]
    assert policy["policy_id"] == "safe-harbor" and len(policy["sha256"]) == 64 and len(report["code_sha256"]) == 64
    count = 0
    for resource in read_resources(first / "out"):
        tags = {(t["system"].rsplit("/", 1)[-1], t["code"]) for t in resource["meta"]["tag"]}
        assert ("deid-policy", "safe-harbor@1.0.0") in tags and ("deid-policy-sha256", policy["sha256"]) in tags
        assert "PSEUDED" in {s["code"] for s in resource["meta"]["security"]}
        count += 1
    assert count == report["resources"]["totals"]["out"]
    assert set(report["safe_harbor"]) >= {"names", "geographic", "dates", "ssn", "mrn", "device_identifiers"}
    assert len(report["safe_harbor"]) == 18
    assert report["k_anonymity"]["patients"] == 12 and report["k_anonymity"]["k"] >= 1


def test_shared_bulk_slice_seeded_in_every_resource_type(shared_data: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    forbidden = seeded_copy(shared_data / "fhir-bulk-100", source, per_type=25)
    assert len(list(source.glob("*.ndjson"))) >= 15
    report = run(tmp_path / "run", source)
    assert_nothing_found(tmp_path / "run", forbidden)
    assert report["residual_phi_scan"]["values_indexed"]["ids"] == report["resources"]["totals"]["in"]


def test_contained_resources_and_urn_uuid_references_are_consistent(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    patient = {
        "resourceType": "Patient",
        "id": "0f6b3c1e-urn-patient",
        "name": [{"family": "Vandersloot", "given": ["Ottoline"]}],
        "birthDate": "1980-01-01",
        "address": [{"line": ["44 Larkspur Close"], "city": "Quillbury", "postalCode": "05901", "state": "VT"}],
    }
    observation = {
        "resourceType": "Observation",
        "id": "obs-urn-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": "urn:uuid:0f6b3c1e-urn-patient"},
        "effectiveDateTime": "2020-02-02",
        "performer": [{"reference": "#perf"}],
        "contained": [
            {
                "resourceType": "Practitioner",
                "id": "perf",
                "name": [{"family": "Zuckerbrot", "given": ["Hieronymus"]}],
                "telecom": [{"system": "phone", "value": "555-404-7788"}],
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9876543210"}],
                "text": {"div": "<div>Hieronymus Zuckerbrot</div>"},
                "contained": [{"resourceType": "Organization", "id": "inner", "name": "Zuckerbrot Clinic"}],
            }
        ],
    }
    write_resources(source / "Patient.ndjson", [patient])
    write_resources(source / "Observation.ndjson", [observation])
    report = run(tmp_path / "run", source)
    [out_patient] = [r for r in read_resources(tmp_path / "run" / "out") if r["resourceType"] == "Patient"]
    [out_observation] = [r for r in read_resources(tmp_path / "run" / "out") if r["resourceType"] == "Observation"]
    assert out_patient["id"] == pseudonym(KEY_A.encode(), "Patient", patient["id"])
    assert out_observation["subject"] == {"reference": f"Patient/{out_patient['id']}"}
    assert out_observation["performer"] == [{"reference": "#perf"}]
    contained = out_observation["contained"][0]
    assert contained["id"] == "perf" and set(contained) <= {"resourceType", "id", "contained"}
    assert out_patient["address"] == [{"postalCode": "000", "state": "VT"}]  # 059 is a restricted ZIP3
    text = output_text(tmp_path / "run")
    for value in ("Zuckerbrot", "Hieronymus", "555-404-7788", "9876543210", "Vandersloot", "Larkspur", "Quillbury"):
        assert not found(text, value), value
    assert "0f6b3c1e" not in text and "obs-urn-1" not in text
    assert report["resources"]["totals"] == {
        "in": 2,
        "out": 2,
        "dead_letter": 0,
        "out_read_back": 2,
        "dead_letter_read_back": 0,
        "blank_lines_skipped": 0,
    }


def test_dead_letter_counts_add_up_per_file_and_lane_folders_are_tolerated(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    lines = [
        json.dumps({"resourceType": "Patient", "id": "p1", "name": [{"family": "Gribblewick"}]}),
        '{"resourceType": "Patient", "name": [{"family": "Gribblewick"}',
        json.dumps({"resourceType": "Patient", "name": [{"family": "Gribblewick"}]}),
        "[1, 2]",
    ]
    (source / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    write_resources(
        source / "Condition.ndjson",
        [{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}, {"id": "no-type"}],
    )
    for lane in ("dicom", "device_logs", "documents"):
        (source / lane).mkdir()
        (source / lane / "placeholder.bin").write_bytes(b"\0")
    report = run(tmp_path / "run", source)
    files = report["resources"]["files"]
    assert files["Patient.ndjson"] == {"in": 4, "out": 1, "dead_letter": 3, "balanced": True}
    assert files["Condition.ndjson"] == {"in": 2, "out": 1, "dead_letter": 1, "balanced": True}
    totals = report["resources"]["totals"]
    assert totals["in"] == totals["out"] + totals["dead_letter"] == 6
    dead = [json.loads(line) for line in (tmp_path / "run" / "dead" / "dead_letter.ndjson").read_text().splitlines()]
    assert sorted((d["source"], d["line"]) for d in dead if "/" not in d["source"]) == [
        ("Condition.ndjson", 2),
        ("Patient.ndjson", 2),
        ("Patient.ndjson", 3),
        ("Patient.ndjson", 4),
    ]
    assert sum(report["resources"]["dead_letter_reasons"].values()) == 4
    assert "gribblewick" not in output_text(tmp_path / "run")
    lanes = report["lanes"]
    assert set(lanes) == {"dicom", "device_logs", "documents"} and report["resources"]["balanced"]
    assert lanes["documents"]["status"].startswith("1 files, processed")
    assert lanes["dicom"]["dead_letter"] == 1 and lanes["device_logs"]["dead_letter"] == 1
    assert lanes["documents"]["dead_letter"] == 1 and lanes["documents"]["balanced"]


def test_reidentification_map_only_when_the_policy_allows_it(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    write_resources(
        source / "Patient.ndjson", [{"resourceType": "Patient", "id": "reid-p1", "birthDate": "1990-01-01"}]
    )
    with pytest.raises(UserError, match="--reid-map refused"):
        run(tmp_path / "refused", source, KEY_A, "--reid-map", str(tmp_path / "map"))
    policy_text = Path("components/deidentify/policies/safe-harbor-v1.yaml").read_text(encoding="utf-8")
    allowing = tmp_path / "allow.yaml"
    allowing.write_text(policy_text.replace("reidentification_map: false", "reidentification_map: true"))
    with pytest.raises(UserError, match="inside an output directory"):
        run(
            tmp_path / "inside",
            source,
            KEY_A,
            "--policy",
            str(allowing),
            "--reid-map",
            str(tmp_path / "inside" / "out"),
        )
    report = run(tmp_path / "allowed", source, KEY_A, "--policy", str(allowing), "--reid-map", str(tmp_path / "map"))
    map_file = tmp_path / "map" / "reid_map.ndjson"
    assert stat.S_IMODE(os.stat(map_file).st_mode) == 0o600
    [entry] = [json.loads(line) for line in map_file.read_text().splitlines()]
    assert entry == {
        "pseudonym": f"Patient/{pseudonym(KEY_A.encode(), 'Patient', 'reid-p1')}",
        "original": "Patient/reid-p1",
    }
    assert report["reidentification_map"] == {"written": True}
    assert "reid-p1" not in output_text(tmp_path / "allowed")
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_text.replace("mode: shift", "mode: jitter"))
    with pytest.raises(UserError, match=r"invalid field 'fhir\.dates\.mode'"):
        run(tmp_path / "bad", source, KEY_A, "--policy", str(bad))
    assert not (tmp_path / "bad" / "out").exists()


def test_device_log_and_dicom_lanes_use_the_fhir_patient_crosswalk(tmp_path: Path) -> None:
    import datetime as dt

    from components.deidentify.keys import date_offset_days

    source = tmp_path / "in"
    source.mkdir()
    patient = {
        "resourceType": "Patient",
        "id": "lane-patient-1",
        "birthDate": "1970-01-01",
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "http://hospital.smarthealthit.org",
                "value": "MRN-445566",
            }
        ],
    }
    write_resources(source / "Patient.ndjson", [patient])
    (source / "device_logs").mkdir()
    row = {
        "device_id": "pump-77",
        "patient_mrn": "MRN-445566",
        "timestamp": "2020-03-01T10:00:00+00:00",
        "metric": "heart_rate",
        "value": 71,
        "unit": "/min",
    }
    (source / "device_logs" / "monitor.jsonl").write_text(json.dumps(row) + "\nnot json\n")
    (source / "dicom").mkdir()
    (source / "dicom" / "broken.dcm").write_bytes(b"not a dicom file")
    report = run(tmp_path / "run", source)
    lanes = report["lanes"]
    assert lanes["device_logs"]["in"] == 2 and lanes["device_logs"]["out"] == 1 and lanes["device_logs"]["balanced"]
    assert lanes["dicom"]["in"] == 1 and lanes["dicom"]["dead_letter"] == 1 and lanes["dicom"]["balanced"]
    assert report["resources"]["balanced"]
    [out_row] = [json.loads(line) for line in (tmp_path / "run" / "out" / "device_logs" / "monitor.jsonl").open()]
    key = KEY_A.encode()
    assert out_row["patient_mrn"] == pseudonym(key, "Patient", "lane-patient-1")
    shifted = dt.date(2020, 3, 1) + dt.timedelta(days=date_offset_days(key, "lane-patient-1"))
    assert out_row["timestamp"].startswith(shifted.isoformat())
    dead = [json.loads(line) for line in (tmp_path / "run" / "dead" / "dead_letter.ndjson").read_text().splitlines()]
    assert {d["source"] for d in dead} == {"device_logs/monitor.jsonl", "dicom/broken.dcm"}
    text = output_text(tmp_path / "run")
    assert "mrn-445566" not in text.lower() and "pump-77" not in text
