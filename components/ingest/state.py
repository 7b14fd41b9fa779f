"""The ingest state machine and its metadata store (SQLite by default, any DB-API driver).

Every file that enters ingest is one row of ``ingest_files`` keyed by its upload id (derived from
the caller's idempotency key, so a retried run finds its files instead of duplicating them). Its
state moves only along ``TRANSITIONS``::

    received → uploaded (in staging) → scanned → promoted (clean)
                  │                      ├─────→ quarantined
                  └──→ quarantined       └─────→ rejected
    received / uploaded → rejected

and every move appends one row to ``ingest_events`` (file id, sequence number, from, to, UTC time,
actor, reason code, reason, details JSON). Events are append-only: SQLite triggers refuse
``UPDATE``/``DELETE`` on them. A state change is a compare-and-set (``UPDATE … WHERE state = ?``),
so two workers cannot both move one file, and a killed run leaves each file in its last committed
state: ``in_flight()`` lists the ones to pick up again.

The SQL is plain DB-API with ``?`` placeholders, rewritten to ``%s`` for drivers whose paramstyle
is ``format``/``pyformat`` (psycopg), so the same code runs on Postgres (docs/ingest-storage.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clinflow.errors import UserError
from components.ingest.storage.checksums import upload_id_for

RECEIVED = "received"
UPLOADED = "uploaded"
SCANNED = "scanned"
PROMOTED = "promoted"
QUARANTINED = "quarantined"
REJECTED = "rejected"
STATES: tuple[str, ...] = (RECEIVED, UPLOADED, SCANNED, PROMOTED, QUARANTINED, REJECTED)
TERMINAL_STATES = frozenset({PROMOTED, QUARANTINED, REJECTED})
IN_FLIGHT_STATES: tuple[str, ...] = (RECEIVED, UPLOADED, SCANNED)
TRANSITIONS: dict[str, frozenset[str]] = {
    RECEIVED: frozenset({UPLOADED, REJECTED}),
    UPLOADED: frozenset({SCANNED, QUARANTINED, REJECTED}),
    SCANNED: frozenset({PROMOTED, QUARANTINED, REJECTED}),
    PROMOTED: frozenset(),
    QUARANTINED: frozenset(),
    REJECTED: frozenset(),
}
# States a file cannot reach without a machine-readable reason.
NEEDS_REASON = frozenset({QUARANTINED, REJECTED})

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS ingest_files (
        id TEXT PRIMARY KEY,
        original_name TEXT NOT NULL,
        source TEXT NOT NULL,
        lane TEXT NOT NULL,
        content_type TEXT,
        bytes BIGINT,
        sha256 TEXT,
        state TEXT NOT NULL,
        reason_code TEXT,
        reason TEXT,
        object_name TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ingest_files_lane_state ON ingest_files (lane, state)",
    """CREATE TABLE IF NOT EXISTS ingest_events (
        file_id TEXT NOT NULL REFERENCES ingest_files (id),
        seq INTEGER NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason_code TEXT,
        reason TEXT,
        details TEXT NOT NULL,
        PRIMARY KEY (file_id, seq)
    )""",
)
SQLITE_APPEND_ONLY: tuple[str, ...] = (
    """CREATE TRIGGER IF NOT EXISTS ingest_events_no_update BEFORE UPDATE ON ingest_events
        BEGIN SELECT RAISE(ABORT, 'ingest_events is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS ingest_events_no_delete BEFORE DELETE ON ingest_events
        BEGIN SELECT RAISE(ABORT, 'ingest_events is append-only'); END""",
)
_FILE_COLUMNS = (
    "id, original_name, source, lane, content_type, bytes, sha256, state, reason_code, reason, object_name, "
    "created_at, updated_at"
)
_EVENT_COLUMNS = "file_id, seq, from_state, to_state, at, actor, reason_code, reason, details"


class IllegalTransition(UserError):  # noqa: N818 - reads as the condition it reports
    """A state change the state machine does not allow (or a lost compare-and-set race)."""


class UnknownFile(UserError):  # noqa: N818
    """No file with that id is registered."""


@dataclass(frozen=True)
class FileRecord:
    """One row of ``ingest_files``: a file and where it is in the state machine.

    Attributes:
        id: The upload id (from the idempotency key).
        original_name: The file's name as received.
        source: Where it came from (lane-specific: export URL, drop folder, ...).
        lane: ``fhir``, ``dicom``, ``device_logs``, ``documents``, ...
        content_type: Detected content type.
        bytes: Size, once known.
        sha256: Hex SHA-256, once known.
        state: Current state.
        reason_code: Machine-readable reason of a quarantine/rejection.
        reason: The human sentence for it.
        object_name: Object name in the zone store.
        created_at: Registration time (ISO 8601 UTC).
        updated_at: Time of the last transition.
    """

    id: str
    original_name: str
    source: str
    lane: str
    content_type: str | None
    bytes: int | None
    sha256: str | None
    state: str
    reason_code: str | None
    reason: str | None
    object_name: str | None
    created_at: str
    updated_at: str

    def manifest_entry(self) -> dict[str, Any]:
        """The file's upload manifest entry."""
        return {
            "upload_id": self.id,
            "file": self.original_name,
            "source": self.source,
            "lane": self.lane,
            "content_type": self.content_type,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "state": self.state,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "object": self.object_name,
        }


@dataclass(frozen=True)
class Event:
    """One row of ``ingest_events``.

    Attributes:
        file_id: The file's upload id.
        seq: 1-based position among the file's events.
        from_state: The state before (None for registration).
        to_state: The state after.
        at: When (ISO 8601 UTC).
        actor: Who or which stage made the change.
        reason_code: Machine-readable reason, if any.
        reason: Human sentence, if any.
        details: Extra JSON details.
    """

    file_id: str
    seq: int
    from_state: str | None
    to_state: str
    at: str
    actor: str
    reason_code: str | None
    reason: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class Registration:
    """What ``register`` did.

    Attributes:
        record: The file's record.
        created: False when the idempotency key was already registered (the existing record is returned).
    """

    record: FileRecord
    created: bool


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds and ``+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_transition(from_state: str, to_state: str) -> None:
    """Raises ``IllegalTransition`` unless the state machine allows ``from_state → to_state``."""
    if to_state not in TRANSITIONS:
        raise IllegalTransition(f"state {to_state!r}: unknown; use one of {', '.join(STATES)}")
    if to_state not in TRANSITIONS.get(from_state, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(from_state, frozenset()))) or "nothing (terminal state)"
        raise IllegalTransition(f"{from_state} → {to_state}: not allowed; from {from_state} a file may go to {allowed}")


class IngestStateStore:
    """The files table and the append-only event log over one DB-API connection.

    Use ``open_state_store(path)`` for SQLite. For another driver pass its connection and paramstyle;
    the store never calls anything beyond DB-API ``cursor``/``execute``/``fetch*``/``commit``/``rollback``.

    Args:
        connection: An open DB-API 2.0 connection.
        paramstyle: The driver's ``paramstyle`` (``qmark`` for sqlite3, ``format``/``pyformat`` for psycopg).
        sqlite: Whether the connection is SQLite (adds the append-only triggers).
    """

    def __init__(self, connection: Any, *, paramstyle: str = "qmark", sqlite: bool = False) -> None:
        if paramstyle not in ("qmark", "format", "pyformat"):
            raise UserError(f"paramstyle {paramstyle!r}: use a driver with qmark, format or pyformat placeholders")
        self._connection = connection
        self._placeholder = "?" if paramstyle == "qmark" else "%s"
        self._integrity_error: type[BaseException] = getattr(connection, "IntegrityError", sqlite3.IntegrityError)
        with self._transaction() as cursor:
            for statement in SCHEMA + (SQLITE_APPEND_ONLY if sqlite else ()):
                cursor.execute(statement)

    def close(self) -> None:
        """Closes the connection."""
        self._connection.close()

    def __enter__(self) -> IngestStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _sql(self, query: str) -> str:
        return query if self._placeholder == "?" else query.replace("?", self._placeholder)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        cursor = self._connection.cursor()
        try:
            yield cursor
            self._connection.commit()
        except BaseException:
            self._connection.rollback()
            raise
        finally:
            cursor.close()

    def _query(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(self._sql(query), tuple(params))
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
            self._connection.commit()  # end the read transaction (Postgres would otherwise hold it open)

    # ------------------------------------------------------------------ registration

    def get(self, file_id: str) -> FileRecord:
        """Returns a file's record; raises ``UnknownFile``."""
        rows = self._query(f"SELECT {_FILE_COLUMNS} FROM ingest_files WHERE id = ?", (file_id,))
        if not rows:
            raise UnknownFile(f"upload id {file_id}: no such file in the ingest state store")
        return FileRecord(*rows[0])

    def register(
        self,
        idempotency_key: str,
        *,
        original_name: str,
        source: str,
        lane: str,
        actor: str,
        content_type: str | None = None,
        size: int | None = None,
        sha256: str | None = None,
        object_name: str | None = None,
    ) -> Registration:
        """Registers a received file once per idempotency key (state ``received``, one event).

        Args:
            idempotency_key: The caller's key (the same one given to ``ZoneStore.upload``); the id derives from it.
            original_name: The file's name as received.
            source: Where it came from.
            lane: Which ingest lane handles it.
            actor: Who registers it (stage or user).
            content_type: Detected content type, if known.
            size: Bytes, if known.
            sha256: Hex SHA-256, if known.
            object_name: Object name it will have in the zone store.

        Returns:
            The record and whether it was created now (False: the key was registered before).
        """
        file_id = upload_id_for(idempotency_key)
        existing = self._query(f"SELECT {_FILE_COLUMNS} FROM ingest_files WHERE id = ?", (file_id,))
        if existing:
            return Registration(FileRecord(*existing[0]), created=False)
        now = utc_now()
        try:
            with self._transaction() as cursor:
                cursor.execute(
                    self._sql(
                        f"INSERT INTO ingest_files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (file_id, original_name, source, lane, content_type, size, sha256, RECEIVED, None, None,
                     object_name, now, now),
                )  # fmt: skip
                self._append_event(cursor, file_id, 1, None, RECEIVED, now, actor, None, None, {"lane": lane})
        except self._integrity_error:
            return Registration(self.get(file_id), created=False)  # a concurrent registration won
        return Registration(self.get(file_id), created=True)

    def _append_event(
        self,
        cursor: Any,
        file_id: str,
        seq: int,
        from_state: str | None,
        to_state: str,
        at: str,
        actor: str,
        reason_code: str | None,
        reason: str | None,
        details: Mapping[str, Any],
    ) -> None:
        cursor.execute(
            self._sql(f"INSERT INTO ingest_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            (file_id, seq, from_state, to_state, at, actor, reason_code, reason,
             json.dumps(dict(details), sort_keys=True)),
        )  # fmt: skip

    # ------------------------------------------------------------------ transitions

    def transition(
        self,
        file_id: str,
        to_state: str,
        *,
        actor: str,
        reason_code: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        size: int | None = None,
        sha256: str | None = None,
        object_name: str | None = None,
        content_type: str | None = None,
    ) -> FileRecord:
        """Moves a file to ``to_state`` and appends the event, in one transaction.

        Args:
            file_id: The upload id.
            to_state: The new state.
            actor: Who or which stage makes the change.
            reason_code: Machine-readable reason; required for ``quarantined`` and ``rejected``.
            reason: One human sentence; required with a reason code. No identifier values from the file.
            details: Extra JSON for the event (counts, scanner versions, ...).
            size: Bytes, when learnt at this step (kept when None).
            sha256: Hex SHA-256, when learnt at this step.
            object_name: Object name in the zone store, when learnt at this step.
            content_type: Detected content type, when learnt at this step.

        Returns:
            The updated record.

        Raises:
            IllegalTransition: The move is not allowed from the current state, a reason is missing,
                or another worker moved the file first.
        """
        if to_state in NEEDS_REASON and not (reason_code and reason):
            raise IllegalTransition(f"upload id {file_id}: → {to_state} needs a reason code and a reason sentence")
        current = self.get(file_id)
        check_transition(current.state, to_state)
        now = utc_now()
        with self._transaction() as cursor:
            cursor.execute(
                self._sql(
                    "UPDATE ingest_files SET state = ?, updated_at = ?, reason_code = COALESCE(?, reason_code), "
                    "reason = COALESCE(?, reason), bytes = COALESCE(?, bytes), sha256 = COALESCE(?, sha256), "
                    "object_name = COALESCE(?, object_name), content_type = COALESCE(?, content_type) "
                    "WHERE id = ? AND state = ?"
                ),
                (to_state, now, reason_code, reason, size, sha256, object_name, content_type, file_id, current.state),
            )
            if cursor.rowcount != 1:
                raise IllegalTransition(
                    f"upload id {file_id}: changed state concurrently (was {current.state}); reload and retry"
                )
            cursor.execute(self._sql("SELECT COUNT(*) FROM ingest_events WHERE file_id = ?"), (file_id,))
            seq = int(cursor.fetchone()[0]) + 1
            self._append_event(
                cursor, file_id, seq, current.state, to_state, now, actor, reason_code, reason, details or {}
            )
        return self.get(file_id)

    # ------------------------------------------------------------------ queries

    def events(self, file_id: str) -> list[Event]:
        """A file's events in order."""
        rows = self._query(f"SELECT {_EVENT_COLUMNS} FROM ingest_events WHERE file_id = ? ORDER BY seq", (file_id,))
        return [
            Event(row[0], int(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], json.loads(row[8]))
            for row in rows
        ]

    def files(self, *, state: str | None = None, lane: str | None = None) -> list[FileRecord]:
        """Files, optionally of one state and/or lane, by registration time then name."""
        clauses, params = [], []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if lane is not None:
            clauses.append("lane = ?")
            params.append(lane)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT {_FILE_COLUMNS} FROM ingest_files{where} ORDER BY created_at, original_name, id", params
        )
        return [FileRecord(*row) for row in rows]

    def in_flight(self, lane: str | None = None) -> list[FileRecord]:
        """Files not yet in a terminal state: what a restarted run must pick up again."""
        return [record for record in self.files(lane=lane) if record.state in IN_FLIGHT_STATES]

    def quarantined(self) -> list[FileRecord]:
        """Quarantined files with their reason codes and reasons."""
        return self.files(state=QUARANTINED)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per lane: files in each state, plus ``in_flight``, ``terminal`` and ``total`` (all registered).

        ``total == promoted + quarantined + rejected + in_flight`` holds for every lane (``total`` is
        every file ever received; the ``received`` key counts files still waiting in that state).
        """
        rows = self._query("SELECT lane, state, COUNT(*) FROM ingest_files GROUP BY lane, state ORDER BY lane, state")
        result: dict[str, dict[str, int]] = {}
        for lane, state, count in rows:
            lane_counts = result.setdefault(lane, dict.fromkeys(STATES, 0))
            lane_counts[state] = int(count)
        for lane_counts in result.values():
            lane_counts["in_flight"] = sum(lane_counts[state] for state in IN_FLIGHT_STATES)
            lane_counts["terminal"] = sum(lane_counts[state] for state in TERMINAL_STATES)
            lane_counts["total"] = lane_counts["in_flight"] + lane_counts["terminal"]
        return result

    def metrics(self) -> dict[str, int]:
        """Flat scalar metrics for KFP: ``files_<state>`` overall and ``<lane>_<state>`` per lane."""
        totals: dict[str, int] = {}
        metrics: dict[str, int] = {}
        for lane, lane_counts in self.counts().items():
            for key, value in lane_counts.items():
                metrics[f"{lane}_{key}"] = value
                totals[key] = totals.get(key, 0) + value
        metrics.update({f"files_{key}": value for key, value in totals.items()})
        return dict(sorted(metrics.items()))

    def manifest_entries(self) -> list[dict[str, Any]]:
        """Every file's upload manifest entry."""
        return [record.manifest_entry() for record in self.files()]


def open_state_store(path: str | os.PathLike[str]) -> IngestStateStore:
    """Opens (creating if needed) the state database: a SQLite file in WAL mode, or a Postgres DSN.

    Args:
        path: The SQLite database file (its directory is created if missing), or a
            ``postgresql://user@host/db`` DSN, which needs the ``psycopg`` driver installed (it is not a
            project dependency; the password comes from ``PGPASSWORD``/``~/.pgpass``, never the DSN).

    Returns:
        The store.

    Raises:
        UserError: A Postgres DSN without psycopg installed.
    """
    text = os.fspath(path)
    if text.startswith(("postgresql://", "postgres://")):
        return _open_postgres(text)
    database = Path(path)
    database.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(database, timeout=30.0)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    return IngestStateStore(connection, paramstyle="qmark", sqlite=True)


def _open_postgres(dsn: str) -> IngestStateStore:
    """Opens the store on Postgres through psycopg (3), if installed."""
    try:
        import psycopg
    except ImportError:
        raise UserError(
            "a postgresql:// state store needs the psycopg driver (pip install 'psycopg[binary]'); "
            "or pass a SQLite file path"
        ) from None
    return IngestStateStore(psycopg.connect(dsn), paramstyle="format")
