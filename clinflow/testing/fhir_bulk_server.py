"""A real FHIR Bulk Data ``$export`` server on 127.0.0.1 with SMART Backend Services auth and fault injection.

It serves a directory of ``<Type>*.ndjson[.gz]`` files (gzip is served decompressed) through the
Bulk Data Access IG flow: kick-off at system, group and patient level (``_type`` filters the files,
``_since`` is validated and recorded), status polling with ``X-Progress`` and ``Retry-After``, a
manifest with ``output``, ``error`` and optionally ``deleted`` entries, file downloads with
``Range``/206 and ``ETag``/``If-Range``, and ``DELETE`` of a job. When clients are registered, every
data endpoint needs a bearer token from the token endpoint, which verifies the client's signed JWT
assertion (signature against the registered JWKS, ``aud``, ``exp`` at most five minutes ahead,
``iss == sub``, ``jti`` never reused).

Faults are set per instance in a ``FaultPlan`` (seeded, bounded): slow jobs, random 429/500,
connections cut at given byte offsets, a truncated file, a manifest entry whose file is missing,
a revoked first token, and throttled transfers. ``ServerStats`` counts requests and bytes served
per file so tests can prove nothing was downloaded twice in full.

Use it as a context manager (``with FhirBulkServer.from_directory(path) as server: server.base_url``)
or run ``python -m clinflow.testing.fhir_bulk_server --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import random
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SUPPORTED_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300
CLOCK_LEEWAY = 5
SEND_CHUNK = 16 * 1024
# Types outside the patient compartment: left out of patient- and group-level exports.
NON_PATIENT_TYPES = frozenset({"Organization", "Practitioner", "Location", "PractitionerRole"})
LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)
_SINCE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$")


@dataclass
class FaultPlan:
    """Faults one server instance injects (all off by default; random ones seeded and bounded).

    Attributes:
        seed: Seed of the RNG that decides random 429/500 responses.
        polls_before_complete: Status polls answered 202 (in progress) before the manifest.
        retry_after_seconds: ``Retry-After`` sent with each 202 status answer.
        rate_429: Probability that a status poll or file GET is answered 429.
        rate_500: Probability that a status poll or file GET is answered 500.
        max_random_faults: Upper bound on 429+500 answers over the server's life.
        retry_after_429: ``Retry-After`` seconds sent with a 429.
        cut_after: File name to absolute byte offsets; the n-th GET of the file is cut after the
            n-th offset (headers announce the full length, then the connection is closed).
        truncate: File names served cut in the middle of their last line.
        missing_types: Resource types given an extra manifest entry whose URL answers 404.
        revoke_first_token: The first access token issued is rejected (401) on its first use.
        error_file: Put an ``OperationOutcome`` NDJSON file in the manifest's ``error`` list.
        deleted_file: Put a ``Bundle`` of deletions in the ``deleted`` list (only with ``_since``).
        throttle_bytes_per_second: Per-connection transfer rate of file bodies (None: unthrottled).
        token_lifetime_seconds: ``expires_in`` of issued access tokens.
        random_fault_routes: Where random 429/500 answers go: ``status`` polls and/or ``file`` GETs.
        fail_job: Every job fails: status polls answer 500 with a non-transient OperationOutcome.
    """

    seed: int = 0
    polls_before_complete: int = 0
    retry_after_seconds: int = 1
    rate_429: float = 0.0
    rate_500: float = 0.0
    max_random_faults: int = 8
    retry_after_429: int = 1
    cut_after: dict[str, list[int]] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    missing_types: tuple[str, ...] = ()
    revoke_first_token: bool = False
    error_file: bool = True
    deleted_file: bool = False
    throttle_bytes_per_second: float | None = None
    token_lifetime_seconds: int = 300
    fail_job: bool = False
    random_fault_routes: tuple[str, ...] = ("status", "file")


@dataclass
class ServerStats:
    """What the server saw (read it after the client finished).

    Attributes:
        requests: Requests per route (``kickoff``, ``status``, ``delete``, ``token``, ``file:<name>``...).
        bytes_served: File-body bytes written to sockets, per file name.
        full_responses: 200 (whole-file) responses per file name.
        partial_responses: 206 responses per file name.
        ranges: ``(file name, first byte)`` of every 206 response.
        poll_times: Monotonic times of status polls.
        kickoffs: ``(level, query)`` of each accepted kick-off.
        deleted_jobs: Job ids deleted by clients.
        rejected_assertions: Reasons for each rejected JWT assertion.
        unauthorized: Requests refused with 401.
        injected: Random and planned faults injected, by kind.
    """

    requests: Counter[str] = field(default_factory=Counter)
    bytes_served: Counter[str] = field(default_factory=Counter)
    full_responses: Counter[str] = field(default_factory=Counter)
    partial_responses: Counter[str] = field(default_factory=Counter)
    ranges: list[tuple[str, int]] = field(default_factory=list)
    poll_times: list[float] = field(default_factory=list)
    kickoffs: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    deleted_jobs: list[str] = field(default_factory=list)
    rejected_assertions: list[str] = field(default_factory=list)
    unauthorized: int = 0
    injected: Counter[str] = field(default_factory=Counter)


@dataclass
class _Job:
    """One export job."""

    job_id: str
    level: str
    request_url: str
    types: list[str]
    since: str | None
    transaction_time: str
    polls: int = 0
    deleted: bool = False


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """Returns a one-issue OperationOutcome resource."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def make_key_pair(alg: str = "RS384", kid: str = "test-key-1") -> tuple[bytes, dict[str, Any]]:
    """Generates a signing key for a SMART backend client.

    Args:
        alg: ``RS384`` or ``ES384``.
        kid: Key id put into the JWK (the client sends it as the JWT ``kid`` header).

    Returns:
        ``(private key PEM, JWKS holding the public key)``.
    """
    if alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"alg must be one of {SUPPORTED_ALGORITHMS}")
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg == "RS384":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    else:
        private = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig", "key_ops": ["verify"]})
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, {"keys": [jwk]}


def load_bulk_files(directory: str | Path) -> dict[str, bytes]:
    """Reads ``<Type>*.ndjson[.gz]`` files of a directory; gzip files are decompressed, names lose ``.gz``."""
    files: dict[str, bytes] = {}
    for path in sorted(Path(directory).iterdir()):
        name = path.name
        if name.endswith(".ndjson.gz"):
            files[name[:-3]] = gzip.decompress(path.read_bytes())
        elif name.endswith(".ndjson") and name != "log.ndjson":
            files[name] = path.read_bytes()
    if not files:
        raise ValueError(f"{directory}: no <Type>*.ndjson[.gz] files to serve")
    return files


def _truncated(content: bytes) -> bytes:
    """Cuts content in the middle of its last non-empty line."""
    body = content.rstrip(b"\n")
    start = body.rfind(b"\n") + 1
    return body[: start + max(1, (len(body) - start) // 2)]


def _etag(content: bytes) -> str:
    return '"' + hashlib.sha256(content).hexdigest()[:20] + '"'


class FhirBulkServer:
    """A threaded FHIR Bulk Data server; start with ``with`` or ``start()``/``stop()``."""

    def __init__(
        self,
        files: dict[str, bytes],
        clients: dict[str, dict[str, Any]] | None = None,
        faults: FaultPlan | None = None,
        groups: Sequence[str] = ("all",),
        scope: str = "system/*.read",
    ) -> None:
        """Creates a server (not yet listening).

        Args:
            files: File name (``Patient.000.ndjson``) to content.
            clients: client_id to JWKS dict; when empty or None the server is open (no auth).
            faults: The fault plan (defaults to none).
            groups: Group ids accepted at group level (others get 404).
            scope: Scope granted in tokens.
        """
        self.files = dict(files)
        self.clients = dict(clients or {})
        self.faults = faults or FaultPlan()
        self.groups = set(groups)
        self.scope = scope
        self.stats = ServerStats()
        self.lock = threading.Lock()
        self.jobs: dict[str, _Job] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.revoked: set[str] = set()
        self.seen_jti: set[str] = set()
        self._rng = random.Random(self.faults.seed)
        self._cuts = {name: list(offsets) for name, offsets in self.faults.cut_after.items()}
        self._tokens_issued = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_directory(cls, directory: str | Path, **kwargs: Any) -> FhirBulkServer:
        """Builds a server over a directory of bulk files (see ``load_bulk_files``)."""
        return cls(load_bulk_files(directory), **kwargs)

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The listening port."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The FHIR base URL (``http://127.0.0.1:<port>/fhir``)."""
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        """The token endpoint URL."""
        return f"{self.base_url}/auth/token"

    def start(self, port: int = 0) -> FhirBulkServer:
        """Starts listening on 127.0.0.1 (ephemeral port by default) in a daemon thread."""
        handler = type("BoundHandler", (_Handler,), {"app": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fhir-bulk-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the server."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FhirBulkServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ content

    def source_bytes(self, name: str) -> bytes:
        """The true content of a file (before any truncation fault)."""
        return self.files[name]

    def served_content(self, name: str) -> bytes:
        """The content the server actually sends for a file."""
        content = self.files[name]
        return _truncated(content) if name in self.faults.truncate else content

    def add_client(self, client_id: str, jwks: dict[str, Any]) -> None:
        """Registers a backend client's public keys."""
        self.clients[client_id] = jwks

    def random_fault(self, route: str) -> int | None:
        """Decides (seeded, bounded) whether the next poll/file GET gets a 429 or 500."""
        plan = self.faults
        if route not in plan.random_fault_routes:
            return None
        with self.lock:
            if sum(self.stats.injected[k] for k in ("429", "500")) >= plan.max_random_faults:
                return None
            draw = self._rng.random()
            if draw < plan.rate_429:
                self.stats.injected["429"] += 1
                return 429
            if draw < plan.rate_429 + plan.rate_500:
                self.stats.injected["500"] += 1
                return 500
        return None

    def next_cut(self, name: str) -> int | None:
        """Pops the byte offset where the next GET of ``name`` is cut, if any."""
        with self.lock:
            offsets = self._cuts.get(name)
            if offsets:
                self.stats.injected["cut"] += 1
                return offsets.pop(0)
        return None

    # ------------------------------------------------------------------ auth

    def check_bearer(self, header: str | None) -> bool:
        """Tells whether a request's Authorization header carries a live token (always True when open)."""
        if not self.clients:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        token = header[len("Bearer ") :]
        with self.lock:
            if token in self.revoked:
                self.revoked.discard(token)
                self.tokens.pop(token, None)
                self.stats.injected["revoked_token"] += 1
                return False
            entry = self.tokens.get(token)
        return entry is not None and entry[1] > time.time()

    def verify_assertion(self, form: dict[str, str]) -> tuple[str | None, str]:
        """Checks a client-credentials request; returns ``(client_id, "")`` or ``(None, reason)``."""
        if form.get("grant_type") != "client_credentials":
            return None, "grant_type must be client_credentials"
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return None, "client_assertion_type must be jwt-bearer"
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            return None, f"malformed assertion: {error}"
        client_id = unverified.get("iss")
        jwks = self.clients.get(str(client_id))
        if jwks is None:
            return None, "unknown client"
        if header.get("alg") not in SUPPORTED_ALGORITHMS:
            return None, "unsupported alg"
        keys = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")]
        if not keys:
            return None, "no registered key with that kid"
        try:
            key = jwt.PyJWK.from_dict(keys[0])
            claims = jwt.decode(
                assertion,
                key=key.key,
                algorithms=list(SUPPORTED_ALGORITHMS),
                audience=self.token_url,
                leeway=CLOCK_LEEWAY,
                options={"require": ["exp", "iss", "sub", "aud", "jti"]},
            )
        except jwt.PyJWTError as error:
            return None, f"assertion rejected: {error}"
        if claims["sub"] != client_id:
            return None, "sub must equal iss"
        if claims["exp"] - time.time() > MAX_ASSERTION_LIFETIME + CLOCK_LEEWAY:
            return None, "exp more than five minutes ahead"
        with self.lock:
            if claims["jti"] in self.seen_jti:
                return None, "jti replayed"
            self.seen_jti.add(claims["jti"])
        return str(client_id), ""

    def issue_token(self, client_id: str) -> dict[str, Any]:
        """Issues a bearer token (the first one is revoked when the fault plan says so)."""
        token = secrets.token_urlsafe(24)
        lifetime = self.faults.token_lifetime_seconds
        with self.lock:
            self.tokens[token] = (client_id, time.time() + lifetime)
            if self.faults.revoke_first_token and self._tokens_issued == 0:
                self.revoked.add(token)
            self._tokens_issued += 1
        return {"access_token": token, "token_type": "bearer", "expires_in": lifetime, "scope": self.scope}

    # ------------------------------------------------------------------ jobs

    def create_job(self, level: str, request_url: str, types: list[str], since: str | None) -> _Job:
        """Registers a new export job."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        job = _Job(secrets.token_hex(8), level, request_url, types, since, now)
        with self.lock:
            self.jobs[job.job_id] = job
        return job

    def job_files(self, job: _Job) -> list[str]:
        """The file names a job exports."""
        names = []
        for name in sorted(self.files):
            resource_type = name.split(".", 1)[0]
            if job.types and resource_type not in job.types:
                continue
            if job.level != "system" and resource_type in NON_PATIENT_TYPES:
                continue
            names.append(name)
        return names

    def error_content(self, job: _Job) -> bytes:
        """The job's OperationOutcome NDJSON error file."""
        outcome = operation_outcome("processing", "1 resource could not be exported (test fault)", "warning")
        return json.dumps(outcome).encode() + b"\n"

    def deleted_content(self, job: _Job) -> bytes:
        """The job's deleted-resources Bundle NDJSON."""
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": "Patient/deleted-example"}}],
        }
        return json.dumps(bundle).encode() + b"\n"

    def manifest(self, job: _Job) -> dict[str, Any]:
        """The completed job's manifest."""
        base = f"{self.base_url}/files/{job.job_id}"
        output = [
            {"type": name.split(".", 1)[0], "url": f"{base}/{name}", "count": self.files[name].count(b"\n")}
            for name in self.job_files(job)
        ]
        output += [{"type": t, "url": f"{base}/{t}.missing.ndjson"} for t in self.faults.missing_types]
        document: dict[str, Any] = {
            "transactionTime": job.transaction_time,
            "request": job.request_url,
            "requiresAccessToken": bool(self.clients),
            "output": output,
            "error": [],
        }
        if self.faults.error_file:
            document["error"].append({"type": "OperationOutcome", "url": f"{base}/_errors/OperationOutcome.ndjson"})
        if self.faults.deleted_file and job.since:
            document["deleted"] = [{"type": "Bundle", "url": f"{base}/_deleted/Bundle.ndjson"}]
        return document

    def content_for(self, job: _Job, path: str) -> tuple[str, bytes] | None:
        """Finds the body a job's file path serves: ``(stats name, content)`` or None (404)."""
        if path == "_errors/OperationOutcome.ndjson" and self.faults.error_file:
            return "OperationOutcome.errors.ndjson", self.error_content(job)
        if path == "_deleted/Bundle.ndjson" and self.faults.deleted_file and job.since:
            return "Bundle.deleted.ndjson", self.deleted_content(job)
        if path in self.job_files(job):
            return path, self.served_content(path)
        return None


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the bound ``FhirBulkServer`` (``app``)."""

    app: FhirBulkServer
    protocol_version = "HTTP/1.1"
    server_version = "clinflow-fhir-bulk-test/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silences per-request logging."""

    # ------------------------------------------------------------------ helpers

    def _send(self, status: int, body: bytes = b"", content_type: str = FHIR_JSON, **headers: str) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, document: dict[str, Any], **headers: str) -> None:
        content_type = headers.pop("Content_Type", FHIR_JSON)
        self._send(status, json.dumps(document).encode(), content_type, **headers)

    def _outcome(self, status: int, code: str, diagnostics: str, **headers: str) -> None:
        self._json(status, operation_outcome(code, diagnostics), **headers)

    def _authorized(self) -> bool:
        if self.app.check_bearer(self.headers.get("Authorization")):
            return True
        with self.app.lock:
            self.app.stats.unauthorized += 1
        self._outcome(401, "login", "missing, expired or revoked access token", WWW_Authenticate="Bearer")
        return False

    def _count(self, route: str) -> None:
        with self.app.lock:
            self.app.stats.requests[route] += 1

    def _random_fault(self, route: str) -> bool:
        status = self.app.random_fault(route)
        if status == 429:
            self._outcome(429, "throttled", "too many requests", Retry_After=str(self.app.faults.retry_after_429))
            return True
        if status == 500:
            self._outcome(500, "transient", "injected server error")
            return True
        return False

    # ------------------------------------------------------------------ routing

    def do_GET(self) -> None:
        """Handles GET routes."""
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = dict(urllib.parse.parse_qsl(url.query))
        try:
            if path == "/fhir/.well-known/smart-configuration":
                self._count("smart-configuration")
                self._smart_configuration()
            elif path == "/fhir/$export":
                self._kickoff("system", query)
            elif path == "/fhir/Patient/$export":
                self._kickoff("patient", query)
            elif (match := re.fullmatch(r"/fhir/Group/([^/]+)/\$export", path)) is not None:
                self._kickoff("group", query, match.group(1))
            elif (match := re.fullmatch(r"/fhir/jobs/([0-9a-f]+)", path)) is not None:
                self._status(match.group(1))
            elif (match := re.fullmatch(r"/fhir/files/([0-9a-f]+)/(.+)", path)) is not None:
                self._file(match.group(1), match.group(2))
            else:
                self._count("not-found")
                self._outcome(404, "not-found", "no such endpoint")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self) -> None:
        """Handles the token endpoint (and POST kick-off, which is not supported)."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        if urllib.parse.urlsplit(self.path).path != "/fhir/auth/token":
            self._outcome(405, "not-supported", "use GET")
            return
        self._count("token")
        form = dict(urllib.parse.parse_qsl(body))
        client_id, reason = self.app.verify_assertion(form)
        if client_id is None:
            with self.app.lock:
                self.app.stats.rejected_assertions.append(reason)
            self._json(401, {"error": "invalid_client", "error_description": reason}, Cache_Control="no-store")
            return
        self._json(200, self.app.issue_token(client_id), Cache_Control="no-store")

    def do_DELETE(self) -> None:
        """Deletes a job."""
        self._count("delete")
        match = re.fullmatch(r"/fhir/jobs/([0-9a-f]+)", urllib.parse.urlsplit(self.path).path)
        if match is None:
            self._outcome(404, "not-found", "no such job")
            return
        if not self._authorized():
            return
        with self.app.lock:
            job = self.app.jobs.get(match.group(1))
            if job is None or job.deleted:
                job = None
            else:
                job.deleted = True
                self.app.stats.deleted_jobs.append(job.job_id)
        if job is None:
            self._outcome(404, "not-found", "no such job")
        else:
            self._send(202)

    # ------------------------------------------------------------------ endpoints

    def _smart_configuration(self) -> None:
        self._json(
            200,
            {
                "token_endpoint": self.app.token_url,
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(SUPPORTED_ALGORITHMS),
                "scopes_supported": ["system/*.read"],
                "capabilities": ["client-confidential-asymmetric"],
            },
            Content_Type="application/json",
        )

    def _kickoff(self, level: str, query: dict[str, str], group_id: str | None = None) -> None:
        self._count("kickoff")
        if not self._authorized():
            return
        if "respond-async" not in (self.headers.get("Prefer") or ""):
            self._outcome(400, "invalid", "kick-off needs the header Prefer: respond-async")
            return
        if FHIR_JSON not in (self.headers.get("Accept") or ""):
            self._outcome(400, "invalid", "kick-off needs the header Accept: application/fhir+json")
            return
        if group_id is not None and group_id not in self.app.groups:
            self._outcome(404, "not-found", "unknown Group")
            return
        since = query.get("_since")
        if since is not None and not _SINCE.match(since):
            self._outcome(400, "invalid", "_since must be a FHIR instant")
            return
        types = [t for t in query.get("_type", "").split(",") if t]
        job = self.app.create_job(level, f"{self.app.base_url}{self.path[len('/fhir') :]}", types, since)
        with self.app.lock:
            self.app.stats.kickoffs.append((level, dict(query)))
        self._send(202, Content_Location=f"{self.app.base_url}/jobs/{job.job_id}")

    def _status(self, job_id: str) -> None:
        self._count("status")
        with self.app.lock:
            self.app.stats.poll_times.append(time.monotonic())
        if not self._authorized() or self._random_fault("status"):
            return
        with self.app.lock:
            job = self.app.jobs.get(job_id)
            if job is not None and not job.deleted:
                job.polls += 1
        if job is None or job.deleted:
            self._outcome(404, "not-found", "no such export job (deleted or expired)")
            return
        plan = self.app.faults
        if plan.fail_job:
            self._outcome(500, "exception", "export failed (test fault)")
            return
        if job.polls <= plan.polls_before_complete:
            percent = int(100 * (job.polls - 1) / max(1, plan.polls_before_complete))
            self._send(202, X_Progress=f"{percent}% complete", Retry_After=str(plan.retry_after_seconds))
            return
        self._json(200, self.app.manifest(job), Content_Type="application/json", Expires=formatdate(usegmt=True))

    def _file(self, job_id: str, path: str) -> None:
        self._count(f"file:{path}")
        with self.app.lock:
            job = self.app.jobs.get(job_id)
        if self.app.clients and not self._authorized():
            return
        if job is None or job.deleted:
            self._outcome(404, "not-found", "no such export job (deleted or expired)")
            return
        found = self.app.content_for(job, path)
        if found is None:
            self._outcome(404, "not-found", "no such file")
            return
        if self._random_fault("file"):
            return
        name, content = found
        etag = _etag(content)
        start = self._range_start(etag, len(content))
        if start is None:
            return
        cut = self.app.next_cut(name)
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", NDJSON)
        self.send_header("Content-Length", str(len(content) - start))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        self.end_headers()
        with self.app.lock:
            counter = self.app.stats.partial_responses if start else self.app.stats.full_responses
            counter[name] += 1
            if start:
                self.app.stats.ranges.append((name, start))
        self._send_body(name, content, start, cut)

    def _range_start(self, etag: str, size: int) -> int | None:
        """Returns the first byte to send (0 for the whole file), or None after answering 416."""
        header = self.headers.get("Range")
        if not header:
            return 0
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in (etag, LAST_MODIFIED):
            return 0
        match = re.fullmatch(r"bytes=(\d+)-", header.strip())
        if match is None:
            return 0
        start = int(match.group(1))
        if start >= size:
            self._send(416, Content_Range=f"bytes */{size}")
            return None
        return start

    def _send_body(self, name: str, content: bytes, start: int, cut: int | None) -> None:
        end = len(content) if cut is None else max(start, min(cut, len(content)))
        throttle = self.app.faults.throttle_bytes_per_second
        position = start
        while position < end:
            chunk = content[position : min(end, position + SEND_CHUNK)]
            self.wfile.write(chunk)
            self.wfile.flush()
            position += len(chunk)
            with self.app.lock:
                self.app.stats.bytes_served[name] += len(chunk)
            if throttle:
                time.sleep(len(chunk) / throttle)
        if cut is not None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------- command line


def _cut_spec(text: str) -> tuple[str, int]:
    name, _, offset = text.rpartition(":")
    if not name or not offset.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected FILE:OFFSET, e.g. Patient.000.ndjson:100")
    return name, int(offset)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m clinflow.testing.fhir_bulk_server",
        description="Serve a directory of FHIR bulk NDJSON files as a $export server on 127.0.0.1 (tests/demos only).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="directory of <Type>*.ndjson[.gz] files to serve")
    source.add_argument("--generate-patients", type=int, help="serve a synthetic export of this many patients")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: ephemeral)")
    parser.add_argument("--client-id", help="register a SMART backend client with this id (default: open server)")
    parser.add_argument("--jwks", type=Path, help="JWKS file with the client's public key(s)")
    parser.add_argument(
        "--write-demo-key",
        type=Path,
        help="generate an RS384 key, register its public half for --client-id and write the private PEM here",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random fault RNG")
    parser.add_argument("--polls", type=int, default=0, help="status polls answered 202 before the manifest")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on 202 status answers")
    parser.add_argument("--rate-429", type=float, default=0.0, help="probability of a 429 on a poll or file GET")
    parser.add_argument("--rate-500", type=float, default=0.0, help="probability of a 500 on a poll or file GET")
    parser.add_argument("--max-random-faults", type=int, default=8, help="upper bound on injected 429/500 answers")
    parser.add_argument("--cut", type=_cut_spec, action="append", default=[], help="FILE:OFFSET cut a GET there")
    parser.add_argument("--truncate", action="append", default=[], help="serve FILE cut mid-line (repeatable)")
    parser.add_argument("--missing", action="append", default=[], help="add a 404 manifest entry of TYPE")
    parser.add_argument("--revoke-first-token", action="store_true", help="reject the first access token once")
    parser.add_argument("--deleted", action="store_true", help="add a deleted-resources Bundle when _since is given")
    parser.add_argument("--throttle", type=float, help="bytes per second per file transfer")
    parser.add_argument("--fail-job", action="store_true", help="every job fails with a 500 OperationOutcome")
    parser.add_argument("--token-lifetime", type=int, default=300, help="expires_in of access tokens, seconds")
    return parser.parse_args(argv)


def _fault_plan(args: argparse.Namespace) -> FaultPlan:
    cuts: dict[str, list[int]] = {}
    for name, offset in args.cut:
        cuts.setdefault(name, []).append(offset)
    return FaultPlan(
        seed=args.seed,
        polls_before_complete=args.polls,
        retry_after_seconds=args.retry_after,
        rate_429=args.rate_429,
        rate_500=args.rate_500,
        max_random_faults=args.max_random_faults,
        cut_after=cuts,
        truncate=set(args.truncate),
        missing_types=tuple(args.missing),
        revoke_first_token=args.revoke_first_token,
        deleted_file=args.deleted,
        throttle_bytes_per_second=args.throttle,
        token_lifetime_seconds=args.token_lifetime,
        fail_job=args.fail_job,
    )


def _clients(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if args.client_id is None:
        return {}
    if args.jwks is not None:
        return {args.client_id: json.loads(args.jwks.read_text(encoding="utf-8"))}
    if args.write_demo_key is not None:
        pem, jwks = make_key_pair("RS384", "demo-key")
        args.write_demo_key.write_bytes(pem)
        args.write_demo_key.chmod(0o600)
        print(f"private key written to {args.write_demo_key} (kid demo-key)", file=sys.stderr)
        return {args.client_id: jwks}
    raise SystemExit("error: --client-id needs --jwks or --write-demo-key")


@contextlib.contextmanager
def _data_dir(args: argparse.Namespace) -> Iterator[Path]:
    if args.data is not None:
        yield args.data
        return
    from clinflow.synthetic import generate_fhir_bulk

    with tempfile.TemporaryDirectory(prefix="fhir-bulk-") as tmp:
        generate_fhir_bulk(Path(tmp), patients=args.generate_patients, seed=7)
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the server until interrupted."""
    args = parse_args(argv)
    with _data_dir(args) as directory:
        server = FhirBulkServer.from_directory(directory, clients=_clients(args), faults=_fault_plan(args))
    with server.start(args.port):
        print(f"FHIR base URL: {server.base_url}", flush=True)
        if server.clients:
            print(f"token URL:     {server.token_url}", flush=True)
        print(f"serving {len(server.files)} files; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "FaultPlan",
    "FhirBulkServer",
    "ServerStats",
    "load_bulk_files",
    "make_key_pair",
    "operation_outcome",
]
