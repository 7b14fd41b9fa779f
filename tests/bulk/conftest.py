"""Fixtures for the Bulk Data client tests: a small generated export, a client key, fast retries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clinflow.testing.fhir_bulk_server import FhirBulkServer, make_key_pair
from components.ingest.bulk_client import BulkExportConfig
from components.ingest.bulk_http import RetryPolicy

BULK_PATIENTS = 40
CLIENT_ID = "clinflow-test-client"
KID = "test-key-1"
FAST_RETRY = RetryPolicy(max_attempts=6, backoff_base=0.02, backoff_cap=0.2, retry_after_cap=5.0)


@dataclass(frozen=True)
class ClientKey:
    pem_path: Path
    pem: bytes
    jwks: dict[str, Any]


@pytest.fixture(scope="session")
def bulk_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic export from the project's generator (plain NDJSON)."""
    from clinflow.synthetic import generate_fhir_bulk

    out = tmp_path_factory.mktemp("bulk-source")
    generate_fhir_bulk(out, patients=BULK_PATIENTS, seed=11)
    return out


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    """An RS384 key pair registered for ``CLIENT_ID``; the PEM lives in a 0600 file."""
    pem, jwks = make_key_pair("RS384", KID)
    path = tmp_path_factory.mktemp("keys") / "client.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    return ClientKey(path, pem, jwks)


def auth_config(server: FhirBulkServer, key: ClientKey, **overrides: Any) -> BulkExportConfig:
    """A config for an authenticated run against ``server`` with fast retries."""
    settings: dict[str, Any] = {
        "base_url": server.base_url,
        "client_id": CLIENT_ID,
        "private_key_file": str(key.pem_path),
        "kid": KID,
        "retry": FAST_RETRY,
        "poll_interval": 0.05,
    }
    settings.update(overrides)
    return BulkExportConfig(**settings)


def open_config(server: FhirBulkServer, **overrides: Any) -> BulkExportConfig:
    """A config for an open (no auth) server with fast retries."""
    settings: dict[str, Any] = {"base_url": server.base_url, "retry": FAST_RETRY, "poll_interval": 0.05}
    settings.update(overrides)
    return BulkExportConfig(**settings)


@pytest.fixture()
def make_auth_config(client_key: ClientKey) -> Any:
    """``make_auth_config(server, **overrides)`` -> an authenticated config with fast retries."""
    return lambda server, **overrides: auth_config(server, client_key, **overrides)


@pytest.fixture()
def make_open_config() -> Any:
    """``make_open_config(server, **overrides)`` -> a config without auth with fast retries."""
    return open_config
