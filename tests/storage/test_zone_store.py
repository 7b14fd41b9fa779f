"""The zone-store interface, run against the local backend and the real GCS emulator."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
from pathlib import Path

import google_crc32c
import pytest

from components.ingest.storage import (
    ChecksumMismatch,
    LocalZoneStore,
    NameConflict,
    ObjectNotFound,
    StorageError,
    open_zone_store,
    upload_id_for,
)

CHUNK = 256 * 1024  # the stores in conftest.py use this chunk size

META = {"original_name": "scan-001.dcm", "source": "drop/site-a", "lane": "dicom"}


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def expected_sums(data: bytes) -> tuple[str, str, str]:
    crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    return crc, md5, hashlib.sha256(data).hexdigest()


class FailingStream(io.RawIOBase):
    """A seekable source that raises once a read would go past ``fail_at`` bytes (a dropped source)."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        self._data = io.BytesIO(data)
        self._fail_at = fail_at

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()

    def read(self, size: int = -1) -> bytes:
        if size < 0 or self._data.tell() + size > self._fail_at:
            raise ConnectionResetError("source connection dropped")
        return self._data.read(size)


@pytest.mark.parametrize("size", [1000, 3 * CHUNK + 123], ids=["single-request", "resumable"])
def test_upload_stat_checksums_and_manifest_metadata(store, tmp_path: Path, size: int) -> None:
    data = payload(size)
    source = tmp_path / "scan.dcm"
    source.write_bytes(data)
    result = store.upload(
        "staging", "dicom/scan.dcm", source, idempotency_key="k1", metadata=META, content_type="application/dicom"
    )
    assert result.created and result.upload_id == upload_id_for("k1")
    assert result.bytes_sent == size and result.resumed_from == 0
    info = store.stat("staging", "dicom/scan.dcm")
    crc, md5, sha = expected_sums(data)
    assert (info.size, info.crc32c, info.md5, info.sha256) == (size, crc, md5, sha)
    assert info.content_type == "application/dicom"
    assert info.metadata == {
        **META,
        "upload_id": upload_id_for("k1"),
        "sha256": sha,
        "bytes": str(size),
        "content_type": "application/dicom",
        "state": "uploaded",
    }
    assert store.read("staging", "dicom/scan.dcm") == data
    assert [i.name for i in store.list("staging")] == ["dicom/scan.dcm"]
    assert store.list("clean") == []
    copy = tmp_path / "out" / "copy.dcm"
    assert store.download_to("staging", "dicom/scan.dcm", copy).sha256 == sha
    assert copy.read_bytes() == data


def test_stream_source_and_default_key(store) -> None:
    data = payload(5000, seed=2)
    first = store.upload("staging", "a.bin", io.BytesIO(data), metadata={"lane": "documents"})
    second = store.upload("staging", "a.bin", io.BytesIO(data), metadata={"lane": "documents"})
    assert first.created and not second.created
    assert second.info.sha256 == first.info.sha256
    assert [i.name for i in store.list("staging")] == ["a.bin"]


def test_same_file_twice_gives_one_object(store, tmp_path: Path) -> None:
    source = tmp_path / "x.pdf"
    source.write_bytes(payload(2 * CHUNK + 7, seed=3))
    first = store.upload("staging", "documents/x.pdf", source, idempotency_key="drop:x.pdf:abc")
    again = store.upload("staging", "documents/x.pdf", source, idempotency_key="drop:x.pdf:abc")
    assert first.created and not again.created
    assert again.bytes_sent == 0
    assert again.info.generation == first.info.generation
    assert len(store.list("staging")) == 1
    # Still one object after it was promoted: a retried run finds it in the clean zone.
    store.promote("documents/x.pdf")
    late = store.upload("staging", "documents/x.pdf", source, idempotency_key="drop:x.pdf:abc")
    assert not late.created and late.info.zone == "clean"
    assert store.list("staging") == [] and len(store.list("clean")) == 1


def test_same_key_with_other_expected_content_is_refused(store) -> None:
    data = b"version one"
    store.upload(
        "staging", "s.bin", io.BytesIO(data), idempotency_key="s", expected_sha256=hashlib.sha256(data).hexdigest()
    )
    other = hashlib.sha256(b"version two").hexdigest()
    with pytest.raises(ChecksumMismatch, match="already holds this upload id with other content"):
        store.upload("staging", "s.bin", io.BytesIO(b"version two"), idempotency_key="s", expected_sha256=other)
    assert store.read("staging", "s.bin") == data


def test_other_content_under_a_taken_name_is_a_conflict(store) -> None:
    store.upload("staging", "n.bin", io.BytesIO(b"one"), idempotency_key="k-one")
    with pytest.raises(NameConflict, match=r"staging/n\.bin: already holds another upload"):
        store.upload("staging", "n.bin", io.BytesIO(b"two"), idempotency_key="k-two")
    assert store.read("staging", "n.bin") == b"one"


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_interrupted_resumable_upload_resumes_from_last_confirmed_chunk(kind: str, store_factory) -> None:
    data = payload(5 * CHUNK + 999, seed=4)
    fail_at = 2 * CHUNK + CHUNK // 2  # dies while reading the third chunk
    crashed = store_factory(kind)
    with pytest.raises(ConnectionResetError):
        crashed.upload("staging", "big.bin", FailingStream(data, fail_at), idempotency_key="big", metadata=META)
    assert not crashed.exists("staging", "big.bin")
    # A new process: a new store over the same root / bucket and resume directory.
    store = store_factory(kind)
    resumed = store.upload("staging", "big.bin", io.BytesIO(data), idempotency_key="big", metadata=META)
    assert resumed.created
    assert resumed.resumed_from == 2 * CHUNK
    first_attempt_sent = 2 * CHUNK
    assert first_attempt_sent + resumed.bytes_sent <= len(data) + CHUNK
    assert resumed.bytes_sent == len(data) - 2 * CHUNK
    assert store.read("staging", "big.bin") == data
    assert resumed.info.sha256 == hashlib.sha256(data).hexdigest()
    assert resumed.info.crc32c == expected_sums(data)[0]
    assert resumed.info.metadata["upload_id"] == upload_id_for("big")


def test_no_overwrite_precondition_when_a_writer_races(store) -> None:
    """Another writer stores the name between the existence check and the write: the backend refuses."""
    from components.ingest.storage.base import AlreadyExists

    store.upload("staging", "race.bin", io.BytesIO(b"winner"), idempotency_key="winner")
    entry = {"upload_id": upload_id_for("loser"), "state": "uploaded"}
    with pytest.raises(AlreadyExists):
        store._write("staging", "race.bin", io.BytesIO(b"loser"), 5, upload_id_for("loser"), entry, "text/plain")
    assert store.read("staging", "race.bin") == b"winner"


def test_local_resumable_publish_never_overwrites(tmp_path: Path) -> None:
    from components.ingest.storage.base import AlreadyExists

    store = LocalZoneStore(tmp_path / "zones", chunk_bytes=CHUNK, resumable_threshold=CHUNK)
    store.upload("staging", "big.bin", io.BytesIO(b"first"), idempotency_key="first")
    data = payload(2 * CHUNK + 1)
    with pytest.raises(AlreadyExists):
        store._write("staging", "big.bin", io.BytesIO(data), len(data), "u" * 32, {}, "application/octet-stream")
    assert store.read("staging", "big.bin") == b"first"


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_resume_record_behind_the_backend_never_yields_a_corrupt_object(kind: str, store_factory, tmp_path) -> None:
    """A crash after a chunk was stored but before its confirmation was recorded: that chunk is sent again.

    The local store truncates the part to the last recorded chunk and succeeds. Real GCS ignores bytes it
    already holds; fake-gcs-server appends them, which the post-upload CRC32C check catches (the object is
    removed and a clear error raised). Either way no corrupt object survives.
    """
    import json

    data = payload(4 * CHUNK + 5, seed=6)
    store = store_factory(kind)
    with pytest.raises(ConnectionResetError):
        store.upload("staging", "lag.bin", FailingStream(data, 2 * CHUNK + 1), idempotency_key="lag")
    uid = upload_id_for("lag")
    if kind == "local":
        chunks = tmp_path / "zones" / "staging" / ".uploads" / f"{uid}.chunks"
        chunks.write_text(chunks.read_text().splitlines()[0] + "\n")
    else:
        record_path = tmp_path / "resume" / f"{uid}.json"
        record = json.loads(record_path.read_text())
        record["confirmed"] = CHUNK
        record_path.write_text(json.dumps(record))
    try:
        result = store.upload("staging", "lag.bin", io.BytesIO(data), idempotency_key="lag")
    except ChecksumMismatch:
        assert kind == "gcs"
        assert not store.exists("staging", "lag.bin")
        result = store.upload("staging", "lag.bin", io.BytesIO(data), idempotency_key="lag")
        assert result.resumed_from == 0
    else:
        assert result.resumed_from == CHUNK
    assert store.read("staging", "lag.bin") == data


def test_expired_gcs_session_fails_clearly_then_starts_over(store_factory, tmp_path) -> None:
    import json

    store = store_factory("gcs")
    data = payload(3 * CHUNK, seed=7)
    with pytest.raises(ConnectionResetError):
        store.upload("staging", "e.bin", FailingStream(data, CHUNK + 1), idempotency_key="e")
    record_path = tmp_path / "resume" / f"{upload_id_for('e')}.json"
    record = json.loads(record_path.read_text())
    record["session_url"] = record["session_url"].replace("upload_id=", "upload_id=expired")
    record_path.write_text(json.dumps(record))
    with pytest.raises(StorageError, match="session expired or was cancelled; upload again"):
        store.upload("staging", "e.bin", io.BytesIO(data), idempotency_key="e")
    assert not record_path.exists()
    again = store.upload("staging", "e.bin", io.BytesIO(data), idempotency_key="e")
    assert again.resumed_from == 0 and store.read("staging", "e.bin") == data


def test_verify_rechecks_stored_bytes(store) -> None:
    store.upload("staging", "v.bin", io.BytesIO(b"verify me"), idempotency_key="v")
    assert store.verify("staging", "v.bin").sha256 == hashlib.sha256(b"verify me").hexdigest()


def test_resume_with_changed_source_is_a_checksum_mismatch(store) -> None:
    data = payload(4 * CHUNK, seed=5)
    with pytest.raises(ConnectionResetError):
        store.upload("staging", "c.bin", FailingStream(data, 2 * CHUNK + 1), idempotency_key="c")
    changed = b"X" + data[1:]
    with pytest.raises(ChecksumMismatch, match=r"staging/c\.bin"):
        store.upload("staging", "c.bin", io.BytesIO(changed), idempotency_key="c")
    assert not store.exists("staging", "c.bin")
    # The failed attempt left nothing behind: a fresh upload of the new bytes starts over and succeeds.
    fresh = store.upload("staging", "c.bin", io.BytesIO(changed), idempotency_key="c")
    assert fresh.resumed_from == 0 and store.read("staging", "c.bin") == changed


def test_expected_sha256_mismatch_is_detected_and_nothing_kept(store) -> None:
    with pytest.raises(ChecksumMismatch, match="SHA-256 of the uploaded bytes differs"):
        store.upload("staging", "m.bin", io.BytesIO(b"payload"), idempotency_key="m", expected_sha256="0" * 64)
    assert store.find("m.bin") is None


def test_promote_and_quarantine_move_objects_and_carry_metadata(store) -> None:
    store.upload("staging", "good.ndjson", io.BytesIO(b'{"a":1}\n'), idempotency_key="g", metadata=META)
    store.upload("staging", "bad.dcm", io.BytesIO(b"not dicom"), idempotency_key="b", metadata=META)
    clean = store.promote("good.ndjson")
    assert clean.zone == "clean" and clean.metadata["state"] == "promoted"
    assert clean.metadata["original_name"] == META["original_name"]
    assert clean.metadata["upload_id"] == upload_id_for("g")
    assert store.read("clean", "good.ndjson") == b'{"a":1}\n'
    assert not store.exists("staging", "good.ndjson")
    assert store.promote("good.ndjson").zone == "clean"  # a retried promote is a no-op

    held = store.quarantine("bad.dcm", "not_dicom", "The file has no DICOM preamble.")
    assert held.zone == "quarantine"
    assert held.metadata["state"] == "quarantined"
    assert held.metadata["reason_code"] == "not_dicom"
    assert held.metadata["reason"] == "The file has no DICOM preamble."
    assert held.sha256 == hashlib.sha256(b"not dicom").hexdigest()
    assert [i.name for i in store.list("quarantine")] == ["bad.dcm"]
    assert store.list("staging") == []
    with pytest.raises(ObjectNotFound):
        store.quarantine("missing.dcm", "not_dicom", "Missing.")


def test_names_and_zones_are_checked(store) -> None:
    for bad in ["../etc/passwd", "/abs", "a//b", ".uploads/x", "a/.meta/b", ""]:
        with pytest.raises(StorageError, match="not a safe relative name"):
            store.upload("staging", bad, io.BytesIO(b"x"), idempotency_key="k")
    with pytest.raises(StorageError, match="unknown zone"):
        store.upload("public", "a.bin", io.BytesIO(b"x"), idempotency_key="k")
    with pytest.raises(StorageError, match="metadata key 'state'"):
        store.upload("staging", "a.bin", io.BytesIO(b"x"), idempotency_key="k", metadata={"state": "clean"})


def test_download_detects_changed_bytes(tmp_path: Path) -> None:
    store = LocalZoneStore(tmp_path / "zones")
    store.upload("clean", "f.bin", io.BytesIO(b"original"), idempotency_key="f")
    (tmp_path / "zones" / "clean" / "f.bin").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="downloaded bytes do not match"):
        store.download_to("clean", "f.bin", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "out.bin.partial").exists()


def test_local_crash_leftovers_are_ignored_by_list(tmp_path: Path) -> None:
    store = LocalZoneStore(tmp_path / "zones", chunk_bytes=CHUNK, resumable_threshold=CHUNK)
    with pytest.raises(ConnectionResetError):
        store.upload("staging", "p.bin", FailingStream(payload(3 * CHUNK), CHUNK + 1), idempotency_key="p")
    part = tmp_path / "zones" / "staging" / ".uploads" / f"{upload_id_for('p')}.part"
    assert part.stat().st_size == CHUNK
    assert store.list("staging") == []
    data = payload(3 * CHUNK)
    assert store.upload("staging", "p.bin", io.BytesIO(data), idempotency_key="p").resumed_from == CHUNK
    assert not part.exists()
    # Leftovers of a crash after publishing: the next retry returns the object and drops them.
    part.write_bytes(b"stale")
    part.with_suffix(".chunks").write_text("")
    assert not store.upload("staging", "p.bin", io.BytesIO(data), idempotency_key="p").created
    assert not part.exists() and not part.with_suffix(".chunks").exists()


def test_open_zone_store_uris(tmp_path: Path, gcs_client) -> None:
    assert isinstance(open_zone_store(tmp_path / "a"), LocalZoneStore)
    local = open_zone_store(f"file://{tmp_path}/b")
    assert isinstance(local, LocalZoneStore) and local.root == tmp_path / "b"
    gcs_client.create_bucket("uri-bucket")
    gcs = open_zone_store("gs://uri-bucket/some/prefix", resume_dir=tmp_path / "r")
    assert gcs.uri == "gs://uri-bucket/some/prefix"
    gcs.upload("staging", "x.bin", io.BytesIO(b"x"), idempotency_key="x")
    assert [b.name for b in gcs_client.list_blobs("uri-bucket")] == ["some/prefix/staging/x.bin"]
    with pytest.raises(StorageError, match="unsupported store URI"):
        open_zone_store("s3://bucket/x")
    with pytest.raises(StorageError, match="needs a bucket"):
        open_zone_store("gs:///x")


def test_gcs_chunk_size_must_be_a_multiple_of_256_kib(gcs_client) -> None:
    from components.ingest.storage.gcs import GCSZoneStore

    with pytest.raises(StorageError, match="multiple of 262144"):
        GCSZoneStore("b", client=gcs_client, chunk_bytes=1000)


def test_local_signed_urls_need_gcs(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="signed upload URLs need a GCS store"):
        LocalZoneStore(tmp_path).signed_upload_url("a.pdf", content_type="application/pdf")


def test_resume_record_is_private(tmp_path: Path, store_factory) -> None:
    store = store_factory("gcs")
    with pytest.raises(ConnectionResetError):
        store.upload("staging", "r.bin", FailingStream(payload(3 * CHUNK), CHUNK + 1), idempotency_key="r")
    record = tmp_path / "resume" / f"{upload_id_for('r')}.json"
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "resume").stat().st_mode & 0o777) == "0o700"
    assert os.path.getsize(record) > 0
