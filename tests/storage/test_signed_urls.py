"""V4 signed upload URLs: a real RSA signature over the canonical request, and a PUT through the emulator."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from components.ingest.storage import StorageError


@pytest.fixture()
def service_account_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> rsa.RSAPrivateKey:
    """A freshly generated service-account JSON key, named by CLINFLOW_GCS_SIGNING_KEY_FILE."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    document = {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "test-key-1",
        "client_email": "ingest-signer@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    document["private_key"] = pem  # generated above, never committed
    path = tmp_path / "signer.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    monkeypatch.setenv("CLINFLOW_GCS_SIGNING_KEY_FILE", str(path))
    return key


def string_to_sign(url: str, method: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """Re-derives the V4 string-to-sign from the URL and headers; returns it and the URL's signature."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    signature = bytes.fromhex(dict(query)["X-Goog-Signature"])
    params = sorted((k, v) for k, v in query if k != "X-Goog-Signature")
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)
    signed = dict(query)["X-Goog-SignedHeaders"].split(";")
    all_headers = {k.lower(): v.strip() for k, v in headers.items()} | {"host": parts.netloc}
    assert sorted(all_headers) == signed, "every header sent must be signed, and only those"
    canonical_headers = "".join(f"{name}:{all_headers[name]}\n" for name in signed)
    canonical_request = "\n".join(
        [method, parts.path, canonical_query, canonical_headers, ";".join(signed), "UNSIGNED-PAYLOAD"]
    )
    scope = dict(query)["X-Goog-Credential"].split("/", 1)[1]
    text = "\n".join(
        [
            dict(query)["X-Goog-Algorithm"],
            dict(query)["X-Goog-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    return text.encode(), signature


def test_signed_url_is_a_real_v4_signature_and_uploads_through_the_emulator(
    store_factory, service_account_key: rsa.RSAPrivateKey
) -> None:
    store = store_factory("gcs")
    body = b"%PDF-1.4 synthetic referral letter"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    signed = store.signed_upload_url(
        "documents/referral.pdf",
        content_type="application/pdf",
        expires_in_seconds=600,
        metadata={"lane": "documents", "original_name": "referral.pdf"},
        md5=md5,
    )
    assert signed.method == "PUT" and signed.zone == "staging"
    query = dict(parse_qsl(urlsplit(signed.url).query))
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == "600"
    assert query["X-Goog-Credential"].startswith("ingest-signer@test.iam.gserviceaccount.com/")
    assert query["X-Goog-Credential"].endswith("/auto/storage/goog4_request")
    assert set(query["X-Goog-SignedHeaders"].split(";")) == {
        "content-md5",
        "content-type",
        "host",
        "x-goog-if-generation-match",
        "x-goog-meta-lane",
        "x-goog-meta-original_name",
        "x-goog-meta-state",
    }
    text, signature = string_to_sign(signed.url, "PUT", signed.headers)
    service_account_key.public_key().verify(signature, text, padding.PKCS1v15(), hashes.SHA256())
    # A tampered header no longer matches the signature.
    tampered, _ = string_to_sign(signed.url, "PUT", {**signed.headers, "Content-Type": "text/html"})
    with pytest.raises(InvalidSignature):
        service_account_key.public_key().verify(signature, tampered, padding.PKCS1v15(), hashes.SHA256())

    response = requests.put(signed.url, data=body, headers=signed.headers, timeout=10)
    assert response.status_code == 200, response.text
    info = store.stat("staging", "documents/referral.pdf")
    assert info.size == len(body) and info.md5 == md5
    assert info.content_type == "application/pdf"
    assert info.metadata == {"lane": "documents", "original_name": "referral.pdf", "state": "uploaded"}
    assert store.read("staging", "documents/referral.pdf") == body
    # The client's PUT carried no SHA-256: verify() checks CRC32C/MD5 and records it.
    assert info.sha256 == ""
    verified = store.verify("staging", "documents/referral.pdf")
    assert verified.sha256 == hashlib.sha256(body).hexdigest()
    assert verified.metadata["sha256"] == verified.sha256 and verified.metadata["lane"] == "documents"
    assert store.promote("documents/referral.pdf").metadata["state"] == "promoted"


def test_signed_url_lifetime_is_bounded(store_factory, service_account_key) -> None:
    store = store_factory("gcs")
    with pytest.raises(StorageError, match="lifetime 7200s: must be between 1 and 3600s"):
        store.signed_upload_url("a.pdf", content_type="application/pdf", expires_in_seconds=7200)


def test_signed_url_needs_a_key_file(store_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = store_factory("gcs")
    monkeypatch.delenv("CLINFLOW_GCS_SIGNING_KEY_FILE", raising=False)
    with pytest.raises(StorageError, match="set CLINFLOW_GCS_SIGNING_KEY_FILE"):
        store.signed_upload_url("a.pdf", content_type="application/pdf")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    monkeypatch.setenv("CLINFLOW_GCS_SIGNING_KEY_FILE", str(bad))
    with pytest.raises(StorageError, match="not a readable service-account JSON key"):
        store.signed_upload_url("a.pdf", content_type="application/pdf")
