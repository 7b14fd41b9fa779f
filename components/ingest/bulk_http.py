"""HTTP plumbing of the Bulk Data client: retry policy, Retry-After, redaction and authorized sessions."""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from components.ingest.smart_auth import TokenProvider

HTTP_TIMEOUT = (10.0, 60.0)
USER_AGENT = "clinflow-bulk-client/1"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    Attributes:
        max_attempts: Attempts per request/file in one run (the first try included).
        backoff_base: Seconds of the first backoff; doubled per attempt.
        backoff_cap: Longest backoff, seconds.
        retry_after_cap: Longest wait a server's ``Retry-After`` can impose, seconds.
    """

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float = 120.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): half fixed, half random."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** max(0, attempt - 1)))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, default: float, cap: float) -> float:
    """Reads a ``Retry-After`` header (delay seconds or an HTTP-date) into seconds, within ``[0, cap]``.

    Args:
        value: The header value, or None when absent.
        default: Seconds to use when the header is absent or unreadable.
        cap: Upper bound.

    Returns:
        Seconds to wait.
    """
    if value is None or not value.strip():
        return min(default, cap)
    text = value.strip()
    if text.isdigit():
        return min(float(text), cap)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return min(default, cap)
    return max(0.0, min(moment.timestamp() - time.time(), cap))


def redact_url(url: str) -> str:
    """Drops the query string and fragment (signed URLs carry secrets there) and any user info."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def outcome_summary(response: requests.Response) -> str:
    """Summarises an error response: status plus OperationOutcome issue severities/codes (no diagnostics text)."""
    codes: list[str] = []
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome":
        for issue in document.get("issue", [])[:5]:
            if isinstance(issue, dict):
                codes.append(f"{issue.get('severity', '?')}/{issue.get('code', '?')}")
    detail = f" OperationOutcome {', '.join(codes)}" if codes else ""
    return f"HTTP {response.status_code}{detail}"


def is_transient_outcome(response: requests.Response) -> bool:
    """Tells whether an error answer is worth retrying: 429, 502-504, or a 5xx without a non-transient outcome."""
    if response.status_code in (429, 502, 503, 504):
        return True
    if response.status_code < 500:
        return False
    try:
        document = response.json()
    except ValueError:
        return True
    if not isinstance(document, dict) or document.get("resourceType") != "OperationOutcome":
        return True
    issues = [i for i in document.get("issue", []) if isinstance(i, dict)]
    return all(issue.get("code") in ("transient", "throttled", "timeout") for issue in issues)


class BulkHttp:
    """Per-thread ``requests`` sessions with optional bearer auth that refreshes once on a 401."""

    def __init__(self, tokens: TokenProvider | None) -> None:
        """Creates the session pool.

        Args:
            tokens: The token provider, or None for an open server.
        """
        self.tokens = tokens
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        """This thread's session."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def request(
        self, method: str, url: str, headers: dict[str, str], *, auth: bool = True, stream: bool = False
    ) -> requests.Response:
        """Sends a request; with auth, a 401 drops the cached token and the request is sent once more.

        Args:
            method: HTTP method.
            url: Absolute URL.
            headers: Request headers (Authorization is added).
            auth: Send the bearer token (when a provider is configured).
            stream: Stream the body.

        Returns:
            The response (the caller closes it).
        """
        use_auth = auth and self.tokens is not None
        for attempt in range(2):
            sent = dict(headers)
            token = ""
            if use_auth:
                assert self.tokens is not None
                token = self.tokens.token()
                sent["Authorization"] = f"Bearer {token}"
            response = self.session().request(method, url, headers=sent, stream=stream, timeout=HTTP_TIMEOUT)
            if response.status_code != 401 or not use_auth or attempt == 1:
                return response
            response.close()
            assert self.tokens is not None
            self.tokens.invalidate(token)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Closes every session."""
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def json_object(response: requests.Response) -> dict[str, Any] | None:
    """The response's JSON object, or None."""
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
