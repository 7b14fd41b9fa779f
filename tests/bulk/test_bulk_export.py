"""Bulk Data $export client against the real test server: levels, polling, faults, verification."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from clinflow.errors import UserError
from clinflow.testing.fhir_bulk_server import NON_PATIENT_TYPES, FaultPlan, FhirBulkServer
from components.ingest.bulk_client import run_export
from components.ingest.bulk_http import RetryPolicy, parse_retry_after, redact_url
from components.ingest.bulk_state import STATE_FILE

REPO = Path(__file__).resolve().parents[2]


def assert_identical(result, server: FhirBulkServer) -> None:
    for outcome in result.downloaded:
        data = (result.output_dir / outcome.file).read_bytes()
        source_name = Path(outcome.file).name
        assert data == server.source_bytes(source_name), outcome.file
        assert outcome.resources == data.count(b"\n")


def test_happy_path_generated_with_auth(bulk_source: Path, make_auth_config, client_key, tmp_path: Path) -> None:
    faults = FaultPlan(deleted_file=True)
    lines: list[str] = []
    with FhirBulkServer.from_directory(
        bulk_source, clients={"clinflow-test-client": client_key.jwks}, faults=faults
    ) as server:
        config = make_auth_config(server, since="2000-01-01T00:00:00Z")
        result = run_export(config, tmp_path / "out", progress=lines.append)
        assert_identical(result, server)
        assert {f.file for f in result.files} == set(server.files)
        assert all(f.state == "downloaded" and f.attempts == 1 for f in result.files)
        assert [f.file for f in result.errors] == ["errors/OperationOutcome.000.ndjson"]
        assert result.errors[0].resources == 1
        assert [f.file for f in result.deleted] == ["deleted/Bundle.000.ndjson"]
        assert result.transaction_time.endswith("Z")
        assert result.job_deleted is True
        assert server.stats.deleted_jobs and server.stats.kickoffs == [("system", {"_since": "2000-01-01T00:00:00Z"})]
        assert server.stats.requests["token"] == 1
        assert all("?" not in f.url for f in result.files)
    state = json.loads((tmp_path / "out" / STATE_FILE).read_text())
    assert state["manifest"]["requiresAccessToken"] is True and state["job_deleted"] is True
    assert any(line.startswith("kicked off system-level export") for line in lines)
    assert any("Patient resources" in line for line in lines)
    assert not list((tmp_path / "out").glob("*.part*"))


def test_shared_fhir_bulk_100(shared_data: Path, make_open_config, tmp_path: Path) -> None:
    source = shared_data / "fhir-bulk-100"
    if not source.is_dir():
        pytest.skip("fhir-bulk-100 not in shared data")
    with FhirBulkServer.from_directory(source) as server:
        result = run_export(make_open_config(server, max_workers=4), tmp_path / "out")
        assert len(result.downloaded) == len(server.files) == 16
        assert_identical(result, server)
        assert sum(f.bytes for f in result.files) == sum(len(v) for v in server.files.values())


def test_group_and_patient_levels_with_type(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    with FhirBulkServer.from_directory(bulk_source, groups=("cohort-1",)) as server:
        group = run_export(
            make_open_config(server, level="group", group_id="cohort-1", types=("Patient", "Observation")),
            tmp_path / "group",
        )
        assert sorted(f.type for f in group.files) == ["Observation", "Patient"]
        patient = run_export(make_open_config(server, level="patient"), tmp_path / "patient")
        assert {f.type for f in patient.files}.isdisjoint(NON_PATIENT_TYPES)
        assert "Patient" in {f.type for f in patient.files}
        assert server.stats.kickoffs[0] == ("group", {"_type": "Patient,Observation"})
        assert server.stats.kickoffs[1] == ("patient", {})
        assert_identical(group, server)
        with pytest.raises(UserError, match=r"kick-off refused .*HTTP 404"):
            run_export(make_open_config(server, level="group", group_id="no-such-group"), tmp_path / "bad")


def test_retry_after_honoured_and_progress_reported(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    faults = FaultPlan(polls_before_complete=2, retry_after_seconds=1)
    lines: list[str] = []
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        run_export(make_open_config(server, types=("Patient",)), tmp_path / "out", progress=lines.append)
        polls = server.stats.poll_times
    assert len(polls) == 3
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert all(0.95 <= gap < 2.5 for gap in gaps), gaps
    assert [line for line in lines if line.startswith("export in progress")] == [
        "export in progress: 0% complete (next poll in 1s)",
        "export in progress: 50% complete (next poll in 1s)",
    ]


def test_poll_cap_limits_a_long_retry_after(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    faults = FaultPlan(polls_before_complete=1, retry_after_seconds=30)
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        started = time.monotonic()
        run_export(make_open_config(server, types=("Patient",), poll_cap=0.2), tmp_path / "out")
        assert time.monotonic() - started < 5


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3", default=9, cap=60) == 3
    assert parse_retry_after(None, default=2, cap=60) == 2
    assert parse_retry_after("soon", default=2, cap=60) == 2
    assert parse_retry_after("500", default=2, cap=60) == 60
    in_four = parse_retry_after(formatdate(time.time() + 4, usegmt=True), default=0, cap=60)
    assert 2.5 <= in_four <= 4.5
    assert parse_retry_after(formatdate(time.time() - 100, usegmt=True), default=5, cap=60) == 0


def test_redact_url_drops_query_secrets() -> None:
    url = "https://user:pw@store.example:8443/bucket/Patient.ndjson?X-Goog-Signature=abc&sig=def#frag"
    assert redact_url(url) == "https://store.example:8443/bucket/Patient.ndjson"


def test_random_429_and_500_complete(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    faults = FaultPlan(seed=5, rate_429=0.3, rate_500=0.3, max_random_faults=8, retry_after_429=0)
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        config = make_open_config(server, retry=RetryPolicy(max_attempts=10, backoff_base=0.02, backoff_cap=0.2))
        result = run_export(config, tmp_path / "out")
        assert server.stats.injected["429"] + server.stats.injected["500"] >= 4
        assert server.stats.injected["429"] >= 1 and server.stats.injected["500"] >= 1
        assert len(result.downloaded) == len(server.files)
        assert_identical(result, server)
        assert sum(f.attempts for f in result.files) > len(result.files)


def test_truncated_file_is_quarantined(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    faults = FaultPlan(truncate={"Condition.000.ndjson"})
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        result = run_export(make_open_config(server), tmp_path / "out")
    (bad,) = result.quarantined
    assert (bad.state, bad.reason_code, bad.file) == (
        "quarantined",
        "truncated_ndjson",
        "quarantine/Condition.000.ndjson",
    )
    assert "cut off" in bad.reason
    assert not (tmp_path / "out" / "Condition.000.ndjson").exists()
    assert (tmp_path / "out" / bad.file).stat().st_size == bad.bytes > 0
    assert len(result.downloaded) == len(result.files) - 1


def test_missing_file_is_quarantined_not_raised(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    faults = FaultPlan(missing_types=("Goal",))
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        result = run_export(make_open_config(server), tmp_path / "out")
    (missing,) = result.quarantined
    assert (missing.type, missing.reason_code, missing.attempts) == ("Goal", "missing_file", 1)
    assert "404" in missing.reason


def test_resource_type_mismatch_is_quarantined(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    files = {"Patient.000.ndjson": (bulk_source / "Observation.000.ndjson").read_bytes()}
    with FhirBulkServer(files) as server:
        result = run_export(make_open_config(server), tmp_path / "out")
    (bad,) = result.files
    assert (bad.state, bad.reason_code) == ("quarantined", "resource_type_mismatch")
    assert "line 1 has resourceType 'Observation'" in bad.reason


def test_failed_job_raises_user_error(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    expected = r"export job failed \(HTTP 500 OperationOutcome error/exception\)"
    with (
        FhirBulkServer.from_directory(bulk_source, faults=FaultPlan(fail_job=True)) as server,
        pytest.raises(UserError, match=expected) as info,
    ):
        run_export(make_open_config(server), tmp_path / "out")
    assert "test fault" not in str(info.value)  # server diagnostics text is not echoed


def test_rerun_of_finished_export_downloads_nothing(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    with FhirBulkServer.from_directory(bulk_source) as server:
        first = run_export(make_open_config(server), tmp_path / "out")
        served = sum(server.stats.bytes_served.values())
        second = run_export(make_open_config(server), tmp_path / "out")
        assert sum(server.stats.bytes_served.values()) == served
        assert len(server.stats.kickoffs) == 1 and second.reused_job
        assert [f.sha256 for f in second.files] == [f.sha256 for f in first.files]
        assert second.job_deleted is True and len(server.stats.deleted_jobs) == 1


def test_other_request_in_same_directory_is_refused(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    with FhirBulkServer.from_directory(bulk_source) as server:
        run_export(make_open_config(server, types=("Patient",)), tmp_path / "out")
        with pytest.raises(UserError, match="holds another export"):
            run_export(make_open_config(server, types=("Observation",)), tmp_path / "out")


def test_cli_help_and_summary(bulk_source: Path, tmp_path: Path) -> None:
    for module in ("components.ingest.bulk_client", "clinflow.testing.fhir_bulk_server"):
        shown = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
        assert shown.returncode == 0 and "--help" in shown.stdout
    with FhirBulkServer.from_directory(bulk_source, faults=FaultPlan(missing_types=("Goal",))) as server:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "components.ingest.bulk_client",
                "--base-url",
                server.base_url,
                "--output-dir",
                str(tmp_path / "out"),
                "--type",
                "Patient,Goal",
                "--backoff-base",
                "0.01",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert "downloaded 1/2 output files" in done.stdout
    assert "quarantined Goal.000.ndjson: missing_file" in done.stdout
    assert "kicked off system-level export" in done.stderr


def test_file_429_retry_after_honoured(bulk_source: Path, make_open_config, tmp_path: Path) -> None:
    faults = FaultPlan(
        rate_429=1.0, max_random_faults=2, retry_after_429=1, random_fault_routes=("file",), error_file=False
    )
    with FhirBulkServer.from_directory(bulk_source, faults=faults) as server:
        started = time.monotonic()
        result = run_export(make_open_config(server, types=("Patient",)), tmp_path / "out")
        elapsed = time.monotonic() - started
        assert server.stats.injected["429"] == 2
    (patient,) = result.files
    assert (patient.state, patient.attempts) == ("downloaded", 3)
    assert 1.95 <= elapsed < 5  # two Retry-After: 1 waits, not the 0.02 s backoff
