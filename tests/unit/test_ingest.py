"""Ingest verification: every bad input gives one line naming the file (and line); good input adds up."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from clinflow.errors import UserError
from components.ingest import ingest
from components.ingest.ingest import (
    copy_verified,
    list_source,
    manifest_document,
    stage_metrics,
    verify_file,
    verify_source,
)

LOG_LINE = (
    '{"exportId": "export-1", "timestamp": "2024-08-06T14:11:57-04:00", "eventId": "kickoff", '
    '"eventDetail": {"exportUrl": "https://example.com/fhir/$export"}}\n'
)


def resource_line(resource_type: str, index: int) -> str:
    return json.dumps({"resourceType": resource_type, "id": f"{resource_type.lower()}-{index}"}) + "\n"


def write_ndjson(path: Path, resource_type: str, count: int) -> Path:
    path.write_text("".join(resource_line(resource_type, i) for i in range(count)), encoding="utf-8")
    return path


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    directory = tmp_path / "export"
    directory.mkdir()
    write_ndjson(directory / "Patient.000.ndjson", "Patient", 5)
    write_ndjson(directory / "Encounter.000.ndjson", "Encounter", 7)
    return directory


def one_line_error(source: Path) -> str:
    with pytest.raises(UserError) as caught:
        verify_source(source)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- bad input


def test_missing_source(tmp_path: Path) -> None:
    message = one_line_error(tmp_path / "nope")
    assert "nope" in message and "does not exist" in message


def test_source_is_a_file(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "Patient.ndjson", "Patient", 1)
    assert "not a directory" in one_line_error(path)


def test_empty_directory(tmp_path: Path) -> None:
    message = one_line_error(tmp_path)
    assert str(tmp_path) in message and "empty" in message and "no FHIR NDJSON" in message


def test_only_side_files_is_no_ndjson(tmp_path: Path) -> None:
    (tmp_path / "log.ndjson").write_text(LOG_LINE)
    message = one_line_error(tmp_path)
    assert "no FHIR NDJSON" in message and "log.ndjson" in message


@pytest.mark.parametrize("name", ["notes.txt", "Patient.csv", "Patient.json", ".DS_Store"])
def test_non_ndjson_file(source: Path, name: str) -> None:
    (source / name).write_text("this is not FHIR\n")
    message = one_line_error(source)
    assert message.startswith(f"{name}: ") and "not a FHIR NDJSON file" in message


def test_subdirectory(source: Path) -> None:
    (source / "nested").mkdir()
    assert one_line_error(source).startswith("nested: is a directory")


def test_file_name_without_resource_type(source: Path) -> None:
    write_ndjson(source / "patients.ndjson", "Patient", 1)
    message = one_line_error(source)
    assert message.startswith("patients.ndjson: ") and "resource type" in message


def test_truncated_line_names_file_and_line(source: Path) -> None:
    lines = (source / "Patient.000.ndjson").read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"
    (source / "Patient.000.ndjson").write_text("".join(lines))
    message = one_line_error(source)
    assert message.startswith("Patient.000.ndjson:3: not valid JSON"), message


def test_truncated_last_line_without_newline(source: Path) -> None:
    text = (source / "Encounter.000.ndjson").read_text()
    (source / "Encounter.000.ndjson").write_text(text[:-10])
    assert one_line_error(source).startswith("Encounter.000.ndjson:7: not valid JSON")


@pytest.mark.parametrize(
    ("line", "kind"),
    [('[{"resourceType": "Patient"}]', "list"), ("42", "int"), ('"Patient"', "str"), ("null", "NoneType")],
)
def test_line_that_is_not_an_object(source: Path, line: str, kind: str) -> None:
    with (source / "Patient.000.ndjson").open("a") as handle:
        handle.write(line + "\n")
    message = one_line_error(source)
    assert message.startswith("Patient.000.ndjson:6: expected a JSON object") and kind in message


def test_resource_type_mismatch(source: Path) -> None:
    with (source / "Patient.000.ndjson").open("a") as handle:
        handle.write(resource_line("Observation", 1))
    message = one_line_error(source)
    assert message.startswith("Patient.000.ndjson:6: resourceType 'Observation'") and "'Patient'" in message


def test_missing_resource_type(source: Path) -> None:
    with (source / "Encounter.000.ndjson").open("a") as handle:
        handle.write('{"id": "x"}\n')
    assert one_line_error(source).startswith("Encounter.000.ndjson:8: resourceType None")


def test_nan_is_not_json(source: Path) -> None:
    with (source / "Patient.000.ndjson").open("a") as handle:
        handle.write('{"resourceType": "Patient", "weight": NaN}\n')
    message = one_line_error(source)
    assert message.startswith("Patient.000.ndjson:6: not valid JSON")


def test_invalid_utf8(source: Path) -> None:
    with (source / "Patient.000.ndjson").open("ab") as handle:
        handle.write(b'{"resourceType": "Patient", "name": "\xff\xfe"}\n')
    assert one_line_error(source).startswith("Patient.000.ndjson:6: not valid UTF-8")


def test_truncated_gzip(source: Path) -> None:
    data = gzip.compress(b"".join(resource_line("Observation", i).encode() for i in range(2000)))
    (source / "Observation.000.ndjson.gz").write_bytes(data[: len(data) // 2])
    message = one_line_error(source)
    assert message.startswith("Observation.000.ndjson.gz: gzip data is truncated or corrupt past line")


def test_plain_text_named_gz(source: Path) -> None:
    write_ndjson(source / "Condition.000.ndjson.gz", "Condition", 2)
    message = one_line_error(source)
    assert message.startswith("Condition.000.ndjson.gz: gzip data is truncated or corrupt") and "gzipped" in message


def test_error_line_numbers_survive_chunk_boundaries(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 37)
    path = write_ndjson(source / "Observation.000.ndjson", "Observation", 300)
    lines = path.read_text().splitlines(keepends=True)
    lines[250] = resource_line("Patient", 0)
    path.write_text("".join(lines))
    assert one_line_error(source).startswith("Observation.000.ndjson:251: resourceType 'Patient'")


# --------------------------------------------------------------------------- good input


def test_side_files_are_recorded_and_skipped(source: Path) -> None:
    (source / "log.ndjson").write_text(LOG_LINE)
    (source / "manifest.json").write_text('{"transactionTime": "2024-08-06T18:12:57Z", "output": []}')
    (source / "README.md").write_text("# export\n")
    data, skipped = list_source(source)
    assert [p.name for p in data] == ["Encounter.000.ndjson", "Patient.000.ndjson"]
    assert [p.name for p, _ in skipped] == ["README.md", "log.ndjson", "manifest.json"]
    result = verify_source(source)
    assert [s.file for s in result.skipped] == ["README.md", "log.ndjson", "manifest.json"]
    assert result.skipped[1].sha256 == hashlib.sha256(LOG_LINE.encode()).hexdigest()
    document = manifest_document(result)
    assert [f["file"] for f in document["files"]] == ["Encounter.000.ndjson", "Patient.000.ndjson"]
    assert document["totals"]["skipped_files"] == 3


def test_records_hash_size_and_counts(source: Path) -> None:
    path = source / "Patient.000.ndjson"
    record = verify_file(path)
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record.bytes, record.resources, record.resource_type, record.state) == (
        path.stat().st_size,
        5,
        "Patient",
        "clean",
    )


def test_gzip_hash_is_of_the_compressed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 100)
    path = tmp_path / "Observation.000.ndjson.gz"
    path.write_bytes(gzip.compress(b"".join(resource_line("Observation", i).encode() for i in range(500))))
    record = verify_file(path)
    assert record.resources == 500
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and record.bytes == path.stat().st_size


def test_blank_lines_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "Patient.ndjson"
    path.write_text(resource_line("Patient", 1) + "\n  \n" + resource_line("Patient", 2).rstrip("\n"))
    record = verify_file(path)
    assert (record.resources, record.blank_lines) == (2, 2)


def test_metrics_and_totals_add_up(source: Path) -> None:
    write_ndjson(source / "Patient.001.ndjson", "Patient", 3)
    result = verify_source(source)
    metrics = stage_metrics(result)
    assert metrics["resources_Patient"] == 8 and metrics["resources_Encounter"] == 7
    assert metrics["resources"] == 15 == sum(v for k, v in metrics.items() if k.startswith("resources_"))
    assert metrics["files"] == 3
    assert metrics["bytes"] == sum(p.stat().st_size for p in source.iterdir())


def test_copy_is_byte_identical(source: Path, tmp_path: Path) -> None:
    result = verify_source(source)
    written = copy_verified(result, tmp_path / "out")
    assert [p.name for p in written] == ["Encounter.000.ndjson", "Patient.000.ndjson"]
    for path in written:
        assert path.read_bytes() == (source / path.name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Encounter.000.ndjson", "Patient.000.ndjson"]


def test_copy_refuses_a_file_changed_after_verification(source: Path, tmp_path: Path) -> None:
    result = verify_source(source)
    with (source / "Patient.000.ndjson").open("a") as handle:
        handle.write(resource_line("Patient", 99))
    with pytest.raises(UserError, match=r"^Patient\.000\.ndjson: changed while being ingested"):
        copy_verified(result, tmp_path / "out")
    assert not (tmp_path / "out" / "Patient.000.ndjson").exists()
    assert not list((tmp_path / "out").glob("*.partial"))
