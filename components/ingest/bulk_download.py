"""Resumable download and verification of one Bulk Data output file.

A file streams into ``<name>.part`` beside a sidecar ``<name>.part.json`` (URL hash and redacted URL,
attempts, ETag/Last-Modified); the sidecar stays until the caller saved the file's outcome.
A retry, or a re-run after the process died, asks for the rest with ``Range: bytes=<have>-`` (plus
``If-Range`` when the server gave an ETag or Last-Modified): 206 appends, 200 restarts from zero.
Once complete the bytes are verified (every line a JSON object of the entry's ``type``) and the file
is renamed into place, or moved to ``quarantine/`` with a machine-readable reason code.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import requests
import urllib3

from components.ingest.bulk_http import BulkHttp, RetryPolicy, outcome_summary, parse_retry_after, redact_url

READ_CHUNK = 64 * 1024
QUARANTINE_DIR = "quarantine"
PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Reason codes of a quarantined file.
TRUNCATED = "truncated_ndjson"
INVALID_JSON = "invalid_json"
NOT_A_RESOURCE = "not_a_resource"
TYPE_MISMATCH = "resource_type_mismatch"
MISSING = "missing_file"
FAILED = "download_failed"


@dataclass(frozen=True)
class FileTask:
    """One manifest entry to fetch.

    Attributes:
        kind: ``output``, ``error`` or ``deleted``.
        type: The entry's resource type.
        url: The entry's URL (may carry query secrets; never logged).
        relative: Local path under the output directory, e.g. ``Patient.000.ndjson``.
        needs_token: Send the bearer token (the manifest's ``requiresAccessToken``).
    """

    kind: str
    type: str
    url: str
    relative: str
    needs_token: bool


@dataclass
class FileOutcome:
    """What happened to one file (``state`` is ``downloaded`` or ``quarantined``).

    Attributes:
        file: Local path relative to the output directory (the quarantine path when quarantined).
        kind: ``output``, ``error`` or ``deleted``.
        type: Resource type from the manifest.
        url: The URL without query string.
        resources: Resources (non-blank lines) verified.
        bytes: Bytes on disk.
        sha256: Hex SHA-256 of the bytes on disk.
        state: ``downloaded`` or ``quarantined``.
        reason_code: Machine-readable reason when quarantined.
        reason: Human sentence when quarantined.
        attempts: HTTP attempts over all runs.
        resumed_bytes: Bytes of the final file kept from earlier attempts or runs (start of the last 206).
        restarts: Times the server answered a range request with the whole file.
    """

    file: str
    kind: str
    type: str
    url: str
    resources: int = 0
    bytes: int = 0
    sha256: str = ""
    state: str = "downloaded"
    reason_code: str = ""
    reason: str = ""
    attempts: int = 0
    resumed_bytes: int = 0
    restarts: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict."""
        return asdict(self)


class VerificationError(Exception):
    """A downloaded file failed verification."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Verified:
    resources: int
    bytes: int
    sha256: str


def _check_line(line: bytes, number: int, declared: str, last: bool) -> bool:
    """Checks one line; returns False for a blank line. Raises VerificationError."""
    if not line.strip():
        return False
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        if last:
            raise VerificationError(TRUNCATED, f"line {number} is cut off (the file ends mid-line)") from error
        raise VerificationError(INVALID_JSON, f"line {number} is not valid JSON") from error
    if not isinstance(value, dict):
        raise VerificationError(NOT_A_RESOURCE, f"line {number} is not a JSON object")
    if value.get("resourceType") != declared:
        raise VerificationError(
            TYPE_MISMATCH,
            f"line {number} has resourceType {str(value.get('resourceType'))[:64]!r}, manifest says {declared!r}",
        )
    return True


def verify_ndjson(path: Path, declared: str) -> _Verified:
    """Verifies an NDJSON file against its manifest type while hashing it.

    Args:
        path: The file.
        declared: The manifest entry's ``type``.

    Returns:
        Resources, bytes and SHA-256.

    Raises:
        VerificationError: With a reason code (``truncated_ndjson``, ``invalid_json``, ``not_a_resource``,
            ``resource_type_mismatch``).
    """
    digest = hashlib.sha256()
    size = resources = lines = 0
    carry = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            for line in parts:
                lines += 1
                resources += _check_line(line, lines, declared, last=False)
    if carry:
        resources += _check_line(carry, lines + 1, declared, last=True)
    return _Verified(resources, size, digest.hexdigest())


class _IncompleteBodyError(Exception):
    """The body ended before the announced length."""


@dataclass
class _Sidecar:
    """What ``<name>.part.json`` records: the URL (hash, and redacted for people), attempts, validator."""

    url_sha256: str
    url: str
    attempts: int = 0
    validator: str | None = None
    restarts: int = 0


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def _load_sidecar(path: Path, url: str) -> _Sidecar | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        sidecar = _Sidecar(**document)
    except (OSError, ValueError, TypeError):
        return None
    return sidecar if sidecar.url_sha256 == _url_key(url) else None


def _save_sidecar(path: Path, sidecar: _Sidecar) -> None:
    path.write_text(json.dumps(asdict(sidecar)), encoding="utf-8")


class Downloader:
    """Downloads files with bounded retries, resume and verification."""

    def __init__(
        self,
        http: BulkHttp,
        output_dir: Path,
        policy: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """Creates a downloader writing under ``output_dir``."""
        self.http = http
        self.output_dir = output_dir
        self.policy = policy
        self.sleep = sleep
        self.rng = rng or random.Random()

    def fetch(self, task: FileTask, previous_attempts: int = 0) -> FileOutcome:
        """Downloads (or resumes) and verifies one file; never raises for server or data faults.

        Args:
            task: The manifest entry.
            previous_attempts: Attempts recorded by earlier runs (when no sidecar survives).

        Returns:
            The file's outcome.
        """
        dest = self.output_dir / task.relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + PART_SUFFIX)
        sidecar_path = dest.with_name(dest.name + SIDECAR_SUFFIX)
        sidecar = _load_sidecar(sidecar_path, task.url)
        if sidecar is None:
            part.unlink(missing_ok=True)
            sidecar = _Sidecar(_url_key(task.url), redact_url(task.url), attempts=previous_attempts)
        elif dest.exists() and not part.exists():
            # Killed after the rename but before the outcome was saved: re-check those bytes, do not refetch.
            dest.replace(part)
        outcome = FileOutcome(task.relative, task.kind, task.type, redact_url(task.url))
        status = self._transfer(task, part, sidecar_path, sidecar, outcome)
        outcome.attempts = sidecar.attempts
        outcome.restarts = sidecar.restarts
        if status is not None:
            outcome.state, (outcome.reason_code, outcome.reason) = "quarantined", status
            if status[0] == MISSING:
                part.unlink(missing_ok=True)
                sidecar_path.unlink(missing_ok=True)
            return outcome
        return self._finish(task, part, dest, outcome)

    def forget(self, task: FileTask) -> None:
        """Removes a finished file's sidecar (call once its outcome is saved)."""
        dest = self.output_dir / task.relative
        dest.with_name(dest.name + SIDECAR_SUFFIX).unlink(missing_ok=True)

    def _finish(self, task: FileTask, part: Path, dest: Path, outcome: FileOutcome) -> FileOutcome:
        """Verifies a complete ``.part`` and renames it into place or into quarantine."""
        try:
            verified = verify_ndjson(part, task.type)
        except VerificationError as error:
            quarantined = self.output_dir / QUARANTINE_DIR / task.relative
            quarantined.parent.mkdir(parents=True, exist_ok=True)
            part.replace(quarantined)
            digest = hashlib.sha256(quarantined.read_bytes()).hexdigest()
            outcome.file = quarantined.relative_to(self.output_dir).as_posix()
            outcome.bytes, outcome.sha256 = quarantined.stat().st_size, digest
            outcome.state, outcome.reason_code = "quarantined", error.code
            outcome.reason = f"{task.relative}: {error.reason}; ask the server to re-export it"
            return outcome
        part.replace(dest)
        outcome.resources, outcome.bytes, outcome.sha256 = verified.resources, verified.bytes, verified.sha256
        return outcome

    def _transfer(
        self, task: FileTask, part: Path, sidecar_path: Path, sidecar: _Sidecar, outcome: FileOutcome
    ) -> tuple[str, str] | None:
        """Fetches the bytes into ``part``; returns None when complete or ``(code, reason)`` when not."""
        last_error = "no attempt made"
        for attempt in range(1, self.policy.max_attempts + 1):
            sidecar.attempts += 1
            _save_sidecar(sidecar_path, sidecar)
            have = part.stat().st_size if part.exists() else 0
            headers = {"Accept": "application/fhir+ndjson", "Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
                if sidecar.validator:
                    headers["If-Range"] = sidecar.validator
            wait: float | None = None
            try:
                with self.http.request("GET", task.url, headers, auth=task.needs_token, stream=True) as response:
                    verdict = self._handle(response, part, have, sidecar, sidecar_path, outcome)
                if verdict == "done":
                    return None
                if isinstance(verdict, tuple):
                    return verdict
                last_error, wait = verdict, self._retry_wait(response, attempt)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout) as error:
                last_error = f"connection failed ({type(error).__name__})"
            except _IncompleteBodyError as error:
                last_error = str(error)
            if attempt < self.policy.max_attempts:
                self.sleep(wait if wait is not None else self.policy.backoff(attempt, self.rng))
        kept = part.stat().st_size if part.exists() else 0
        return FAILED, (
            f"{task.relative}: gave up after {self.policy.max_attempts} attempts in this run ({last_error}); "
            f"{kept} bytes kept in {part.name}, run again to resume"
        )

    def _retry_wait(self, response: requests.Response, attempt: int) -> float:
        default = self.policy.backoff(attempt, self.rng)
        return parse_retry_after(response.headers.get("Retry-After"), default, self.policy.retry_after_cap)

    def _handle(
        self,
        response: requests.Response,
        part: Path,
        have: int,
        sidecar: _Sidecar,
        sidecar_path: Path,
        outcome: FileOutcome,
    ) -> str | tuple[str, str]:
        """Acts on one response: ``"done"``, a retryable error text, or a final ``(code, reason)``."""
        code = response.status_code
        name = outcome.file
        if code in (404, 410):
            return MISSING, f"{name}: the server has no such file ({outcome_summary(response)}); re-export it"
        if code == 429 or code >= 500:
            return f"server answered {outcome_summary(response)}"
        if code == 416:
            total = _total_from_content_range(response.headers.get("Content-Range"))
            if total is not None and total == have:
                return "done"
            part.unlink(missing_ok=True)
            return "range not satisfiable; restarting from zero"
        if code not in (200, 206):
            return FAILED, f"{name}: unexpected {outcome_summary(response)}; check access to the export"
        start = 0
        if code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                return "206 with an unexpected Content-Range; restarting from zero"
            start = have
            outcome.resumed_bytes = have
        elif have:
            sidecar.restarts += 1
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if validator != sidecar.validator:
            sidecar.validator = validator
            _save_sidecar(sidecar_path, sidecar)
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length and length.isdigit() else None
        written = start
        with open(part, "ab" if start else "wb", buffering=0) as handle:
            for chunk in _body_chunks(response):
                handle.write(chunk)
                written += len(chunk)
        if expected is not None and written < expected:
            raise _IncompleteBodyError(f"body ended at byte {written} of {expected}")
        return "done"


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """Yields the body as it arrives (``read1``), so bytes received before a dropped connection are kept.

    ``iter_content`` fills whole chunks and loses a partial chunk when the connection drops; reading
    with ``read1`` hands over every byte that arrived before the failure.

    Raises:
        requests.exceptions.ChunkedEncodingError: The connection dropped mid-body.
    """
    raw = response.raw
    while True:
        try:
            chunk = raw.read1(READ_CHUNK)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise requests.exceptions.ChunkedEncodingError(type(error).__name__) from error
        if not chunk:
            return
        yield chunk


def _total_from_content_range(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None
