"""Byte-range reading of NDJSON inputs: every line once, with its whole-file line number."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from components.deidentify.pipeline import PlanChunks, ReadNumberedLines


def read_all(path: Path, chunk_bytes: int, block_bytes: int = 5) -> tuple[list[tuple[int, bytes]], int, int]:
    ranges = list(PlanChunks(chunk_bytes, block_bytes).process(str(path)))
    reader = ReadNumberedLines()
    reader.start_bundle()
    lines = [line for range_ in ranges for _, batch in reader.process(range_) for line in batch]
    return lines, len(ranges), reader._stats["blank_lines"]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("final_newline", [True, False])
def test_ranges_give_every_line_once_with_its_number(tmp_path: Path, chunk_bytes: int, final_newline: bool) -> None:
    body = [f'{{"resourceType":"Observation","id":"o{n}","pad":"{"x" * (n % 13)}"}}' for n in range(300)]
    body[17] = ""
    body[150] = "   "
    text = "\n".join(body) + ("\n" if final_newline else "")
    path = tmp_path / "Observation.000.ndjson"
    path.write_text(text)
    expected = [(n, line.encode() + b"\n") for n, line in enumerate(body, start=1) if line.strip()]
    if not final_newline:
        expected[-1] = (expected[-1][0], expected[-1][1].rstrip(b"\n"))
    lines, ranges, blank = read_all(path, chunk_bytes)
    assert lines == expected
    assert blank == 2
    assert (ranges == 1) if chunk_bytes >= len(text) else (ranges > 1)


def test_gzip_is_one_range_and_empty_file_none(tmp_path: Path) -> None:
    path = tmp_path / "Patient.000.ndjson.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('{"resourceType":"Patient","id":"a"}\n{"resourceType":"Patient","id":"b"}\n')
    lines, ranges, _ = read_all(path, 1)
    assert ranges == 1 and [n for n, _ in lines] == [1, 2]
    empty = tmp_path / "Condition.000.ndjson"
    empty.write_bytes(b"")
    assert list(PlanChunks(1).process(str(empty))) == []
