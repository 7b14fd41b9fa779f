"""FHIR Bulk Data ``$export`` client (Bulk Data Access IG v2) with SMART Backend Services auth.

Public API for the ingest stage::

    config = BulkExportConfig(base_url="https://fhir.example/fhir", level="group", group_id="g1",
                              types=("Patient", "Observation"), client_id="my-client",
                              private_key_file="/secrets/key.pem", kid="key-1")
    result = run_export(config, output_dir, progress=print)

``run_export`` kicks off (or, after a crash, re-uses) the export job, polls its status honouring
``Retry-After`` and reporting ``X-Progress``, downloads every ``output``, ``error`` and ``deleted``
file with bounded parallelism, resumable transfers and bounded retries, verifies each file, deletes
the job and returns a ``BulkExportResult``. Server or data faults never raise: a file that cannot be
fetched or verified is listed as ``quarantined`` with a reason code. Configuration and protocol
errors (bad key, rejected assertion, failed job) raise ``UserError``.

Output directory layout: ``<Type>.<nnn>.ndjson`` (verified output files), ``errors/`` (the
server's OperationOutcome files), ``deleted/`` (deleted-resource Bundles), ``quarantine/`` (files
that failed verification), ``bulk_export_state.json`` (the job's persisted state) and transient
``*.part``/``*.part.json`` files while downloading.

Command line: ``python -m components.ingest.bulk_client --help``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from clinflow.errors import UserError, run_cli
from components.ingest.bulk_download import (
    FAILED,
    MISSING,
    QUARANTINE_DIR,
    Downloader,
    FileOutcome,
    FileTask,
)
from components.ingest.bulk_http import (
    BulkHttp,
    RetryPolicy,
    is_transient_outcome,
    json_object,
    outcome_summary,
    parse_retry_after,
    redact_url,
)
from components.ingest.bulk_state import STATE_FILE, ExportState
from components.ingest.ingest import hash_file
from components.ingest.smart_auth import DEFAULT_SCOPE, PrivateKeySource, SmartAuthSettings, TokenProvider

Progress = Callable[[str], None]
LEVELS = ("system", "group", "patient")
FHIR_JSON = "application/fhir+json"
# Outcomes worth another try on a re-run; other quarantined files are final.
RETRY_ON_RERUN = frozenset({MISSING, FAILED})


@dataclass(frozen=True)
class BulkExportConfig:
    """What to export from where, and how.

    Attributes:
        base_url: FHIR server base URL.
        level: ``system`` (``/$export``), ``group`` (``/Group/{id}/$export``) or ``patient`` (``/Patient/$export``).
        group_id: Group id (level ``group`` only).
        types: ``_type`` resource types; empty exports all.
        since: ``_since`` FHIR instant, or None.
        client_id: SMART backend client id; None talks to an open server without auth.
        private_key_file: File holding the client's private key PEM.
        private_key_env: Name of an environment variable holding the PEM (instead of the file).
        kid: Key id for the JWT header.
        alg: ``RS384`` or ``ES384``; None infers it from the key.
        token_url: Token endpoint; None discovers it from ``.well-known/smart-configuration``.
        scope: Requested scope.
        max_workers: Parallel downloads.
        retry: Retry/backoff settings for polls and downloads.
        poll_interval: Seconds between polls when the server sends no ``Retry-After``.
        poll_cap: Longest wait between polls, whatever ``Retry-After`` says.
        max_wait: Give up polling after this many seconds.
        delete_job: DELETE the job at its status URL when done.
    """

    base_url: str
    level: str = "system"
    group_id: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    client_id: str | None = None
    private_key_file: str | None = None
    private_key_env: str | None = None
    kid: str = "default"
    alg: str | None = None
    token_url: str | None = None
    scope: str = DEFAULT_SCOPE
    max_workers: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval: float = 2.0
    poll_cap: float = 60.0
    max_wait: float = 6 * 3600.0
    delete_job: bool = True

    def kickoff_url(self) -> str:
        """The kick-off URL with ``_type``/``_since``."""
        base = self.base_url.rstrip("/")
        path = {"system": "/$export", "patient": "/Patient/$export"}.get(self.level)
        if path is None:
            path = f"/Group/{urllib.parse.quote(str(self.group_id), safe='')}/$export"
        query: dict[str, str] = {}
        if self.types:
            query["_type"] = ",".join(self.types)
        if self.since:
            query["_since"] = self.since
        return base + path + ("?" + urllib.parse.urlencode(query, safe=",:") if query else "")

    def request_key(self) -> dict[str, Any]:
        """Identifies the export for the state file."""
        return {
            "base_url": self.base_url.rstrip("/"),
            "level": self.level,
            "group_id": self.group_id,
            "types": sorted(self.types),
            "since": self.since,
        }

    def validate(self) -> None:
        """Checks the settings.

        Raises:
            UserError: An inconsistent setting.
        """
        if self.level not in LEVELS:
            raise UserError(f"--level {self.level}: choose one of {', '.join(LEVELS)}")
        if (self.level == "group") != bool(self.group_id):
            raise UserError("--group-id: needed with --level group, and only then")
        if self.max_workers < 1 or self.retry.max_attempts < 1:
            raise UserError("--max-workers and --max-attempts must be at least 1")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {self.base_url}: expected an http(s) URL")

    def auth_settings(self) -> SmartAuthSettings | None:
        """The SMART settings, or None for an open server."""
        if self.client_id is None:
            return None
        key = PrivateKeySource(path=self.private_key_file, env_var=self.private_key_env)
        return SmartAuthSettings(self.client_id, key, self.kid, self.alg, self.token_url, self.scope)


@dataclass
class BulkExportResult:
    """The outcome of an export.

    Attributes:
        output_dir: Where the files are.
        status_url: The job's status URL (without query string).
        kickoff_time: When the job was kicked off (ISO 8601, UTC).
        transaction_time: The manifest's ``transactionTime``.
        request: The manifest's ``request``, without query secrets.
        files: Outcomes of the ``output`` files.
        errors: Outcomes of the ``error`` files (OperationOutcome NDJSON).
        deleted: Outcomes of the ``deleted`` files.
        job_deleted: Whether the server accepted the DELETE (None when not attempted).
        reused_job: Whether this run continued a job started by an earlier run.
    """

    output_dir: Path
    status_url: str
    kickoff_time: str
    transaction_time: str
    request: str
    files: list[FileOutcome] = field(default_factory=list)
    errors: list[FileOutcome] = field(default_factory=list)
    deleted: list[FileOutcome] = field(default_factory=list)
    job_deleted: bool | None = None
    reused_job: bool = False

    @property
    def downloaded(self) -> list[FileOutcome]:
        """Output files that were downloaded and verified."""
        return [f for f in self.files if f.state == "downloaded"]

    @property
    def quarantined(self) -> list[FileOutcome]:
        """Files (any kind) that were quarantined."""
        return [f for f in (*self.files, *self.errors, *self.deleted) if f.state == "quarantined"]

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {
            "output_dir": str(self.output_dir),
            "status_url": self.status_url,
            "kickoff_time": self.kickoff_time,
            "transaction_time": self.transaction_time,
            "request": self.request,
            "files": [f.to_dict() for f in self.files],
            "errors": [f.to_dict() for f in self.errors],
            "deleted": [f.to_dict() for f in self.deleted],
            "job_deleted": self.job_deleted,
            "reused_job": self.reused_job,
        }


# --------------------------------------------------------------------------- kick-off and polling


class _Session:
    """One run's collaborators."""

    def __init__(self, config: BulkExportConfig, http: BulkHttp, progress: Progress) -> None:
        self.config = config
        self.http = http
        self.progress = progress


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def kick_off(run: _Session) -> str:
    """Sends the kick-off request and returns the status URL.

    Raises:
        UserError: The server refused the export.
    """
    config = run.config
    url = config.kickoff_url()
    headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
    for attempt in range(1, config.retry.max_attempts + 1):
        response = _send(run, "GET", url, headers, "kick-off")
        if response.status_code == 202 and response.headers.get("Content-Location"):
            return str(response.headers["Content-Location"])
        if is_transient_outcome(response) and attempt < config.retry.max_attempts:
            time.sleep(_wait(config, response, attempt))
            continue
        raise UserError(
            f"{redact_url(url)}: export kick-off refused ({outcome_summary(response)}); check --level, --group-id, "
            "--type, --since and the client's access"
        )
    raise AssertionError("unreachable")


def _send(run: _Session, method: str, url: str, headers: dict[str, str], what: str) -> requests.Response:
    try:
        response = run.http.request(method, url, headers)
    except requests.RequestException as error:
        raise UserError(f"{redact_url(url)}: {what} failed ({type(error).__name__}); check --base-url") from error
    response.close()
    return response


def _wait(config: BulkExportConfig, response: requests.Response, attempt: int) -> float:
    return parse_retry_after(
        response.headers.get("Retry-After"), config.retry.backoff(attempt), config.retry.retry_after_cap
    )


def poll_status(run: _Session, status_url: str) -> dict[str, Any] | None:
    """Polls the job until its manifest is ready.

    Returns:
        The manifest, or None when the server no longer knows the job (404/410).

    Raises:
        UserError: The job failed, or polling ran past ``max_wait``.
    """
    config = run.config
    started = time.monotonic()
    failures = 0
    while True:
        try:
            response = run.http.request("GET", status_url, {"Accept": "application/json"})
            response.close()
        except requests.RequestException as error:
            failures += 1
            if failures >= config.retry.max_attempts:
                raise UserError(f"{redact_url(status_url)}: status polling failed ({type(error).__name__})") from error
            time.sleep(config.retry.backoff(failures))
            continue
        if response.status_code == 200:
            manifest = json_object(response)
            if manifest is None or not isinstance(manifest.get("output"), list):
                raise UserError(f"{redact_url(status_url)}: the completed job's manifest is not valid JSON")
            return manifest
        if response.status_code in (404, 410):
            return None
        if response.status_code == 202:
            failures = 0
            wait = min(
                parse_retry_after(response.headers.get("Retry-After"), config.poll_interval, config.poll_cap),
                config.poll_cap,
            )
            progress = response.headers.get("X-Progress", "in progress")
            run.progress(f"export in progress: {progress} (next poll in {wait:g}s)")
        elif is_transient_outcome(response) and failures + 1 < config.retry.max_attempts:
            failures += 1
            wait = _wait(config, response, failures)
            run.progress(f"status poll answered {outcome_summary(response)}; retrying in {wait:.1f}s")
        else:
            raise UserError(
                f"{redact_url(status_url)}: the export job failed ({outcome_summary(response)}); "
                "see the server's OperationOutcome, fix the request and run again with a new output directory"
            )
        if time.monotonic() - started + wait > config.max_wait:
            raise UserError(f"{redact_url(status_url)}: export not ready after {config.max_wait:g}s; run again later")
        time.sleep(wait)


def obtain_manifest(run: _Session, state: ExportState) -> bool:
    """Makes sure the state holds a manifest, re-using a saved job when there is one.

    Returns:
        Whether a job from an earlier run was re-used.
    """
    reused = False
    if state.get("manifest") is not None:
        run.progress(f"re-using export job {redact_url(state.get('status_url'))} (manifest already received)")
        return True
    status_url = state.get("status_url")
    if status_url:
        run.progress(f"re-using export job {redact_url(status_url)} from an earlier run")
        manifest = poll_status(run, status_url)
        if manifest is not None:
            _store_manifest(state, manifest)
            return True
        run.progress("the server no longer knows that job; starting a new export")
        state.forget_job()
    status_url = kick_off(run)
    state.update(status_url=status_url, kickoff_time=_now_iso())
    run.progress(f"kicked off {run.config.level}-level export (status {redact_url(status_url)})")
    manifest = poll_status(run, status_url)
    if manifest is None:
        raise UserError(f"{redact_url(status_url)}: the new export job vanished while polling; run again")
    _store_manifest(state, manifest)
    return reused


def _store_manifest(state: ExportState, manifest: dict[str, Any]) -> None:
    state.update(manifest=manifest, transaction_time=str(manifest.get("transactionTime", "")))


# --------------------------------------------------------------------------- downloads


def plan_tasks(manifest: dict[str, Any], authenticated: bool) -> list[FileTask]:
    """Turns manifest entries into download tasks with stable local names.

    Output files are ``<Type>.<nnn>.ndjson`` (numbered per type in manifest order); error and
    deleted files go under ``errors/`` and ``deleted/``.

    Raises:
        UserError: The manifest requires a token but no client is configured, or an entry is malformed.
    """
    needs_token = bool(manifest.get("requiresAccessToken"))
    if needs_token and not authenticated:
        raise UserError("the export manifest requires an access token; pass --client-id and a private key")
    tasks: list[FileTask] = []
    for kind, folder in (("output", ""), ("error", "errors/"), ("deleted", "deleted/")):
        per_type: dict[str, int] = {}
        for entry in manifest.get(kind) or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                raise UserError(f"export manifest: a {kind} entry has no url; the server's manifest is malformed")
            resource_type = str(entry.get("type") or ("OperationOutcome" if kind == "error" else "Bundle"))
            if not resource_type.isalnum():
                raise UserError(f"export manifest: {kind} entry type {resource_type!r} is not a FHIR resource type")
            index = per_type.get(resource_type, 0)
            per_type[resource_type] = index + 1
            relative = f"{folder}{resource_type}.{index:03d}.ndjson"
            tasks.append(FileTask(kind, resource_type, entry["url"], relative, needs_token))
    return tasks


def _reusable(state: ExportState, task: FileTask, output_dir: Path) -> FileOutcome | None:
    """A file finished by an earlier run whose bytes on disk still match, or None."""
    record = state.file_record(task.relative)
    if record is None:
        return None
    outcome = FileOutcome(**record)
    if outcome.state == "quarantined" and outcome.reason_code in RETRY_ON_RERUN:
        return None
    path = output_dir / outcome.file
    if not path.is_file():
        return None
    sha256, size = hash_file(path)
    return outcome if (sha256, size) == (outcome.sha256, outcome.bytes) else None


def download_all(run: _Session, state: ExportState, tasks: list[FileTask], output_dir: Path) -> dict[str, FileOutcome]:
    """Downloads the tasks in parallel (``max_workers``), skipping files an earlier run finished.

    Returns:
        Outcome per task's relative path.
    """
    downloader = Downloader(run.http, output_dir, run.config.retry)
    outcomes: dict[str, FileOutcome] = {}
    lock = threading.Lock()
    done = [0]

    def one(task: FileTask) -> None:
        outcome = _reusable(state, task, output_dir)
        note = "already complete, skipped"
        if outcome is None:
            previous = state.file_record(task.relative)
            outcome = downloader.fetch(task, previous_attempts=int(previous["attempts"]) if previous else 0)
            state.set_file_record(task.relative, outcome.to_dict())
            if outcome.reason_code != FAILED:
                downloader.forget(task)
            note = f"attempts {outcome.attempts}, resumed {outcome.resumed_bytes:,} bytes"
        with lock:
            outcomes[task.relative] = outcome
            done[0] += 1
            count = done[0]
        if outcome.state == "downloaded":
            message = f"{outcome.resources:,} {outcome.type} resources, {outcome.bytes:,} bytes ({note})"
        else:
            message = f"QUARANTINED {outcome.reason_code}: {outcome.reason}"
        run.progress(f"[{count}/{len(tasks)}] {outcome.file}: {message}")

    with ThreadPoolExecutor(max_workers=run.config.max_workers, thread_name_prefix="bulk-download") as pool:
        for future in [pool.submit(one, task) for task in tasks]:
            future.result()
    return outcomes


def delete_job(run: _Session, state: ExportState) -> bool | None:
    """DELETEs the job at its status URL once (recorded in the state); returns whether the server accepted it."""
    previous = state.get("job_deleted")
    if previous is not None or not run.config.delete_job:
        return previous if isinstance(previous, bool) else None
    status_url = state.get("status_url")
    try:
        response = run.http.request("DELETE", status_url, {"Accept": FHIR_JSON})
        response.close()
        accepted = response.status_code in (200, 202, 204)
        detail = outcome_summary(response)
    except requests.RequestException as error:
        accepted, detail = False, type(error).__name__
    state.update(job_deleted=accepted, job_delete_answer=detail)
    run.progress(f"DELETE export job: {'accepted' if accepted else 'not accepted'} ({detail})")
    return accepted


def run_export(config: BulkExportConfig, output_dir: str | Path, progress: Progress | None = None) -> BulkExportResult:
    """Runs (or resumes) a Bulk Data export into ``output_dir``.

    Args:
        config: What to export and how.
        output_dir: Directory for files and ``bulk_export_state.json`` (created if missing); running
            again with the same directory resumes the same job.
        progress: Receives one line per event (kick-off, progress, each file); silent when None.

    Returns:
        The per-file outcomes, error/deleted outputs, transaction time and whether the job was deleted.

    Raises:
        UserError: Bad configuration or key, a rejected JWT assertion, a refused kick-off or a failed job.
    """
    config.validate()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = ExportState.open(out, config.request_key())
    settings = config.auth_settings()
    tokens = TokenProvider(settings, config.base_url) if settings is not None else None
    http = BulkHttp(tokens)
    run = _Session(config, http, progress or (lambda _line: None))
    try:
        reused = obtain_manifest(run, state)
        manifest = state.get("manifest")
        tasks = plan_tasks(manifest, tokens is not None)
        run.progress(
            f"manifest: {sum(t.kind == 'output' for t in tasks)} output, {sum(t.kind == 'error' for t in tasks)} "
            f"error, {sum(t.kind == 'deleted' for t in tasks)} deleted files; transactionTime "
            f"{manifest.get('transactionTime')}"
        )
        outcomes = download_all(run, state, tasks, out)
        unfinished = [o.file for o in outcomes.values() if o.reason_code == FAILED]
        if unfinished:
            run.progress(f"keeping the export job: {len(unfinished)} file(s) not complete; run again to resume")
            job_deleted = None
        else:
            job_deleted = delete_job(run, state)
    finally:
        http.close()
    by_kind: dict[str, list[FileOutcome]] = {"output": [], "error": [], "deleted": []}
    for task in tasks:
        by_kind[task.kind].append(outcomes[task.relative])
    return BulkExportResult(
        output_dir=out,
        status_url=redact_url(state.get("status_url")),
        kickoff_time=str(state.get("kickoff_time") or ""),
        transaction_time=str(state.get("transaction_time") or ""),
        request=redact_url(str(manifest.get("request", ""))),
        files=by_kind["output"],
        errors=by_kind["error"],
        deleted=by_kind["deleted"],
        job_deleted=job_deleted,
        reused_job=reused,
    )


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m components.ingest.bulk_client",
        description=(
            "Download a FHIR Bulk Data $export into a directory (resumable: run again with the same "
            f"--output-dir to continue; the job is kept in {STATE_FILE})."
        ),
    )
    parser.add_argument("--base-url", required=True, help="FHIR server base URL, e.g. https://fhir.example/fhir")
    parser.add_argument("--output-dir", required=True, type=Path, help="directory for the downloaded files")
    parser.add_argument("--level", choices=LEVELS, default="system", help="export level (default: system)")
    parser.add_argument("--group-id", help="Group id for --level group")
    parser.add_argument("--type", dest="types", default="", help="comma-separated _type list (default: all)")
    parser.add_argument("--since", help="_since FHIR instant, e.g. 2024-01-01T00:00:00Z")
    parser.add_argument("--client-id", help="SMART backend client id (omit for an open server)")
    parser.add_argument("--private-key-file", help="file holding the client's private key PEM")
    parser.add_argument("--private-key-env", help="environment variable holding the client's private key PEM")
    parser.add_argument("--kid", default="default", help="key id sent in the JWT header (default: default)")
    parser.add_argument("--alg", choices=("RS384", "ES384"), help="JWT algorithm (default: from the key type)")
    parser.add_argument("--token-url", help="token endpoint (default: from .well-known/smart-configuration)")
    parser.add_argument("--scope", default=DEFAULT_SCOPE, help=f"requested scope (default: {DEFAULT_SCOPE})")
    parser.add_argument("--max-workers", type=int, default=4, help="parallel downloads (default: 4)")
    parser.add_argument("--max-attempts", type=int, default=6, help="attempts per file and request (default: 6)")
    parser.add_argument("--backoff-base", type=float, default=0.5, help="first retry backoff, seconds (default: 0.5)")
    parser.add_argument("--backoff-cap", type=float, default=30.0, help="longest retry backoff, seconds (default: 30)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="poll wait without Retry-After (default: 2)")
    parser.add_argument("--poll-cap", type=float, default=60.0, help="longest wait between polls (default: 60)")
    parser.add_argument("--max-wait", type=float, default=6 * 3600.0, help="give up polling after seconds")
    parser.add_argument("--keep-job", action="store_true", help="do not DELETE the export job when done")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BulkExportConfig:
    """Builds the config from parsed flags."""
    return BulkExportConfig(
        base_url=args.base_url,
        level=args.level,
        group_id=args.group_id,
        types=tuple(t.strip() for t in args.types.split(",") if t.strip()),
        since=args.since,
        client_id=args.client_id,
        private_key_file=args.private_key_file,
        private_key_env=args.private_key_env,
        kid=args.kid,
        alg=args.alg,
        token_url=args.token_url,
        scope=args.scope,
        max_workers=args.max_workers,
        retry=RetryPolicy(args.max_attempts, args.backoff_base, args.backoff_cap),
        poll_interval=args.poll_interval,
        poll_cap=args.poll_cap,
        max_wait=args.max_wait,
        delete_job=not args.keep_job,
    )


def summary_lines(result: BulkExportResult) -> list[str]:
    """A readable summary of a result."""
    downloaded = result.downloaded
    lines = [
        f"export {'continued' if result.reused_job else 'run'}: transactionTime {result.transaction_time}",
        f"downloaded {len(downloaded)}/{len(result.files)} output files, "
        f"{sum(f.resources for f in downloaded):,} resources, {sum(f.bytes for f in downloaded):,} bytes, "
        f"{sum(f.resumed_bytes for f in result.files):,} bytes resumed",
        f"error files: {len(result.errors)}, deleted files: {len(result.deleted)}",
        f"job deleted: {result.job_deleted}",
    ]
    for outcome in result.quarantined:
        lines.append(f"quarantined {outcome.file}: {outcome.reason_code} ({outcome.reason})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Runs an export from the command line; exit 0 when every output file downloaded, 1 otherwise."""
    args = parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_export(config_from_args(args), args.output_dir, progress)
    for line in summary_lines(result):
        print(line, flush=True)
    return 0 if not result.quarantined else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))


__all__ = ["QUARANTINE_DIR", "BulkExportConfig", "BulkExportResult", "FileOutcome", "RetryPolicy", "run_export"]
