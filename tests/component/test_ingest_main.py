"""Component contract of the ingest stage: ``main([...])`` on real small exports (docs/stages.md)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clinflow.errors import UserError, run_cli
from components.ingest.main import main

MANIFEST_FILE_KEYS = {"file", "sha256", "bytes", "resource_type", "resources", "state"}


def run_main(source: Path, out: Path) -> dict[str, Path]:
    paths = {
        "data": out / "raw_data",
        "manifest": out / "manifest",
        "metrics": out / "metrics.json",
        "executor": out / "executor_output.json",
    }
    status = main(
        [
            "--source",
            str(source),
            "--output-data",
            str(paths["data"]),
            "--manifest",
            str(paths["manifest"]),
            "--metrics",
            str(paths["metrics"]),
            "--executor-output",
            str(paths["executor"]),
        ]
    )
    assert status == 0
    return paths


def count_resources(path: Path) -> int:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def check_contract(source: Path, paths: dict[str, Path], skipped: set[str]) -> dict[str, Any]:
    """Checks outputs against the source, independently of the stage's own counting."""
    data_files = sorted(p.name for p in source.iterdir() if p.name not in skipped)
    assert sorted(p.name for p in paths["data"].iterdir()) == data_files
    for name in data_files:
        assert (paths["data"] / name).read_bytes() == (source / name).read_bytes()

    manifest = json.loads((paths["manifest"] / "ingest_manifest.json").read_text())
    assert [entry["file"] for entry in manifest["files"]] == data_files
    for entry in manifest["files"]:
        assert set(entry) == MANIFEST_FILE_KEYS and entry["state"] == "clean"
        original = source / entry["file"]
        assert entry["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
        assert entry["bytes"] == original.stat().st_size
        assert entry["resource_type"] == entry["file"].split(".")[0]
        assert entry["resources"] == count_resources(original)
    assert sorted(s["file"] for s in manifest["skipped"]) == sorted(skipped)

    metrics = json.loads(paths["metrics"].read_text())
    totals = manifest["totals"]
    assert metrics["files"] == totals["files"] == len(data_files)
    assert metrics["resources"] == totals["resources"] == sum(e["resources"] for e in manifest["files"])
    assert metrics["bytes"] == totals["bytes"] == sum(e["bytes"] for e in manifest["files"])
    per_type = {k.removeprefix("resources_"): v for k, v in metrics.items() if k.startswith("resources_")}
    assert per_type == totals["resources_by_type"] and sum(per_type.values()) == metrics["resources"]

    executor = json.loads(paths["executor"].read_text())
    shown = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert shown == {name: float(value) for name, value in metrics.items()}
    return metrics


def test_generated_export(synthetic_fhir_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = run_main(synthetic_fhir_dir, tmp_path)
    metrics = check_contract(synthetic_fhir_dir, paths, skipped=set())
    assert metrics["resources_Patient"] == 120
    captured = capsys.readouterr()
    assert captured.err.count("verified ") == metrics["files"]
    assert "Patient.000.ndjson" in captured.out and "total" in captured.out


def test_real_synthea_export_with_bulk_log(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "fhir-bulk-10"
    metrics = check_contract(source, run_main(source, tmp_path), skipped={"log.ndjson", "README.md"})
    assert metrics["resources_Patient"] == 13 and metrics["files"] == 13


def test_real_synthea_gzip_export(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "fhir-bulk-100"
    metrics = check_contract(source, run_main(source, tmp_path), skipped={"README.md"})
    assert metrics["resources_Patient"] == 100 and metrics["files"] == 16


def test_bad_input_is_one_line_and_writes_nothing(
    synthetic_fhir_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "Patient.000.ndjson").write_bytes((synthetic_fhir_dir / "Patient.000.ndjson").read_bytes())
    lines = (synthetic_fhir_dir / "Encounter.000.ndjson").read_text().splitlines(keepends=True)[:20]
    lines[16] = lines[16][:40] + "\n"
    (source / "Encounter.000.ndjson").write_text("".join(lines))
    out = tmp_path / "out"
    argv = ["--source", str(source), "--output-data", str(out / "data"), "--manifest", str(out / "manifest")]
    argv += ["--metrics", str(out / "metrics.json")]
    with pytest.raises(UserError):
        main(argv)
    capsys.readouterr()
    assert run_cli(main, argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and errors[0].startswith("error: Encounter.000.ndjson:17: not valid JSON")
    assert not out.exists()


def test_module_entry_point(tmp_path: Path) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "components.ingest.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--source", "--output-data", "--manifest", "--metrics", "--executor-output"):
        assert flag in help_text
    flags = ["--source", str(tmp_path / "missing"), "--output-data", str(tmp_path / "d")]
    flags += ["--manifest", str(tmp_path / "m"), "--metrics", str(tmp_path / "x")]
    result = subprocess.run([sys.executable, "-m", "components.ingest.main", *flags], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "missing" in result.stderr and "Traceback" not in result.stderr
