"""The ingest state machine and its SQLite metadata store."""

from __future__ import annotations

import io
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from clinflow.errors import UserError
from components.ingest.state import (
    IN_FLIGHT_STATES,
    STATES,
    TRANSITIONS,
    IllegalTransition,
    IngestStateStore,
    UnknownFile,
    check_transition,
    open_state_store,
)
from components.ingest.storage import upload_id_for


@pytest.fixture()
def db(tmp_path: Path):
    with open_state_store(tmp_path / "state" / "ingest.sqlite") as store:
        yield store


def register(db, key: str, lane: str = "dicom", name: str = "scan.dcm"):
    return db.register(key, original_name=name, source="drop/site-a", lane=lane, actor="ingest.dicom")


def test_database_is_wal(tmp_path: Path) -> None:
    open_state_store(tmp_path / "s.sqlite").close()
    mode = sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_registration_is_idempotent(db) -> None:
    first = register(db, "drop:scan.dcm:abc")
    again = register(db, "drop:scan.dcm:abc")
    assert first.created and not again.created
    assert first.record.id == again.record.id == upload_id_for("drop:scan.dcm:abc")
    assert first.record.state == "received"
    assert len(db.files()) == 1
    assert len(db.events(first.record.id)) == 1


def test_legal_path_records_one_event_per_transition(db) -> None:
    file_id = register(db, "k").record.id
    db.transition(file_id, "uploaded", actor="storage", size=10, sha256="a" * 64, object_name="dicom/x.dcm")
    db.transition(file_id, "scanned", actor="ingest.dicom.scan", details={"frames": 1})
    record = db.transition(file_id, "promoted", actor="ingest.promote")
    assert record.state == "promoted"
    assert (record.bytes, record.sha256, record.object_name) == (10, "a" * 64, "dicom/x.dcm")
    events = db.events(file_id)
    assert [(e.seq, e.from_state, e.to_state) for e in events] == [
        (1, None, "received"),
        (2, "received", "uploaded"),
        (3, "uploaded", "scanned"),
        (4, "scanned", "promoted"),
    ]
    assert [e.actor for e in events] == ["ingest.dicom", "storage", "ingest.dicom.scan", "ingest.promote"]
    assert events[2].details == {"frames": 1}
    for event in events:
        at = datetime.fromisoformat(event.at)
        assert at.utcoffset() == timezone.utc.utcoffset(None)
    assert events[0].at <= events[-1].at


def test_quarantine_and_reject_need_and_keep_reasons(db) -> None:
    held = register(db, "q").record.id
    db.transition(held, "uploaded", actor="storage")
    with pytest.raises(IllegalTransition, match="needs a reason code and a reason sentence"):
        db.transition(held, "quarantined", actor="scan")
    db.transition(held, "quarantined", actor="scan", reason_code="not_dicom", reason="No DICOM preamble.")
    refused = register(db, "r", name="r.exe").record.id
    db.transition(refused, "rejected", actor="sniff", reason_code="unsupported_type", reason="Executable file.")
    quarantined = db.quarantined()
    assert [(r.id, r.reason_code, r.reason) for r in quarantined] == [(held, "not_dicom", "No DICOM preamble.")]
    last = db.events(held)[-1]
    assert (last.reason_code, last.reason) == ("not_dicom", "No DICOM preamble.")


@pytest.mark.parametrize("source", STATES)
def test_transition_table(source: str) -> None:
    for target in STATES:
        if target in TRANSITIONS[source]:
            check_transition(source, target)
        else:
            with pytest.raises(IllegalTransition, match=f"{source} → {target}: not allowed"):
                check_transition(source, target)


def test_illegal_transitions_raise_and_leave_no_event(db) -> None:
    file_id = register(db, "i").record.id
    with pytest.raises(IllegalTransition, match="received → promoted: not allowed"):
        db.transition(file_id, "promoted", actor="x")
    with pytest.raises(IllegalTransition, match="unknown"):
        db.transition(file_id, "lost", actor="x")
    db.transition(file_id, "rejected", actor="x", reason_code="bad", reason="Bad.")
    with pytest.raises(IllegalTransition, match="terminal state"):
        db.transition(file_id, "uploaded", actor="x")
    assert db.get(file_id).state == "rejected"
    assert len(db.events(file_id)) == 2
    with pytest.raises(UnknownFile):
        db.transition("0" * 32, "uploaded", actor="x")


def test_events_are_append_only(db) -> None:
    file_id = register(db, "a").record.id
    connection = db._connection
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("UPDATE ingest_events SET actor = 'someone else'")
    connection.rollback()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("DELETE FROM ingest_events")
    connection.rollback()
    assert len(db.events(file_id)) == 1


def test_counts_add_up_per_lane(db) -> None:
    plan = {
        ("dicom", 0): ["uploaded", "scanned", "promoted"],
        ("dicom", 1): ["uploaded", "quarantined"],
        ("dicom", 2): ["uploaded"],
        ("documents", 0): ["rejected"],
        ("documents", 1): [],
        ("documents", 2): ["uploaded", "scanned", "promoted"],
    }
    for (lane, n), steps in plan.items():
        file_id = register(db, f"{lane}-{n}", lane=lane, name=f"{n}.bin").record.id
        for step in steps:
            reason = {"reason_code": "why", "reason": "Because."} if step in ("quarantined", "rejected") else {}
            db.transition(file_id, step, actor="t", **reason)
    counts = db.counts()
    assert counts["dicom"]["promoted"] == 1 and counts["dicom"]["quarantined"] == 1
    assert counts["dicom"]["uploaded"] == 1 and counts["documents"]["received"] == 1
    for lane_counts in counts.values():
        assert lane_counts["total"] == 3
        assert lane_counts["total"] == (
            lane_counts["promoted"] + lane_counts["quarantined"] + lane_counts["rejected"] + lane_counts["in_flight"]
        )
        assert lane_counts["in_flight"] == sum(lane_counts[s] for s in IN_FLIGHT_STATES)
    metrics = db.metrics()
    assert metrics["files_total"] == 6 and metrics["files_promoted"] == 2 and metrics["documents_rejected"] == 1
    assert len(db.manifest_entries()) == 6


def test_restart_picks_up_in_flight_files(tmp_path: Path) -> None:
    path = tmp_path / "ingest.sqlite"
    first_run = open_state_store(path)
    done = register(first_run, "done").record.id
    for step in ("uploaded", "scanned", "promoted"):
        first_run.transition(done, step, actor="run-1")
    stuck = register(first_run, "stuck").record.id
    first_run.transition(stuck, "uploaded", actor="run-1")
    fresh = register(first_run, "fresh").record.id
    del first_run  # killed: never closed

    second_run = open_state_store(path)
    assert not register(second_run, "stuck").created
    assert {(r.id, r.state) for r in second_run.in_flight()} == {(stuck, "uploaded"), (fresh, "received")}
    second_run.transition(stuck, "scanned", actor="run-2")
    assert [e.actor for e in second_run.events(stuck)] == ["ingest.dicom", "run-1", "run-2"]
    second_run.close()


def test_two_workers_cannot_both_move_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ingest.sqlite"
    worker_a, worker_b = open_state_store(path), open_state_store(path)
    file_id = register(worker_a, "race").record.id
    worker_a.transition(file_id, "uploaded", actor="a")
    worker_b.transition(file_id, "scanned", actor="b")
    with pytest.raises(IllegalTransition):
        worker_a.transition(file_id, "scanned", actor="a")
    assert [e.to_state for e in worker_a.events(file_id)] == ["received", "uploaded", "scanned"]
    worker_a.close()
    worker_b.close()


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_store_and_state_together_one_record_one_object(kind: str, store_factory, tmp_path: Path) -> None:
    zones = store_factory(kind)
    with open_state_store(tmp_path / "ingest.sqlite") as db:
        for attempt in range(2):  # the second run is a retry of the first: nothing is duplicated
            for name, body in [("dicom/a.dcm", b"DICM-a"), ("dicom/b.dcm", b"junk")]:
                key = f"drop:{name}"
                record = db.register(key, original_name=name, source="drop", lane="dicom", actor="ingest").record
                if record.state != "received":
                    continue
                result = zones.upload(
                    "staging", name, io.BytesIO(body), idempotency_key=key, metadata={"lane": "dicom"}
                )
                assert result.upload_id == record.id
                db.transition(record.id, "uploaded", actor="storage", sha256=result.info.sha256, object_name=name)
                db.transition(record.id, "scanned", actor="scan")
                if body.startswith(b"DICM"):
                    zones.promote(name)
                    db.transition(record.id, "promoted", actor="promote")
                else:
                    zones.quarantine(name, "not_dicom", "No DICOM preamble.")
                    db.transition(
                        record.id, "quarantined", actor="scan", reason_code="not_dicom", reason="No preamble."
                    )
            assert attempt == 0 or db.counts()["dicom"]["total"] == 2
        assert [i.name for i in zones.list("clean")] == ["dicom/a.dcm"]
        assert [i.name for i in zones.list("quarantine")] == ["dicom/b.dcm"]
        assert (db.counts()["dicom"]["promoted"], db.counts()["dicom"]["quarantined"]) == (1, 1)


def test_postgres_dsn_without_driver_is_a_clear_error() -> None:
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg is installed; this checks the message shown without it")
    with pytest.raises(UserError, match="needs the psycopg driver"):
        open_state_store("postgresql://ingest@127.0.0.1/clinflow")


def test_placeholders_are_rewritten_for_format_paramstyle(tmp_path: Path) -> None:
    """The SQL only uses ``?`` placeholders, rewritten for ``format`` drivers; sqlite3 checks the rewrite."""
    connection = sqlite3.connect(tmp_path / "fmt.sqlite")
    store = IngestStateStore(connection, paramstyle="qmark")
    assert store._sql("SELECT 1 WHERE a = ? AND b = ?") == "SELECT 1 WHERE a = ? AND b = ?"
    formatted = IngestStateStore.__new__(IngestStateStore)
    formatted._placeholder = "%s"
    assert formatted._sql("SELECT 1 WHERE a = ? AND b = ?") == "SELECT 1 WHERE a = %s AND b = %s"
    with pytest.raises(UserError, match="paramstyle 'named'"):
        IngestStateStore(connection, paramstyle="named")
    store.close()
