"""Sniffing, streaming limits, the dispatcher's safety net and synthetic determinism."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from clinflow.synthetic.device_logs import generate_device_logs
from clinflow.synthetic.documents import generate_documents
from components.ingest import lanes, sniff
from components.ingest.lanes.verdict import LaneVerdict
from components.ingest.limits import IngestLimits, check_gzip, check_zip


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00" * 128 + b"DICM" + b"\x02\x00", sniff.DICOM),
        (b"%PDF-1.7\n", sniff.PDF),
        (b"\x1f\x8b\x08\x00", sniff.GZIP),
        (b"PK\x03\x04", sniff.ZIP),
        (b'{"resourceType":"Patient"}\n{"resourceType":"Patient"}\n', sniff.NDJSON),
        (b'{\n  "resourceType": "Bundle"\n}\n', sniff.JSON),
        (b"device_id,patient_mrn,timestamp\nA,B,C\n", sniff.CSV),
        (b"Hello, this is a sentence with a comma.\n", sniff.TEXT),
        (b"\x7fELF\x02\x01", sniff.ELF),
        (b"MZ\x90\x00", sniff.PE),
        (b"#!/bin/bash\n", sniff.SCRIPT),
        (b"  <!doctype html><html>", sniff.HTML),
        (b"\x89PNG\r\n\x1a\n", sniff.PNG),
        (b"\xff\xd8\xff\xe0", sniff.JPEG),
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", sniff.DICOM_NO_PREAMBLE),
        (b"\x00\x01\x02\x03" * 64, sniff.BINARY),
        (b"", sniff.EMPTY),
    ],
)
def test_sniff_bytes(head: bytes, expected: str) -> None:
    assert sniff.sniff_bytes(head, complete=True) == expected


def test_sniff_ignores_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"%PDF-1.4\n%%EOF\n")
    assert sniff.sniff_file(path) == sniff.PDF
    assert sniff.expected_types(path) == frozenset({sniff.DICOM, sniff.DICOM_NO_PREAMBLE})


def test_gzip_bomb_is_stopped_early_by_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as handle:
        for _ in range(32):  # 32 MiB of zeros, ~32 KB compressed
            handle.write(compressor.compress(bytes(1 << 20)))
        handle.write(compressor.flush())
    finding = check_gzip(path, IngestLimits(ratio_floor_bytes=1 << 20))
    assert finding is not None and finding.code == "decompression_bomb"
    absolute = check_gzip(path, IngestLimits(max_ratio=1e9, max_decompressed_bytes=4 << 20))
    assert absolute is not None and absolute.code == "decompression_bomb"


def test_gzip_multi_member_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 1000))
    assert check_gzip(path) is None
    cut = tmp_path / "cut.gz"
    cut.write_bytes(path.read_bytes()[:-10])
    finding = check_gzip(cut)
    assert finding is not None and finding.code == "truncated_gzip"


def test_zip_entry_count_limit(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(20):
            archive.writestr(f"f{index}.txt", b"x")
    finding = check_zip(path, IngestLimits(max_zip_entries=10))
    assert finding is not None and finding.code == "too_many_entries"
    assert check_zip(path) is None


def test_validator_exception_becomes_validator_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path, content_type: str) -> LaneVerdict:
        raise RuntimeError("secret MRN-123 in message")

    monkeypatch.setitem(lanes.LANES, "pdf", broken)
    path = tmp_path / "doc.pdf"
    path.write_bytes(b"%PDF-1.4\n%%EOF\n")
    verdict = lanes.route(path)
    assert (verdict.outcome, verdict.reason_code) == ("quarantine", "validator_error")
    assert verdict.details == {"exception": "RuntimeError"}
    assert "MRN-123" not in verdict.reason


def test_unreadable_path_gives_a_verdict(tmp_path: Path) -> None:
    verdict = lanes.route(tmp_path / "missing.ndjson")
    assert verdict.outcome == "quarantine" and verdict.reason_code == "unreadable_file"


def test_synthetic_generators_are_deterministic(tmp_path: Path) -> None:
    mrns = ["111", "222", "333"]
    first = generate_device_logs(tmp_path / "a", mrns, seed=9, readings_per_patient=4, patients_per_file=2)
    second = generate_device_logs(tmp_path / "b", mrns, seed=9, readings_per_patient=4, patients_per_file=2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    patient = {
        "resourceType": "Patient",
        "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "M-42"}],
        "name": [{"given": ["Ada"], "family": "Lovelace"}],
        "telecom": [{"system": "phone", "value": "555-010-0101"}],
        "address": [{"line": ["1 Main St"], "city": "Boston", "state": "MA", "postalCode": "02101"}],
        "birthDate": "1950-01-02",
    }
    docs_a = generate_documents(tmp_path / "da", [patient], seed=1)
    docs_b = generate_documents(tmp_path / "db", [patient], seed=1)
    assert [p.read_bytes() for p in docs_a] == [p.read_bytes() for p in docs_b]
