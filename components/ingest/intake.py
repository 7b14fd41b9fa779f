"""Take files through the ingest boundary: stage, judge, promote or quarantine, record every step.

Every input file (a file drop directory, and the files a FHIR Bulk ``$export`` downloaded) goes
through the same steps, each recorded as a state transition with an event in the metadata store
(``components.ingest.state``):

1. ``received``: its SHA-256 is the idempotency key, so the same bytes are one record and one
   object however often they arrive (within a run or across runs);
2. ``uploaded``: it is stored in the ``staging`` zone of the object store under its SHA-256, with
   the manifest entry as object metadata, checksums verified (``components.ingest.storage``);
3. ``scanned``: its lane judged it (``components.ingest.lanes.route``: magic-byte sniffing, size
   and decompression-bomb limits, the FHIR / DICOM / device-log / PDF validator);
4. ``promoted`` to the ``clean`` zone, or ``quarantined`` / ``rejected`` (moved to the
   ``quarantine`` zone with a machine-readable reason code and a sentence a person can act on).

A killed run started again finds each file in its last committed state and carries on from
there. Promoted files are also written into the stage's output Dataset in the layout the
deidentify stage reads (docs/stages.md): FHIR NDJSON at the top level, ``dicom/<sha256>.dcm``,
``device_logs/<name>``, ``documents/<sha256>.pdf`` with ``documents/<sha256>.json``.

Counting: for every lane, ``received = promoted + quarantined + rejected`` and for the run,
``received = promoted + quarantined + rejected + duplicates + skipped``; both are checked.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from clinflow.errors import UserError
from components.ingest import state as states
from components.ingest.ingest import SKIPPED_FILES, hash_file
from components.ingest.lanes import pdf as pdf_lane
from components.ingest.lanes import route
from components.ingest.lanes.verdict import LaneVerdict
from components.ingest.limits import DEFAULT_LIMITS, IngestLimits
from components.ingest.state import IngestStateStore
from components.ingest.storage import ZoneStore

ACTOR = "ingest"
FHIR_LANE = "fhir"
OUTCOME_STATE = {"promote": states.PROMOTED, "quarantine": states.QUARANTINED, "reject": states.REJECTED}
TERMINAL_ZONE = {states.PROMOTED: "clean", states.QUARANTINED: "quarantine", states.REJECTED: "quarantine"}
MEDIA_TYPES = {
    "fhir": "application/fhir+ndjson",
    "dicom": "application/dicom",
    "device_logs": "text/plain",
    "pdf": "application/pdf",
}
# Bulk-export bookkeeping files that live beside the downloads and are not data.
BULK_SIDE_NAMES = frozenset({"bulk_export_state.json"})
BULK_SIDE_SUFFIXES = (".part", ".part.json")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class InputFile:
    """One file offered to ingest.

    Attributes:
        path: Where the bytes are on local disk.
        name: The name it arrived under (relative to its source).
        source: Where it came from (``drop:<dir>`` or ``bulk:<base url>``), no secrets.
    """

    path: Path
    name: str
    source: str


@dataclass(frozen=True)
class FileOutcome:
    """What ingest did with one input file (one ``files[]`` entry of the manifest).

    Attributes:
        name: Arrival name.
        source: Where it came from.
        lane: The lane that judged it (``fhir``, ``dicom``, ``device_logs``, ``pdf``, ``unrouted``).
        state: ``promoted``, ``quarantined``, ``rejected``, ``duplicate`` or ``skipped``.
        reason_code: Machine-readable reason (``ok`` when promoted without remarks).
        reason: A sentence a person can act on (no PHI values).
        sha256: Hex SHA-256 of the bytes (``None`` when no bytes arrived).
        bytes: Size in bytes.
        content_type: Sniffed content type.
        upload_id: The metadata-store record id.
        object_name: The object's name in the zone store.
        zone: The zone it ended in.
        output: Path of the copy in the output Dataset (promoted files only), relative to it.
        details: Structured, PHI-free facts from the lane (counts, UIDs, flagged rows).
        resumed: True when a previous run had already taken this file part of the way.
    """

    name: str
    source: str
    lane: str
    state: str
    reason_code: str
    reason: str
    sha256: str | None = None
    bytes: int = 0
    content_type: str = ""
    upload_id: str | None = None
    object_name: str | None = None
    zone: str | None = None
    output: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    def manifest_entry(self) -> dict[str, Any]:
        """The JSON entry of ``ingest_manifest.json``."""
        return {
            "file": self.name,
            "source": self.source,
            "lane": self.lane,
            "state": self.state,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "content_type": self.content_type,
            "upload_id": self.upload_id,
            "object": self.object_name,
            "zone": self.zone,
            "output": self.output,
            "resumed": self.resumed,
            "details": self.details,
        }


@dataclass
class IntakeResult:
    """Every file's outcome, in arrival order."""

    files: list[FileOutcome] = field(default_factory=list)

    def lane_counts(self) -> dict[str, dict[str, int]]:
        """Per lane: received, promoted, quarantined, rejected (duplicates and side files excluded)."""
        counts: dict[str, Counter[str]] = {}
        for outcome in self.files:
            if outcome.state in ("duplicate", "skipped"):
                continue
            lane = counts.setdefault(outcome.lane, Counter())
            lane["received"] += 1
            lane[outcome.state] += 1
        return {
            lane: {key: counter[key] for key in ("received", "promoted", "quarantined", "rejected")}
            for lane, counter in sorted(counts.items())
        }

    def totals(self) -> dict[str, int]:
        """Run totals: received = promoted + quarantined + rejected + duplicate + skipped."""
        states_seen = Counter(outcome.state for outcome in self.files)
        totals = {"received": len(self.files)}
        for key in ("promoted", "quarantined", "rejected", "duplicate", "skipped"):
            totals[key] = states_seen[key]
        totals["bytes"] = sum(outcome.bytes for outcome in self.files)
        totals["promoted_bytes"] = sum(outcome.bytes for outcome in self.files if outcome.state == "promoted")
        return totals

    def check_counts(self) -> None:
        """Raises ``AssertionError`` when the counts do not add up (that would be a bug)."""
        totals = self.totals()
        parts = sum(totals[key] for key in ("promoted", "quarantined", "rejected", "duplicate", "skipped"))
        if parts != totals["received"]:
            raise AssertionError(f"ingest counts do not add up: {totals}")
        for lane, counts in self.lane_counts().items():
            if counts["received"] != counts["promoted"] + counts["quarantined"] + counts["rejected"]:
                raise AssertionError(f"ingest counts do not add up in lane {lane}: {counts}")


def _is_hidden(relative: Path) -> bool:
    """True for dot files and anything inside a dot directory."""
    return any(part.startswith(".") for part in relative.parts)


def list_drop(source: str | os.PathLike[str]) -> list[InputFile]:
    """Lists every file below a drop directory (sorted; dot files and bulk bookkeeping skipped).

    Args:
        source: The drop directory.

    Returns:
        The input files.

    Raises:
        UserError: The directory is missing, not a directory, or holds no file.
    """
    root = Path(source)
    if not root.exists():
        raise UserError(f"{root}: source directory does not exist; pass --source DIR with the files to ingest")
    if not root.is_dir():
        raise UserError(f"{root}: source is not a directory; pass the directory that holds the files")
    label = f"drop:{root.name}"
    files = [
        InputFile(path, path.relative_to(root).as_posix(), label)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not _is_hidden(path.relative_to(root))
    ]
    if not files:
        raise UserError(f"{root}: source directory holds no files; nothing to ingest")
    return files


def _side_file_reason(name: str) -> str | None:
    """Why a bulk-export side file is recorded and skipped, or ``None`` for data files."""
    base = Path(name).name
    if base in SKIPPED_FILES:
        return SKIPPED_FILES[base]
    if base.lower().startswith("readme"):
        return "documentation, not data"
    if base in BULK_SIDE_NAMES or base.endswith(BULK_SIDE_SUFFIXES):
        return "bulk-export client bookkeeping, not data"
    return None


class Intake:
    """Runs files through staging, the lanes and the zones, recording each step."""

    def __init__(
        self,
        store: ZoneStore,
        state: IngestStateStore,
        output_dir: str | os.PathLike[str],
        limits: IngestLimits = DEFAULT_LIMITS,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self.output_dir = Path(output_dir)
        self.limits = limits
        self.progress = progress
        self.result = IntakeResult()
        self._seen: dict[str, FileOutcome] = {}
        self._output_names: set[str] = set()

    def take_all(self, files: Iterable[InputFile], every: int = 50) -> IntakeResult:
        """Takes every file in turn, reporting progress every ``every`` files."""
        for count, item in enumerate(files, 1):
            self.result.files.append(self.take(item))
            if self.progress is not None and count % every == 0:
                self.progress(f"{count:,} files taken ({self._summary()})")
        return self.result

    def _summary(self) -> str:
        totals = self.result.totals()
        return ", ".join(f"{totals[key]} {key}" for key in ("promoted", "quarantined", "rejected"))

    def take(self, item: InputFile) -> FileOutcome:
        """Takes one file to its terminal state (or records it as a duplicate or side file)."""
        sha256, size = hash_file(item.path)
        side_reason = _side_file_reason(item.name)
        if side_reason is not None:
            return FileOutcome(item.name, item.source, "-", "skipped", "side_file", side_reason, sha256, size)
        first = self._seen.get(sha256)
        if first is not None:
            own = route(item.path, self.limits)
            return FileOutcome(
                item.name,
                item.source,
                first.lane,
                "duplicate",
                "duplicate_content",
                f"{item.name}: the same bytes as {first.name}, which was {first.state} "
                f"({first.reason_code}); stored and judged once",
                sha256,
                size,
                content_type=first.content_type,
                upload_id=first.upload_id,
                object_name=first.object_name,
                zone=first.zone,
                details={
                    "duplicate_of": first.name,
                    "original_state": first.state,
                    "original_reason_code": first.reason_code,
                    "own_outcome": own.outcome,
                    "own_reason_code": own.reason_code,
                },
            )
        verdict = route(item.path, self.limits)
        record, resumed = self._advance(item, verdict, sha256, size)
        output = self._write_output(item, verdict, sha256) if record.state == states.PROMOTED else None
        outcome = FileOutcome(
            name=item.name,
            source=item.source,
            lane=verdict.lane,
            state=record.state,
            reason_code=record.reason_code or verdict.reason_code,
            reason=record.reason or verdict.reason,
            sha256=sha256,
            bytes=size,
            content_type=verdict.content_type,
            upload_id=record.id,
            object_name=record.object_name,
            zone=TERMINAL_ZONE.get(record.state),
            output=output,
            details=dict(verdict.details),
            resumed=resumed,
        )
        self._seen[sha256] = outcome
        return outcome

    def _metadata(self, item: InputFile, verdict: LaneVerdict, sha256: str) -> dict[str, str]:
        """The upload manifest entry carried as object metadata."""
        return {
            "original_name": item.name,
            "source": item.source,
            "lane": verdict.lane,
            "detected_content_type": verdict.content_type,
        }

    def _advance(self, item: InputFile, verdict: LaneVerdict, sha256: str, size: int) -> tuple[states.FileRecord, bool]:
        """Moves the file's record from wherever it is to its terminal state."""
        registration = self.state.register(
            f"sha256:{sha256}",
            original_name=item.name,
            source=item.source,
            lane=verdict.lane,
            actor=ACTOR,
            content_type=verdict.content_type,
            size=size,
            sha256=sha256,
            object_name=sha256,
        )
        record = registration.record
        resumed = not registration.created
        if record.state == states.RECEIVED:
            self.store.upload(
                "staging",
                sha256,
                item.path,
                idempotency_key=f"sha256:{sha256}",
                metadata=self._metadata(item, verdict, sha256),
                content_type=MEDIA_TYPES.get(verdict.lane, "application/octet-stream"),
                expected_sha256=sha256,
            )
            record = self.state.transition(record.id, states.UPLOADED, actor=ACTOR, object_name=sha256)
        if record.state == states.UPLOADED:
            details = {"lane": verdict.lane, "content_type": verdict.content_type, "outcome": verdict.outcome}
            record = self.state.transition(record.id, states.SCANNED, actor=ACTOR, details=details)
        if record.state == states.SCANNED:
            record = self._finish(record, verdict, sha256)
        return record, resumed

    def _finish(self, record: states.FileRecord, verdict: LaneVerdict, sha256: str) -> states.FileRecord:
        """Moves the staged object to its zone, then records the terminal transition."""
        target = OUTCOME_STATE[verdict.outcome]
        found = self.store.find(sha256)
        if found is not None and found.zone == "staging":
            if target == states.PROMOTED:
                self.store.promote(sha256)
            else:
                self.store.quarantine(sha256, verdict.reason_code, verdict.reason)
        if target == states.PROMOTED:
            return self.state.transition(record.id, target, actor=ACTOR, details={"reason_code": verdict.reason_code})
        return self.state.transition(
            record.id,
            target,
            actor=ACTOR,
            reason_code=verdict.reason_code,
            reason=verdict.reason,
            details=dict(verdict.details),
        )

    def _unique_output_name(self, name: str, sha256: str) -> str:
        """The output name for a FHIR file, made unique when two sources share a name."""
        base = Path(name).name
        if base in self._output_names:
            stem, _, suffix = base.partition(".")
            base = f"{stem}.{sha256[:12]}.{suffix}" if suffix else f"{stem}.{sha256[:12]}"
        self._output_names.add(base)
        return base

    def _write_output(self, item: InputFile, verdict: LaneVerdict, sha256: str) -> str:
        """Copies a promoted file into the output Dataset in the deidentify stage's layout."""
        if verdict.lane == FHIR_LANE:
            relative = self._unique_output_name(item.name, sha256)
        elif verdict.lane == "dicom":
            relative = f"dicom/{sha256}.dcm"
        elif verdict.lane == "device_logs":
            relative = f"device_logs/{self._unique_output_name(item.name, sha256)}"
        elif verdict.lane == pdf_lane.LANE:
            relative = f"documents/{sha256}.pdf"
            document = pdf_lane.document_json(item.path, verdict)
            _atomic_write(self.output_dir / f"documents/{sha256}.json", orjson.dumps(document))
        else:  # pragma: no cover - route() only promotes through a lane
            raise AssertionError(f"promoted file without a lane: {verdict.lane}")
        _atomic_copy(item.path, self.output_dir / relative)
        return relative


def _atomic_write(target: Path, data: bytes) -> None:
    """Writes ``data`` to ``target`` through a temporary name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def _atomic_copy(source: Path, target: Path) -> None:
    """Copies ``source`` to ``target`` through a temporary name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _bulk_label(result: Any) -> str:
    """``bulk:<kick-off request>`` without its query string."""
    return "bulk:" + str(result.request).split("?", 1)[0]


def bulk_inputs(result: Any) -> Iterator[InputFile]:
    """The files a bulk export downloaded, as intake inputs (verified and quarantined ones alike).

    Args:
        result: A ``components.ingest.bulk_client.BulkExportResult``.

    Yields:
        One input per output file with bytes on disk; the lanes judge each again.
    """
    root = Path(result.output_dir)
    for outcome in result.files:
        path = root / outcome.file
        if path.is_file():
            yield InputFile(path, Path(outcome.file).name, _bulk_label(result))


def bulk_missing_outcomes(result: Any) -> list[FileOutcome]:
    """Manifest entries for bulk files that never arrived (404, download failed): quarantined, no object."""
    root = Path(result.output_dir)
    return [
        FileOutcome(
            name=Path(outcome.file).name,
            source=_bulk_label(result),
            lane=FHIR_LANE,
            state=states.QUARANTINED,
            reason_code=outcome.reason_code or "download_failed",
            reason=outcome.reason or f"{outcome.file}: the server did not deliver the file; run ingest again",
            details={"type": outcome.type, "attempts": outcome.attempts},
        )
        for outcome in result.files
        if not (root / outcome.file).is_file()
    ]


def require_fhir(result: IntakeResult) -> None:
    """Fails the stage when no FHIR file was promoted (the pipeline has nothing to learn from).

    Raises:
        UserError: No promoted FHIR file; names how many were set aside and where to look.
    """
    fhir = result.lane_counts().get(FHIR_LANE, {"received": 0, "promoted": 0})
    if fhir["promoted"] == 0:
        set_aside = fhir["received"]
        set_aside_states = (states.QUARANTINED, states.REJECTED)
        first = next((o for o in result.files if o.lane == FHIR_LANE and o.state in set_aside_states), None)
        first = first or next((o for o in result.files if o.state in set_aside_states), None)
        hint = f"; first: {first.reason}" if first is not None else ""
        raise UserError(
            f"no FHIR NDJSON file was promoted ({set_aside} FHIR files set aside{hint}); "
            "see ingest_manifest.json for every file's reason"
        )
