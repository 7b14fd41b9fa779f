"""Contract tests of ``components.deidentify.main`` (real Beam on the FnApiRunner, real data).

The identifying values are read from the input at test time and searched in every output byte
with an independent matcher (a bounded, case-insensitive regular expression per value).
"""

from __future__ import annotations

import datetime as dt
import gzip
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinflow.errors import UserError, run_cli
from clinflow.ndjson import iter_lines, iter_resources
from components.deidentify.keys import pseudonym
from components.deidentify.main import main

TEST_KEY = "component-test-key-0123456789abcdef0123456789"
WORD_RE = re.compile(r"[^\W_]+")
MAIDEN_NAME_URL = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"


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
        "--executor-output",
        str(base / "executor_output.json"),
    ]


def run_stage(base: Path, input_dir: Path, *extra: str) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLINFLOW_HMAC_KEY", TEST_KEY)
        return main([*stage_args(base, input_dir), *extra])


def input_resources(directory: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.glob("*.ndjson*")):
        if path.name != "log.ndjson":
            for _, resource in iter_resources(path):
                yield resource


def identifying_values(directory: Path) -> dict[str, set[str]]:
    """Names, SSNs/MRNs/other identifiers, phones/emails, street lines, cities, maiden names, ids."""
    found: dict[str, set[str]] = {
        k: set() for k in ("ids", "names", "identifiers", "telecom", "streets", "cities", "maiden")
    }
    for resource in input_resources(directory):
        if resource.get("resourceType") != "Patient":
            continue
        found["ids"].add(resource["id"])
        for name in resource.get("name", []):
            found["names"].update([name.get("family", ""), *name.get("given", [])])
        found["identifiers"].update(i["value"] for i in resource.get("identifier", []) if "value" in i)
        found["telecom"].update(t["value"] for t in resource.get("telecom", []) if "value" in t)
        for address in resource.get("address", []):
            found["streets"].update(address.get("line", []))
            found["cities"].add(address.get("city", ""))
        for extension in resource.get("extension", []):
            if extension.get("url") == MAIDEN_NAME_URL:
                found["maiden"].add(extension["valueString"])
    return {category: {v for v in values if len(v) >= 2} for category, values in found.items()}


def occurrences(text: str, values: set[str]) -> Counter[str]:
    """Counts each value found as a whole word (not inside a longer word), ignoring case.

    Every word of the text goes into a set first; a value is searched (``str.find`` plus a
    word-boundary check) only when all its words are in that set, a necessary condition that
    keeps the check fast on tens of megabytes.
    """
    lower = text.lower()
    words = set(WORD_RE.findall(lower))
    hits: Counter[str] = Counter()
    for value in values:
        wanted = value.lower()
        if not all(word in words for word in WORD_RE.findall(wanted)):
            continue
        count = 0
        at = lower.find(wanted)
        while at >= 0:
            before = lower[at - 1] if at else " "
            after = lower[at + len(wanted)] if at + len(wanted) < len(lower) else " "
            count += not (before.isalnum() or after.isalnum())
            at = lower.find(wanted, at + 1)
        if count:
            hits[f"{len(value)}-char value"] += count  # never print the value itself
    return hits


def all_output_text(base: Path) -> str:
    parts = [p.read_text(encoding="utf-8") for p in sorted((base / "out").glob("*"))]
    parts += [p.read_text(encoding="utf-8") for p in sorted((base / "dead").glob("*"))]
    parts += [
        (base / name).read_text(encoding="utf-8") for name in ("report.html", "metrics.json", "executor_output.json")
    ]
    parts.append((base / "report_json" / "deid_report.json").read_text(encoding="utf-8"))
    return "\n".join(parts)


def output_resources(base: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((base / "out").glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield path.name, json.loads(line)


VOCABULARY_KEYS = ("display", "text", "valueString")
SINGLE_WORD_EXEMPT = ("names", "cities", "maiden")


def blank_vocabulary(value: Any, key: str = "") -> Any:
    """Blanks kept coded-vocabulary strings (Coding.display, CodeableConcept.text, race text)."""
    if isinstance(value, dict):
        return {k: blank_vocabulary(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [blank_vocabulary(v, key) for v in value]
    return "" if isinstance(value, str) and key in VOCABULARY_KEYS else value


def assert_no_phi(base: Path, input_dir: Path) -> None:
    """Zero occurrences of any input Patient value; a one-word name (e.g. a family name that is
    also a race category) may appear only inside kept coded vocabulary."""
    values = identifying_values(input_dir)
    assert values["ids"] and values["names"] and values["identifiers"] and values["streets"]
    text = all_output_text(base)
    outside_vocabulary = "\n".join(
        [json.dumps(blank_vocabulary(resource)) for _, resource in output_resources(base)]
        + [t for t in text.split("\n") if not t.startswith("{")]
    )
    for category, category_values in values.items():
        single = {v for v in category_values if len(WORD_RE.findall(v)) == 1}
        if category in SINGLE_WORD_EXEMPT:
            assert occurrences(outside_vocabulary, single) == Counter(), f"residual {category} in the output"
            assert occurrences(text, category_values - single) == Counter(), f"residual {category} in the output"
        else:
            assert occurrences(text, category_values) == Counter(), f"residual {category} in the output"


def assert_counts_add_up(base: Path, input_dir: Path) -> dict[str, Any]:
    report = json.loads((base / "report_json" / "deid_report.json").read_text())
    totals = report["resources"]["totals"]
    lines_in = sum(1 for path in input_dir.glob("*.ndjson*") if path.name != "log.ndjson" for _ in iter_lines(path))
    lines_out = sum(1 for _ in output_resources(base))
    dead = (base / "dead" / "dead_letter.ndjson").read_text().splitlines()
    assert totals["in"] == lines_in == lines_out + len(dead)
    assert totals["out"] == lines_out and totals["dead_letter"] == len(dead)
    assert report["resources"]["balanced"] is True
    return report


@pytest.fixture(scope="module")
def bulk100(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("deid-bulk100")
    input_dir = shared_data / "fhir-bulk-100"
    assert run_stage(base, input_dir) == 0
    return base, input_dir


def test_bulk100_output_has_no_input_phi(bulk100: tuple[Path, Path]) -> None:
    assert_no_phi(*bulk100)


def test_bulk100_counts_add_up_and_files_are_named_by_type(bulk100: tuple[Path, Path]) -> None:
    base, input_dir = bulk100
    report = assert_counts_add_up(base, input_dir)
    names = sorted(p.name for p in (base / "out").iterdir())
    assert names == sorted(f"{kind}.000.ndjson" for kind in report["resources"]["out"])
    assert all(name.split(".")[0] == resource["resourceType"] for name, resource in output_resources(base))
    assert report["residual_phi_scan"]["total_hits"] == 0
    assert report["residual_phi_scan"]["values_indexed"]["identifiers"] > 0
    assert report["removed"]["names"] > 0 and report["rewritten"]["dates_shifted"] > 0


def test_bulk100_references_resolve_to_pseudonymous_ids(bulk100: tuple[Path, Path]) -> None:
    base, input_dir = bulk100
    ids = {(r["resourceType"], r["id"]) for _, r in output_resources(base)}
    dangling: Counter[str] = Counter()
    references = 0
    for _, resource in output_resources(base):
        for reference in re.findall(
            r'"reference":"([A-Z][A-Za-z]+)/([0-9a-f]{64})"', json.dumps(resource, separators=(",", ":"))
        ):
            references += 1
            if reference not in ids:
                dangling[reference[0]] += 1
    assert references > 10000 and dangling == Counter()
    first_patient = next(r for r in input_resources(input_dir) if r["resourceType"] == "Patient")
    assert ("Patient", pseudonym(TEST_KEY.encode(), "Patient", first_patient["id"])) in ids


def test_bulk100_dates_move_by_one_offset_per_patient(bulk100: tuple[Path, Path]) -> None:
    base, input_dir = bulk100
    original = {
        r["id"]: r["period"]["start"][:10] for r in input_resources(input_dir) if r["resourceType"] == "Encounter"
    }
    subject_of = {
        r["id"]: r["subject"]["reference"] for r in input_resources(input_dir) if r["resourceType"] == "Encounter"
    }
    key = TEST_KEY.encode()
    by_pseudonym = {pseudonym(key, "Encounter", i): i for i in original}
    offsets: dict[str, set[int]] = {}
    for _, resource in output_resources(base):
        if resource["resourceType"] == "Encounter":
            source = by_pseudonym[resource["id"]]
            delta = dt.date.fromisoformat(resource["period"]["start"][:10]) - dt.date.fromisoformat(original[source])
            offsets.setdefault(subject_of[source], set()).add(delta.days)
    assert len(offsets) > 50
    assert all(len(days) == 1 and 0 not in days and abs(next(iter(days))) <= 365 for days in offsets.values())
    assert len({next(iter(days)) for days in offsets.values()}) > 10


def test_bulk100_reports_and_metrics(bulk100: tuple[Path, Path]) -> None:
    base, _ = bulk100
    metrics = json.loads((base / "metrics.json").read_text())
    assert metrics["resources_in"] == metrics["resources_out"] + metrics["dead_letter"] > 30000
    assert metrics["residual_phi_hits"] == 0
    executor = json.loads((base / "executor_output.json").read_text())
    assert executor["artifacts"]["metrics"]["artifacts"][0]["metadata"] == metrics
    html = (base / "report.html").read_text()
    assert "Residual-PHI scan: <b>PASSED</b>" in html and "ExplanationOfBenefit" in html
    assert TEST_KEY not in all_output_text(base)


def test_synthetic_export_output_has_no_input_phi(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if importlib.util.find_spec("clinflow.synthetic") is None:
        pytest.skip("clinflow.synthetic generator not available yet")
    input_dir: Path = request.getfixturevalue("synthetic_fhir_dir")
    assert run_stage(tmp_path, input_dir) == 0
    assert_no_phi(tmp_path, input_dir)
    assert_counts_add_up(tmp_path, input_dir)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


PATIENT = {
    "resourceType": "Patient",
    "id": "hand-1",
    "name": [{"family": "Quixotesque", "given": ["Zeldarina"]}],
    "identifier": [{"value": "999-88-7766"}],
    "birthDate": "1960-02-29",
    "address": [{"line": ["7 Windmillhill Road"], "city": "Lamanchaville", "postalCode": "03601", "state": "NH"}],
}


def test_bad_lines_go_to_the_dead_letter_without_phi(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    write_lines(
        source / "Patient.000.ndjson",
        [
            json.dumps(PATIENT),
            '{"resourceType": "Patient", "name": [{"family": "Quixotesque"}], ',  # truncated
            "",
            '["Zeldarina", "999-88-7766"]',
            '{"name": "Zeldarina Quixotesque"}',
            '{"resourceType": "Patient", "name": [{"family": "Quixotesque"}]}',
            '{"resourceType": "\\u0050atient", "id": "hand-2", "name": [{"family": "Escapadilla"}]}',  # JSON escape
        ],
    )
    with gzip.open(source / "Observation.000.ndjson.gz", "wt", encoding="utf-8") as handle:
        handle.write(
            json.dumps(
                {
                    "resourceType": "Observation",
                    "id": "o1",
                    "subject": {"reference": "Patient/hand-1"},
                    "effectiveDateTime": "2020-01-01",
                }
            )
            + "\n"
        )
    (source / "log.ndjson").write_text('{"eventId": "kickoff"}\n')
    base = tmp_path / "run"
    assert run_stage(base, source) == 0
    dead = [json.loads(line) for line in (base / "dead" / "dead_letter.ndjson").read_text().splitlines()]
    assert sorted((d["source"], d["line"]) for d in dead) == [("Patient.000.ndjson", n) for n in (2, 4, 5, 6)]
    assert all(set(d) == {"source", "line", "reason"} for d in dead)
    reasons = {d["line"]: d["reason"] for d in dead}
    assert reasons[2].startswith("not valid JSON") and reasons[4].startswith("not a JSON object")
    assert reasons[5] == "missing or invalid resourceType" and reasons[6].startswith("Patient without id")
    report = assert_counts_add_up(base, source)
    assert report["resources"]["totals"]["blank_lines_skipped"] == 1
    assert report["inputs"]["skipped_files"] == ["log.ndjson"]
    patients = [r for _, r in output_resources(base) if r["resourceType"] == "Patient"]
    assert len(patients) == 2  # the escaped one too: Patients are found again after the end of data
    assert [{"postalCode": "000", "state": "NH"}] in [patient.get("address") for patient in patients]
    text = all_output_text(base)
    for value in ("Quixotesque", "Zeldarina", "999-88-7766", "Windmillhill", "Lamanchaville", "hand-1", "Escapadilla"):
        assert value.lower() not in text.lower(), value


def _mrn_as_a_code(source: Path, system: str) -> None:
    """A Patient whose MRN is 38341003 and a Condition whose (kept) code of ``system`` is too."""
    source.mkdir()
    write_lines(source / "Patient.ndjson", [json.dumps(dict(PATIENT, identifier=[{"value": "38341003"}]))])
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/hand-1"},
        "code": {"coding": [{"system": system, "code": "38341003", "display": "Hypertension"}]},
    }
    write_lines(source / "Condition.ndjson", [json.dumps(condition)])


def test_residual_phi_fails_the_stage_and_deletes_the_output(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _mrn_as_a_code(source, "http://hospital.example/local-codes")  # a local code the policy keeps
    base = tmp_path / "run"
    with pytest.raises(UserError, match=r"residual-PHI scan found .*identifiers=1.*Condition=1.*output files deleted"):
        run_stage(base, source)
    assert list((base / "out").glob("*.ndjson")) == []
    report = json.loads((base / "report_json" / "deid_report.json").read_text())
    assert report["residual_phi_scan"]["passed"] is False and report["residual_phi_scan"]["hits"]["identifiers"] == 1
    assert "38341003" not in json.dumps(report) + (base / "report.html").read_text()


def test_an_mrn_equal_to_a_snomed_code_is_reported_not_failed(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _mrn_as_a_code(source, "http://snomed.info/sct")  # the concept id of hypertension, not the patient's MRN
    base = tmp_path / "run"
    run_stage(base, source)
    scan = json.loads((base / "report_json" / "deid_report.json").read_text())["residual_phi_scan"]
    assert scan["passed"] is True and scan["whole_terminology_codes_equal_to_an_input_value"] == 1
    assert "1 terminology codes" in (base / "report.html").read_text()


def test_missing_key_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLINFLOW_HMAC_KEY", raising=False)
    source = tmp_path / "in"
    source.mkdir()
    write_lines(source / "Patient.ndjson", [json.dumps(PATIENT)])
    assert run_cli(main, stage_args(tmp_path, source)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: CLINFLOW_HMAC_KEY is not set")
    assert not (tmp_path / "out").exists()


def test_input_and_option_errors_are_user_errors(tmp_path: Path, hmac_key: str) -> None:
    with pytest.raises(UserError, match="no such directory"):
        main(stage_args(tmp_path, tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no \*\.ndjson"):
        main(stage_args(tmp_path, tmp_path / "empty"))
    source = tmp_path / "in"
    source.mkdir()
    write_lines(source / "Patient.ndjson", [json.dumps(PATIENT)])
    with pytest.raises(UserError, match=r"unknown Beam pipeline option.*--no_such_option"):
        main([*stage_args(tmp_path, source), "--", "--no_such_option", "1"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "Patient.000.ndjson").write_text("{}\n")
    with pytest.raises(UserError, match="already holds NDJSON"):
        main(stage_args(tmp_path, source))
