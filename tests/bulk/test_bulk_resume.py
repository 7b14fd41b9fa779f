"""Resumable downloads: dropped connections at any byte, failed files resumed on re-run, a SIGKILLed run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clinflow.testing.fhir_bulk_server import FaultPlan, FhirBulkServer
from components.ingest.bulk_client import run_export
from components.ingest.bulk_http import RetryPolicy
from components.ingest.bulk_state import STATE_FILE

REPO = Path(__file__).resolve().parents[2]
RESUME_OVERHEAD = 256 * 1024


def test_connection_cut_at_any_byte_resumes_byte_identical(bulk_source: Path, make_open_config, tmp_path) -> None:
    observation = (bulk_source / "Observation.000.ndjson").read_bytes()
    encounter = (bulk_source / "Encounter.000.ndjson").read_bytes()
    first_newline = observation.index(b"\n")
    mid_line = first_newline + 1 + 17
    line_end = encounter.index(b"\n") + 1
    cuts = {
        "Observation.000.ndjson": [0, 1, mid_line, len(observation) - 1],
        "Encounter.000.ndjson": [line_end, len(encounter)],
    }
    with FhirBulkServer.from_directory(bulk_source, faults=FaultPlan(cut_after=cuts)) as server:
        result = run_export(make_open_config(server), tmp_path / "out")
        stats = server.stats
    outcomes = {f.file: f for f in result.files}
    assert (tmp_path / "out" / "Observation.000.ndjson").read_bytes() == observation
    assert (tmp_path / "out" / "Encounter.000.ndjson").read_bytes() == encounter
    assert stats.bytes_served["Observation.000.ndjson"] == len(observation)  # nothing fetched twice
    assert stats.bytes_served["Encounter.000.ndjson"] == len(encounter)
    assert [start for name, start in stats.ranges if name == "Observation.000.ndjson"] == [
        1,
        mid_line,
        len(observation) - 1,
    ]
    assert outcomes["Observation.000.ndjson"].attempts == 5
    assert outcomes["Observation.000.ndjson"].resumed_bytes == len(observation) - 1
    assert all(f.state == "downloaded" for f in result.files)


def test_failed_download_is_recorded_then_resumed_on_rerun(bulk_source: Path, make_open_config, tmp_path) -> None:
    patient = (bulk_source / "Patient.000.ndjson").read_bytes()
    faults = FaultPlan(cut_after={"Patient.000.ndjson": [10, 10, 10]})
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.05)
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        config = make_open_config(server, types=("Patient", "Organization"), retry=policy)
        first = run_export(config, tmp_path / "out")
        failed = next(f for f in first.files if f.type == "Patient")
        assert (failed.state, failed.reason_code, failed.attempts) == ("quarantined", "download_failed", 3)
        assert "10 bytes kept" in failed.reason
        assert (tmp_path / "out" / "Patient.000.ndjson.part").stat().st_size == 10
        assert first.job_deleted is None and not server.stats.deleted_jobs  # kept for the re-run
        second = run_export(config, tmp_path / "out")
        done = next(f for f in second.files if f.type == "Patient")
        assert (done.state, done.attempts, done.resumed_bytes) == ("downloaded", 4, 10)
        assert (tmp_path / "out" / "Patient.000.ndjson").read_bytes() == patient
        assert server.stats.bytes_served["Patient.000.ndjson"] == len(patient)
        assert server.stats.bytes_served["Organization.000.ndjson"] == len(
            (bulk_source / "Organization.000.ndjson").read_bytes()
        )
        assert len(server.stats.kickoffs) == 1 and second.job_deleted is True


def _wait_for_part_bytes(directory: Path, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        if any(p.stat().st_size > 0 for p in directory.glob("*.part") if p.exists()):
            return
        time.sleep(0.02)
    pytest.fail("no .part file received bytes in time")


def test_killed_run_resumes_same_job_without_refetching(
    bulk_source: Path, client_key, make_auth_config, tmp_path
) -> None:
    out = tmp_path / "out"
    faults = FaultPlan(throttle_bytes_per_second=400_000, error_file=True)
    env = {**os.environ, "CLINFLOW_TEST_BULK_KEY": client_key.pem.decode()}
    with FhirBulkServer.from_directory(
        bulk_source, clients={"clinflow-test-client": client_key.jwks}, faults=faults
    ) as server:
        command = [
            sys.executable, "-m", "components.ingest.bulk_client", "--base-url", server.base_url,
            "--output-dir", str(out), "--client-id", "clinflow-test-client",
            "--private-key-env", "CLINFLOW_TEST_BULK_KEY", "--kid", "test-key-1", "--max-workers", "4",
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for_part_bytes(out, process)
            time.sleep(0.3)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        state = json.loads((out / STATE_FILE).read_text())
        assert state["status_url"] and state["manifest"]
        partial = {p.name: p.stat().st_size for p in out.glob("*.part")}
        assert partial and any(size > 0 for size in partial.values())

        server.faults.throttle_bytes_per_second = None
        result = run_export(make_auth_config(server), out)
        stats = server.stats

    assert result.reused_job and len(stats.kickoffs) == 1
    assert all(f.state == "downloaded" for f in (*result.files, *result.errors))
    for outcome in result.files:
        source = server.source_bytes(outcome.file)
        assert (out / outcome.file).read_bytes() == source, outcome.file
        assert stats.bytes_served[outcome.file] <= len(source) + RESUME_OVERHEAD, outcome.file
        print(f"{outcome.file}: size {len(source)}, served {stats.bytes_served[outcome.file]}, kept {partial}")
    resumed = {f.file: f.resumed_bytes for f in result.files if f.resumed_bytes}
    assert resumed, "at least one file must have been resumed with a Range request"
    assert {name for name, _ in stats.ranges} >= set(resumed)
    assert result.job_deleted is True
    assert not list(out.glob("*.part*"))


def test_changed_file_restarts_from_zero_when_if_range_fails(bulk_source: Path, make_open_config, tmp_path) -> None:
    faults = FaultPlan(cut_after={"Patient.000.ndjson": [100, 100]})
    policy = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_cap=0.05)
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        config = make_open_config(server, types=("Patient",), retry=policy)
        first = run_export(config, tmp_path / "out")
        assert first.files[0].reason_code == "download_failed"
        changed = server.files["Patient.000.ndjson"].replace(b'"gender":"male"', b'"gender":"unknown"')
        server.files["Patient.000.ndjson"] = changed  # new ETag: the saved part no longer fits
        ranges_before = list(server.stats.ranges)
        second = run_export(config, tmp_path / "out")
        (patient,) = second.files
        assert (patient.state, patient.restarts, patient.resumed_bytes) == ("downloaded", 1, 0)
        assert (tmp_path / "out" / "Patient.000.ndjson").read_bytes() == changed
        assert server.stats.ranges == ranges_before  # the server answered the If-Range request with 200


def test_killed_between_rename_and_record_is_rechecked_not_refetched(
    bulk_source: Path, make_open_config, tmp_path
) -> None:
    out = tmp_path / "out"
    with FhirBulkServer.from_directory(bulk_source) as server:
        config = make_open_config(server, types=("Patient",), delete_job=False)
        first = run_export(config, out)
        url = json.loads((out / STATE_FILE).read_text())["manifest"]["output"][0]["url"]
        # Simulate a kill after Patient.000.ndjson was renamed into place but before its outcome was saved.
        state = json.loads((out / STATE_FILE).read_text())
        state["files"] = {}
        (out / STATE_FILE).write_text(json.dumps(state))
        sidecar = {"url_sha256": hashlib.sha256(url.encode()).hexdigest(), "url": "", "attempts": 1}
        (out / "Patient.000.ndjson.part.json").write_text(json.dumps(sidecar))
        served = server.stats.bytes_served["Patient.000.ndjson"]
        second = run_export(config, out)
        assert server.stats.bytes_served["Patient.000.ndjson"] == served  # answered 416, nothing re-sent
        assert second.files[0].sha256 == first.files[0].sha256 and second.files[0].state == "downloaded"
        assert not (out / "Patient.000.ndjson.part.json").exists()


def test_expired_job_is_kicked_off_again(bulk_source: Path, make_open_config, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with FhirBulkServer.from_directory(bulk_source) as server:
        config = make_open_config(server, types=("Patient",))
        state = {
            "version": 1,
            "request": config.request_key(),
            "files": {},
            "status_url": f"{server.base_url}/jobs/dead",
        }
        (out / STATE_FILE).write_text(json.dumps(state))
        lines: list[str] = []
        result = run_export(config, out, progress=lines.append)
        assert result.downloaded and len(server.stats.kickoffs) == 1
        assert "the server no longer knows that job; starting a new export" in lines
