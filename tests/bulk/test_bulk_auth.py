"""SMART Backend Services auth against the test server's real token endpoint."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from clinflow.errors import UserError
from clinflow.testing.fhir_bulk_server import FaultPlan, FhirBulkServer, make_key_pair
from components.ingest.bulk_client import run_export
from components.ingest.smart_auth import ASSERTION_TYPE, PrivateKeySource, SmartAuthSettings, TokenProvider

CLIENT = "clinflow-test-client"


def _server(source: Path, jwks, **faults) -> FhirBulkServer:
    return FhirBulkServer.from_directory(source, clients={CLIENT: jwks}, faults=FaultPlan(**faults))


def _assertion(pem: bytes, aud: str, kid: str = "test-key-1", exp_in: int = 240, jti: str | None = None) -> str:
    key = serialization.load_pem_private_key(pem, password=None)
    now = int(time.time())
    claims = {"iss": CLIENT, "sub": CLIENT, "aud": aud, "exp": now + exp_in, "jti": jti or uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm="RS384", headers={"kid": kid})


def _token_request(server: FhirBulkServer, assertion: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.read",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    return requests.post(server.token_url, data=form, timeout=10)


def test_revoked_token_is_refreshed_and_request_retried(bulk_source, client_key, make_auth_config, tmp_path) -> None:
    with _server(bulk_source, client_key.jwks, revoke_first_token=True) as server:
        config = make_auth_config(server, types=("Patient",), token_url=server.token_url)
        result = run_export(config, tmp_path / "out")
        assert result.downloaded and result.job_deleted
        assert server.stats.requests["smart-configuration"] == 0  # token URL given, not discovered
        assert server.stats.unauthorized == 1 and server.stats.injected["revoked_token"] == 1
        assert server.stats.requests["token"] == 2
        assert len(server.stats.kickoffs) == 1


def test_token_refreshed_before_expiry(bulk_source, client_key, make_auth_config, tmp_path) -> None:
    faults = {"token_lifetime_seconds": 2, "polls_before_complete": 2, "retry_after_seconds": 1}
    with _server(bulk_source, client_key.jwks, **faults) as server:
        run_export(make_auth_config(server, types=("Patient",)), tmp_path / "out")
        assert server.stats.requests["token"] >= 2
        assert server.stats.unauthorized == 0


def test_es384_key_from_environment(bulk_source, make_auth_config, tmp_path, monkeypatch) -> None:
    pem, jwks = make_key_pair("ES384", "ec-key")
    monkeypatch.setenv("CLINFLOW_TEST_BULK_KEY", pem.decode())
    with _server(bulk_source, jwks) as server:
        config = make_auth_config(
            server, private_key_file=None, private_key_env="CLINFLOW_TEST_BULK_KEY", kid="ec-key", types=("Patient",)
        )
        result = run_export(config, tmp_path / "out")
        assert result.downloaded
        assert server.stats.requests["smart-configuration"] == 1  # token URL discovered


def test_wrong_key_is_rejected_with_clear_user_error(bulk_source, client_key, make_auth_config, tmp_path) -> None:
    other_pem, _ = make_key_pair("RS384", "test-key-1")
    (tmp_path / "other.pem").write_bytes(other_pem)
    with _server(bulk_source, client_key.jwks) as server:
        config = make_auth_config(server, private_key_file=str(tmp_path / "other.pem"))
        with pytest.raises(UserError, match=r"token endpoint rejected client 'clinflow-test-client' \(invalid_client"):
            run_export(config, tmp_path / "out")
        assert server.stats.rejected_assertions == ["assertion rejected: Signature verification failed"]
        assert server.stats.kickoffs == []


def test_token_endpoint_checks_aud_exp_kid_and_jti_replay(bulk_source, client_key) -> None:
    with _server(bulk_source, client_key.jwks) as server:
        good = _assertion(client_key.pem, server.token_url, jti="once")
        assert _token_request(server, good).status_code == 200
        assert _token_request(server, good).json()["error_description"] == "jti replayed"
        wrong_aud = _assertion(client_key.pem, server.base_url)
        assert _token_request(server, wrong_aud).status_code == 401
        too_long = _assertion(client_key.pem, server.token_url, exp_in=3600)
        assert _token_request(server, too_long).json()["error_description"] == "exp more than five minutes ahead"
        expired = _assertion(client_key.pem, server.token_url, exp_in=-60)
        assert "expired" in _token_request(server, expired).json()["error_description"]
        unknown_kid = _assertion(client_key.pem, server.token_url, kid="nope")
        assert _token_request(server, unknown_kid).status_code == 401
        assert requests.get(f"{server.base_url}/$export", timeout=10).status_code == 401


def test_assertion_claims(client_key, bulk_source) -> None:
    with _server(bulk_source, client_key.jwks) as server:
        settings = SmartAuthSettings(CLIENT, PrivateKeySource(path=str(client_key.pem_path)), "test-key-1")
        provider = TokenProvider(settings, server.base_url)
        first = provider.token()
        assert provider.token() == first and provider.tokens_fetched == 1  # cached
        provider.invalidate(first)
        assert provider.token() != first
    assert provider.alg == "RS384"


def test_missing_key_sources_are_user_errors(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("CLINFLOW_NO_SUCH_KEY", raising=False)
    with pytest.raises(UserError, match="CLINFLOW_NO_SUCH_KEY: environment variable is unset"):
        PrivateKeySource(env_var="CLINFLOW_NO_SUCH_KEY").load_pem()
    with pytest.raises(UserError, match="private key file not found"):
        PrivateKeySource(path=str(tmp_path / "absent.pem")).load_pem()
    with pytest.raises(UserError, match="exactly one"):
        PrivateKeySource().load_pem()
    (tmp_path / "junk.pem").write_text("not a key")
    settings = SmartAuthSettings(CLIENT, PrivateKeySource(path=str(tmp_path / "junk.pem")), "k")
    with pytest.raises(UserError, match="not an unencrypted PEM private key"):
        TokenProvider(settings, "http://127.0.0.1:9")
