"""Component contract of the ingest stage: ``main([...])`` on real small inputs (docs/stages.md)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clinflow.errors import UserError, run_cli
from clinflow.synthetic.device_logs import generate_device_logs
from clinflow.synthetic.documents import generate_documents
from clinflow.testing.fhir_bulk_server import FaultPlan, FhirBulkServer, load_bulk_files, make_key_pair
from components.ingest import state as states
from components.ingest.main import main
from components.ingest.state import open_state_store
from components.ingest.storage import open_zone_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ingest_corpus.builder import CASE_LIMITS, build_bad_corpus, build_valid_dicom

LANE_KEYS = ("received", "promoted", "quarantined", "rejected")


def run_main(out: Path, *extra: str, source: Path | None = None, store: Path | None = None) -> dict[str, Any]:
    paths = {
        "data": out / "raw_data",
        "manifest": out / "manifest",
        "metrics": out / "metrics.json",
        "executor": out / "executor_output.json",
        "report": out / "report.html",
    }
    argv = [] if source is None else ["--source", str(source)]
    argv += ["--output-data", str(paths["data"]), "--manifest", str(paths["manifest"])]
    argv += ["--metrics", str(paths["metrics"]), "--executor-output", str(paths["executor"])]
    argv += ["--report", str(paths["report"])]
    if store is not None:
        argv += ["--store", str(store)]
    assert main([*argv, *extra]) == 0
    manifest = json.loads((paths["manifest"] / "ingest_manifest.json").read_text())
    metrics = json.loads(paths["metrics"].read_text())
    return {"paths": paths, "manifest": manifest, "metrics": metrics}


def check_counts(run: dict[str, Any]) -> None:
    """The counts add up per lane and in total, in the manifest, the metrics and the KFP metadata."""
    manifest, metrics = run["manifest"], run["metrics"]
    totals = manifest["totals"]
    states_seen = [entry["state"] for entry in manifest["files"]]
    assert totals["received"] == len(states_seen)
    for key in ("promoted", "quarantined", "rejected", "duplicate", "skipped"):
        assert totals[key] == states_seen.count(key)
        assert metrics[f"files_{key}"] == totals[key]
    for lane, counts in manifest["lanes"].items():
        assert counts["received"] == counts["promoted"] + counts["quarantined"] + counts["rejected"]
        for key in LANE_KEYS:
            assert metrics[f"{lane}_{key}"] == counts[key]
    for entry in manifest["files"]:
        if entry["state"] in ("quarantined", "rejected"):
            assert entry["reason_code"] and entry["reason_code"] != "ok" and len(entry["reason"]) > 20
    executor = json.loads(run["paths"]["executor"].read_text())
    shown = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert shown == {name: float(value) for name, value in metrics.items()}


def test_generated_export_is_promoted_byte_identical(synthetic_fhir_dir: Path, tmp_path: Path) -> None:
    run = run_main(tmp_path, source=synthetic_fhir_dir)
    check_counts(run)
    names = sorted(p.name for p in synthetic_fhir_dir.iterdir())
    assert sorted(p.name for p in run["paths"]["data"].iterdir()) == names
    for name in names:
        assert (run["paths"]["data"] / name).read_bytes() == (synthetic_fhir_dir / name).read_bytes()
    assert run["manifest"]["lanes"] == {
        "fhir": {"received": len(names), "promoted": len(names), **dict.fromkeys(LANE_KEYS[2:], 0)}
    }
    for entry in run["manifest"]["files"]:
        original = synthetic_fhir_dir / entry["file"]
        assert entry["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
        assert entry["state"] == "promoted" and entry["zone"] == "clean" and entry["object"] == entry["sha256"]
    assert run["metrics"]["fhir_resources"] == sum(
        sum(1 for line in (synthetic_fhir_dir / n).read_text().splitlines() if line.strip()) for n in names
    )
    assert "Set aside (0)" in run["paths"]["report"].read_text()


def test_every_state_change_is_an_event(synthetic_fhir_dir: Path, tmp_path: Path) -> None:
    run = run_main(tmp_path, source=synthetic_fhir_dir)
    with open_state_store(run["paths"]["manifest"] / "store" / "ingest_state.sqlite") as state:
        for entry in run["manifest"]["files"]:
            events = state.events(entry["upload_id"])
            assert [e.to_state for e in events] == ["received", "uploaded", "scanned", "promoted"]


def mixed_drop(source_fhir: Path, root: Path) -> Path:
    """A drop of every lane: FHIR, DICOM, device logs, PDFs, and the whole bad-input corpus."""
    drop = root / "drop"
    shutil.copytree(source_fhir, drop)
    build_valid_dicom(drop / "imaging")
    generate_device_logs(drop / "devices", source_fhir / "Patient.000.ndjson", seed=3, readings_per_patient=8)
    generate_documents(drop / "notes", source_fhir / "Patient.000.ndjson", seed=3, max_patients=3, scanned_every=3)
    build_bad_corpus(drop / "bad")
    shutil.copy(source_fhir / "Patient.000.ndjson", drop / "again-Patient.000.ndjson")
    (drop / "log.ndjson").write_text('{"eventType":"x"}\n')
    return drop


def test_mixed_drop_counts_add_up_and_every_lane_lands(synthetic_fhir_dir: Path, tmp_path: Path) -> None:
    drop = mixed_drop(synthetic_fhir_dir, tmp_path)
    run = run_main(tmp_path / "out", source=drop)
    check_counts(run)
    manifest, data = run["manifest"], run["paths"]["data"]
    assert set(manifest["lanes"]) >= {"fhir", "dicom", "device_logs", "pdf"}
    for lane in ("fhir", "dicom", "device_logs", "pdf"):
        assert manifest["lanes"][lane]["promoted"] > 0
        assert manifest["lanes"][lane]["quarantined"] + manifest["lanes"][lane]["rejected"] > 0
    # The oversize cases need the small limits the lane tests give them; here they are ordinary files.
    bad = [e for e in manifest["files"] if e["file"].startswith("bad/") and Path(e["file"]).name not in CASE_LIMITS]
    assert len(bad) >= 40
    for entry in bad:
        if entry["state"] == "duplicate":  # stored once; its own verdict is still recorded
            assert entry["details"]["own_outcome"] in ("quarantine", "reject"), entry["file"]
        else:
            assert entry["state"] in ("quarantined", "rejected"), entry["file"]
    duplicates = [e for e in manifest["files"] if e["state"] == "duplicate"]
    assert "again-Patient.000.ndjson" in {e["file"] for e in duplicates}
    assert all(e["details"]["duplicate_of"] and e["object"] for e in duplicates)
    assert manifest["totals"]["skipped"] == 1
    promoted = {e["lane"]: e for e in manifest["files"] if e["state"] == "promoted"}
    assert (data / promoted["dicom"]["output"]).read_bytes()[128:132] == b"DICM"
    document = json.loads((data / promoted["pdf"]["output"]).with_suffix(".json").read_text())
    assert document["sha256"] == promoted["pdf"]["sha256"] and document["text"]
    assert (data / promoted["device_logs"]["output"]).is_file()
    store = open_zone_store(run["paths"]["manifest"] / "store")
    set_aside = {o.name for o in store.list("quarantine")}
    assert set_aside == {e["sha256"] for e in manifest["files"] if e["state"] in ("quarantined", "rejected")}
    for info in store.list("quarantine"):
        assert info.metadata["reason_code"] and info.metadata["original_name"]
    assert {o.name for o in store.list("clean")} == {e["sha256"] for e in manifest["files"] if e["state"] == "promoted"}
    assert not store.list("staging")
    report = run["paths"]["report"].read_text()
    assert "not_dicom" in report and "pdf_javascript" in report


def test_same_bytes_twice_is_one_object_and_a_rerun_adds_nothing(synthetic_fhir_dir: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = run_main(tmp_path / "one", source=synthetic_fhir_dir, store=store_dir)
    second = run_main(tmp_path / "two", source=synthetic_fhir_dir, store=store_dir)
    check_counts(second)
    store = open_zone_store(store_dir)
    assert len(store.list("clean")) == len(first["manifest"]["files"])
    assert all(entry["resumed"] for entry in second["manifest"]["files"])
    assert [e["upload_id"] for e in first["manifest"]["files"]] == [e["upload_id"] for e in second["manifest"]["files"]]
    with open_state_store(store_dir / "ingest_state.sqlite") as state:
        assert len(state.files()) == len(first["manifest"]["files"])
        for entry in second["manifest"]["files"]:
            assert [e.to_state for e in state.events(entry["upload_id"])][-1] == "promoted"


def test_a_run_killed_midway_carries_on(synthetic_fhir_dir: Path, tmp_path: Path) -> None:
    """Leaves files in every in-flight state, as a killed run would, then runs again."""
    store_dir = tmp_path / "store"
    store = open_zone_store(store_dir)
    names = sorted(p.name for p in synthetic_fhir_dir.iterdir())
    with open_state_store(store_dir / "ingest_state.sqlite") as state:
        for number, name in enumerate(names[:3]):
            path = synthetic_fhir_dir / name
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            record = state.register(
                f"sha256:{sha}", original_name=name, source="drop:x", lane="fhir", actor="test", object_name=sha
            ).record
            if number >= 1:
                store.upload("staging", sha, path, idempotency_key=f"sha256:{sha}", expected_sha256=sha)
                state.transition(record.id, states.UPLOADED, actor="test")
            if number == 2:
                state.transition(record.id, states.SCANNED, actor="test")
    run = run_main(tmp_path / "out", source=synthetic_fhir_dir, store=store_dir)
    check_counts(run)
    assert run["manifest"]["totals"]["promoted"] == len(names)
    assert [e["resumed"] for e in run["manifest"]["files"]].count(True) == 3
    assert len(open_zone_store(store_dir).list("clean")) == len(names)
    with open_state_store(store_dir / "ingest_state.sqlite") as state:
        for entry in run["manifest"]["files"]:
            assert [e.to_state for e in state.events(entry["upload_id"])] == [
                "received",
                "uploaded",
                "scanned",
                "promoted",
            ]


def test_bulk_export_with_random_429_and_500_completes(
    synthetic_fhir_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem, jwks = make_key_pair("ES384", "k1")
    monkeypatch.setenv("CLINFLOW_BULK_CLIENT_ID", "ingest-test")
    monkeypatch.setenv("CLINFLOW_BULK_PRIVATE_KEY", pem.decode())
    faults = FaultPlan(seed=5, rate_429=0.2, rate_500=0.2, max_random_faults=6, missing_types=("Condition",))
    files = load_bulk_files(synthetic_fhir_dir)
    with FhirBulkServer(files, clients={"ingest-test": jwks}, faults=faults) as server:
        run = run_main(tmp_path, "--bulk-url", server.base_url, "--bulk-kid", "k1")
    check_counts(run)
    manifest = run["manifest"]
    promoted = sorted(e["file"] for e in manifest["files"] if e["state"] == "promoted")
    assert promoted == sorted(files)
    missing = [e for e in manifest["files"] if e["reason_code"] == "missing_file"]
    assert len(missing) == 1 and missing[0]["object"] is None and missing[0]["state"] == "quarantined"
    assert manifest["bulk"]["job_deleted"] is True
    for name, content in files.items():
        assert (run["paths"]["data"] / name).read_bytes() == content
    assert "PRIVATE KEY" not in json.dumps(manifest)


def test_real_synthea_export_with_bulk_log(shared_data: Path, tmp_path: Path) -> None:
    run = run_main(tmp_path, source=shared_data / "fhir-bulk-10")
    check_counts(run)
    skipped = sorted(e["file"] for e in run["manifest"]["files"] if e["state"] == "skipped")
    assert skipped == ["README.md", "log.ndjson"]
    assert run["manifest"]["lanes"]["fhir"]["promoted"] == 13


def test_real_synthea_gzip_export(shared_data: Path, tmp_path: Path) -> None:
    run = run_main(tmp_path, source=shared_data / "fhir-bulk-100")
    check_counts(run)
    assert run["manifest"]["lanes"]["fhir"]["promoted"] == 16
    with gzip.open(run["paths"]["data"] / "Patient.000.ndjson.gz", "rt") as handle:
        assert sum(1 for _ in handle) == 100


def test_shared_dicom_samples_are_promoted(shared_data: Path, synthetic_fhir_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    shutil.copytree(synthetic_fhir_dir, drop)
    shutil.copytree(shared_data / "dicom-deid-samples", drop / "dicom")
    run = run_main(tmp_path / "out", source=drop)
    check_counts(run)
    assert run["manifest"]["lanes"]["dicom"]["promoted"] == 8
    assert len(list((run["paths"]["data"] / "dicom").glob("*.dcm"))) == 8


def test_no_promoted_fhir_is_one_line_error_with_the_manifest_kept(
    synthetic_fhir_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    source.mkdir()
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
    assert errors == [errors[0]] and "no FHIR NDJSON file was promoted" in errors[0]
    assert "Encounter.000.ndjson:17" in errors[0]
    manifest = json.loads((out / "manifest" / "ingest_manifest.json").read_text())
    assert manifest["files"][0]["reason_code"] == "invalid_json_line"


def test_module_entry_point(tmp_path: Path) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "components.ingest.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--source", "--bulk-url", "--store", "--state-db", "--output-data", "--manifest", "--metrics"):
        assert flag in help_text
    flags = ["--source", str(tmp_path / "missing"), "--output-data", str(tmp_path / "d")]
    flags += ["--manifest", str(tmp_path / "m"), "--metrics", str(tmp_path / "x")]
    result = subprocess.run([sys.executable, "-m", "components.ingest.main", *flags], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "missing" in result.stderr and "Traceback" not in result.stderr


def test_ingest_killed_mid_download_resumes_without_refetching(
    synthetic_fhir_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the stage while the bulk download is under way, run it again on the same store."""
    import os
    import signal
    import time

    repo = Path(__file__).resolve().parents[2]
    store_dir = tmp_path / "store"
    faults = FaultPlan(throttle_bytes_per_second=300_000)
    with FhirBulkServer(load_bulk_files(synthetic_fhir_dir), faults=faults) as server:
        argv = ["--bulk-url", server.base_url, "--store", str(store_dir), "--output-data", str(tmp_path / "k" / "d")]
        argv += ["--manifest", str(tmp_path / "k" / "m"), "--metrics", str(tmp_path / "k" / "x.json")]
        process = subprocess.Popen(
            [sys.executable, "-m", "components.ingest.main", *argv],
            cwd=repo,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ},
        )
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if any(p.stat().st_size > 50_000 for p in (store_dir / "bulk").glob("*.part")):
                    break
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        server.faults.throttle_bytes_per_second = None
        run = run_main(tmp_path / "again", "--bulk-url", server.base_url, store=store_dir)
        stats = server.stats
        assert len(stats.kickoffs) == 1
        for name, content in server.files.items():
            assert stats.bytes_served[name] <= len(content) + 256 * 1024, name
    check_counts(run)
    assert run["manifest"]["bulk"]["reused_job"] is True
    promoted = sorted(e["file"] for e in run["manifest"]["files"] if e["state"] == "promoted")
    assert promoted == sorted(load_bulk_files(synthetic_fhir_dir))
    assert len(open_zone_store(store_dir).list("clean")) == len(promoted)
