"""The verdict every ingest lane returns for one file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["promote", "quarantine", "reject"]
OUTCOMES: tuple[Outcome, ...] = ("promote", "quarantine", "reject")


@dataclass(frozen=True)
class LaneVerdict:
    """What happened to one input file.

    Attributes:
        lane: The lane that judged the file (``fhir``, ``dicom``, ``device_logs``, ``pdf``) or
            ``unrouted`` when no lane could take it.
        content_type: The sniffed content type (see ``components.ingest.sniff``).
        outcome: ``promote`` (clean), ``quarantine`` (kept for a person to fix) or ``reject``
            (refused by security policy).
        reason_code: Stable snake_case machine code (``ok`` when promoted without remarks).
        reason: One sentence a person can act on; names the file and position, never a PHI value.
        details: Structured facts safe to report (counts, UIDs, flagged row numbers); no PHI values.
        extracted: Lane output that may hold PHI (PDF text, MRNs, DICOM PatientID); never log it.
        file: The input file name.
    """

    lane: str
    content_type: str
    outcome: Outcome
    reason_code: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)
    extracted: Mapping[str, Any] | None = None
    file: str = ""

    @property
    def promoted(self) -> bool:
        """True when the file goes to the clean zone."""
        return self.outcome == "promote"

    def report_entry(self) -> dict[str, Any]:
        """A JSON-ready record of the verdict without ``extracted`` (safe for reports and logs)."""
        return {
            "file": self.file,
            "lane": self.lane,
            "content_type": self.content_type,
            "outcome": self.outcome,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "details": dict(self.details),
        }


def promote(
    file: str,
    lane: str,
    content_type: str,
    reason: str,
    details: Mapping[str, Any] | None = None,
    extracted: Mapping[str, Any] | None = None,
    reason_code: str = "ok",
) -> LaneVerdict:
    """Builds a ``promote`` verdict."""
    return LaneVerdict(lane, content_type, "promote", reason_code, reason, dict(details or {}), extracted, file)


def quarantine(
    file: str, lane: str, content_type: str, reason_code: str, reason: str, details: Mapping[str, Any] | None = None
) -> LaneVerdict:
    """Builds a ``quarantine`` verdict (kept for a person to fix)."""
    return LaneVerdict(lane, content_type, "quarantine", reason_code, reason, dict(details or {}), None, file)


def reject(
    file: str, lane: str, content_type: str, reason_code: str, reason: str, details: Mapping[str, Any] | None = None
) -> LaneVerdict:
    """Builds a ``reject`` verdict (refused by security policy)."""
    return LaneVerdict(lane, content_type, "reject", reason_code, reason, dict(details or {}), None, file)
