"""SMART Backend Services authorization (client-credentials grant with a signed JWT assertion).

The client signs a short-lived JWT (``iss = sub = client_id``, ``aud = token URL``, ``exp`` at most
five minutes ahead, a fresh ``jti``, ``kid`` in the header) with its private key (RS384 or ES384)
and trades it at the token endpoint for a bearer token. The private key PEM comes from a file or an
environment variable named by configuration, never from a literal. Tokens are cached and refreshed
shortly before ``expires_in`` runs out, or at once after the server answered 401.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clinflow.errors import UserError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300
SUPPORTED_ALGORITHMS = ("RS384", "ES384")
DEFAULT_SCOPE = "system/*.read"
HTTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class PrivateKeySource:
    """Where the client's private key PEM lives: a file path or an environment variable name.

    Attributes:
        path: A file holding the PEM.
        env_var: The name of an environment variable holding the PEM.
    """

    path: str | None = None
    env_var: str | None = None

    def describe(self) -> str:
        """Names the source (never its content) for messages."""
        return f"key file {self.path}" if self.path else f"environment variable {self.env_var}"

    def load_pem(self) -> bytes:
        """Reads the PEM.

        Raises:
            UserError: Neither or both sources given, the file is missing, or the variable is unset.
        """
        if bool(self.path) == bool(self.env_var):
            raise UserError("SMART auth: give exactly one of --private-key-file or --private-key-env")
        if self.path:
            path = Path(self.path)
            if not path.is_file():
                raise UserError(f"{path}: private key file not found; pass the PEM file of the registered key")
            return path.read_bytes()
        value = os.environ.get(str(self.env_var), "")
        if not value.strip():
            raise UserError(f"{self.env_var}: environment variable is unset or empty; put the private key PEM in it")
        return value.encode("utf-8")


@dataclass(frozen=True)
class SmartAuthSettings:
    """How to authenticate as a SMART backend client.

    Attributes:
        client_id: The registered client id.
        key: Where the private key PEM is.
        kid: Key id sent in the JWT header (must match the registered JWKS).
        alg: ``RS384`` or ``ES384``; None infers it from the key type.
        token_url: The token endpoint; None discovers it from ``.well-known/smart-configuration``.
        scope: Requested scope.
    """

    client_id: str
    key: PrivateKeySource
    kid: str
    alg: str | None = None
    token_url: str | None = None
    scope: str = DEFAULT_SCOPE


def load_signing_key(source: PrivateKeySource) -> tuple[Any, str]:
    """Loads the private key and returns it with its natural algorithm (RS384 for RSA, ES384 for EC).

    Raises:
        UserError: The PEM cannot be parsed or the key type is unsupported.
    """
    pem = source.load_pem()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise UserError(
            f"{source.describe()}: not an unencrypted PEM private key; export the key as PKCS#8 PEM"
        ) from error
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key, "ES384"
    raise UserError(f"{source.describe()}: unsupported key type; use an RSA (RS384) or EC P-384 (ES384) key")


def build_client_assertion(
    client_id: str, token_url: str, key: Any, alg: str, kid: str, lifetime: int = ASSERTION_LIFETIME_SECONDS
) -> str:
    """Signs a client-assertion JWT for the client-credentials grant.

    Args:
        client_id: Used as ``iss`` and ``sub``.
        token_url: Used as ``aud``.
        key: The private key object.
        alg: ``RS384`` or ``ES384``.
        kid: Key id header.
        lifetime: Seconds until ``exp`` (capped at 300).

    Returns:
        The compact JWT.
    """
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + min(lifetime, ASSERTION_LIFETIME_SECONDS),
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def discover_token_url(session: requests.Session, base_url: str) -> str:
    """Reads the token endpoint from ``<base>/.well-known/smart-configuration``.

    Raises:
        UserError: The document is missing or has no ``token_endpoint``.
    """
    url = base_url.rstrip("/") + "/.well-known/smart-configuration"
    try:
        response = session.get(url, headers={"Accept": "application/json"}, timeout=HTTP_TIMEOUT)
        document = response.json() if response.status_code == 200 else {}
    except (requests.RequestException, ValueError) as error:
        raise UserError(
            f"{url}: cannot read the SMART configuration ({type(error).__name__}); pass --token-url"
        ) from error
    token_url = document.get("token_endpoint") if isinstance(document, dict) else None
    if not isinstance(token_url, str) or not token_url:
        raise UserError(f"{url}: no token_endpoint (HTTP {response.status_code}); pass --token-url")
    return token_url


class TokenProvider:
    """Fetches, caches and refreshes bearer tokens for one SMART backend client (thread-safe)."""

    def __init__(self, settings: SmartAuthSettings, base_url: str, session: requests.Session | None = None) -> None:
        """Loads the signing key at once so a bad key fails before any request.

        Args:
            settings: The client's settings.
            base_url: FHIR base URL (for token endpoint discovery).
            session: HTTP session for token requests (a new one by default).
        """
        self.settings = settings
        self.base_url = base_url
        self._session = session or requests.Session()
        self._key, natural_alg = load_signing_key(settings.key)
        self.alg = settings.alg or natural_alg
        if self.alg not in SUPPORTED_ALGORITHMS:
            raise UserError(f"--alg {self.alg}: SMART Backend Services needs one of {', '.join(SUPPORTED_ALGORITHMS)}")
        if self.alg != natural_alg:
            raise UserError(f"{settings.key.describe()}: the key does not fit --alg {self.alg}; use {natural_alg}")
        self._token_url = settings.token_url
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    @property
    def token_url(self) -> str:
        """The token endpoint (discovered on first use when not configured)."""
        if self._token_url is None:
            self._token_url = discover_token_url(self._session, self.base_url)
        return self._token_url

    def token(self) -> str:
        """Returns a live bearer token, fetching a new one when none is cached or it is about to expire."""
        with self._lock:
            if self._token is None or time.time() >= self._expires_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Drops ``token`` from the cache (after a 401) so the next call fetches a new one."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> None:
        token_url = self.token_url
        settings = self.settings
        form = {
            "grant_type": "client_credentials",
            "scope": settings.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": build_client_assertion(
                settings.client_id, token_url, self._key, self.alg, settings.kid
            ),
        }
        try:
            response = self._session.post(token_url, data=form, headers={"Accept": "application/json"}, timeout=30)
        except requests.RequestException as error:
            raise UserError(f"{token_url}: token request failed ({type(error).__name__}); check --token-url") from error
        document = _json_or_empty(response)
        if response.status_code != 200 or "access_token" not in document:
            error_code = document.get("error", f"HTTP {response.status_code}")
            description = str(document.get("error_description", ""))[:200]
            raise UserError(
                f"{token_url}: token endpoint rejected client {settings.client_id!r} ({error_code}: {description}); "
                f"check that kid {settings.kid!r} and the private key match the key registered for the client"
            )
        expires_in = float(document.get("expires_in") or 300)
        margin = min(60.0, expires_in / 5)
        self._token = str(document["access_token"])
        self._expires_at = time.time() + expires_in - margin
        self.tokens_fetched += 1


def _json_or_empty(response: requests.Response) -> dict[str, Any]:
    """The response's JSON object, or an empty dict."""
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
