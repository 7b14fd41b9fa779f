"""SQLite lookup files (``components.deidentify.lookup_files``): parts, merge, read-back."""

from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from components.deidentify.free_text import KnownIdentifiers
from components.deidentify.lookup_files import LookupFile, LookupReader, WriteLookupPartsFn, merge_lookup_parts
from components.deidentify.pipeline import known_of, merge_known


def _join_sorted(values: list[bytes]) -> bytes:
    return b"+".join(sorted(values))


def _write_part(parts_dir: Path, pairs: list[tuple[str, bytes]]) -> list[str]:
    """Runs one bundle of the DoFn by hand; returns the paths it yielded."""
    writer = WriteLookupPartsFn(str(parts_dir), "test")
    writer.start_bundle()
    for pair in pairs:
        list(writer.process(pair) or ())
    return [windowed.value for windowed in writer.finish_bundle()]


def test_parts_merge_into_one_row_per_key_and_are_deleted(tmp_path: Path) -> None:
    parts_dir = tmp_path / "parts"
    first = _write_part(parts_dir, [("p1", b"a"), ("p2", b"b"), ("p1", b"c")])
    second = _write_part(parts_dir, [("p2", b"d"), ("p3", b"e")])
    assert len(first) == len(second) == 1 and all(os.path.exists(path) for path in first + second)

    lookup = merge_lookup_parts(first + second, str(tmp_path / "lookup.sqlite"), _join_sorted)

    assert lookup == LookupFile(str(tmp_path / "lookup.sqlite"), keys=3, merged_keys=2)
    assert not any(os.path.exists(path) for path in first + second)
    reader = LookupReader().use(lookup)
    try:
        assert reader.get("p1") == b"a+c"
        assert reader.get("p2") == b"b+d"
        assert reader.get("p3") == b"e"
        assert reader.get("p4") is None and reader.get(None) is None
    finally:
        reader.close()


def test_a_bundle_without_pairs_writes_no_part_and_no_parts_give_an_empty_lookup(tmp_path: Path) -> None:
    assert _write_part(tmp_path / "parts", []) == []
    lookup = merge_lookup_parts([], str(tmp_path / "empty.sqlite"), _join_sorted)
    assert (lookup.keys, lookup.merged_keys) == (0, 0)
    reader = LookupReader().use(lookup)
    assert reader.get("anything") is None
    reader.close()


def test_more_pairs_than_one_insert_batch_all_arrive(tmp_path: Path) -> None:
    pairs = [(f"patient-{number:06d}", str(number).encode()) for number in range(25_003)]
    parts = _write_part(tmp_path / "parts", pairs)
    lookup = merge_lookup_parts(parts, str(tmp_path / "lookup.sqlite"), _join_sorted)
    assert lookup.keys == 25_003
    reader = LookupReader().use(lookup)
    assert reader.get("patient-000000") == b"0" and reader.get("patient-025002") == b"25002"
    reader.close()


def test_the_reader_switches_files_and_reads_nothing_before_use(tmp_path: Path) -> None:
    reader = LookupReader()
    assert reader.get("p1") is None
    one = merge_lookup_parts(_write_part(tmp_path / "a", [("p1", b"one")]), str(tmp_path / "1.sqlite"), _join_sorted)
    two = merge_lookup_parts(_write_part(tmp_path / "b", [("p1", b"two")]), str(tmp_path / "2.sqlite"), _join_sorted)
    assert reader.use(one).get("p1") == b"one"
    assert reader.use(two).get("p1") == b"two"
    reader.close()
    assert reader.get("p1") is None


def test_known_identifiers_of_a_patient_listed_twice_are_merged_in_the_lookup(tmp_path: Path) -> None:
    """The stage's use: encoded KnownIdentifiers, merged with ``merge_known`` when an id repeats."""
    first = KnownIdentifiers(names=("Ada Lovelace",), identifiers=("MRN-1",))
    second = KnownIdentifiers(names=("Ada King",), telecom=("555-0100",))
    with beam.Pipeline() as pipeline:
        lookups = (
            pipeline
            | beam.Create([("p1", first.to_bytes()), ("p2", second.to_bytes()), ("p1", second.to_bytes())])
            | beam.ParDo(WriteLookupPartsFn(str(tmp_path / "parts"), "known"))
            | beam.combiners.ToList()
            | beam.Map(merge_lookup_parts, str(tmp_path / "known.sqlite"), merge_known)
        )
        assert_that(lookups | beam.Map(lambda lookup: (lookup.keys, lookup.merged_keys)), equal_to([(2, 1)]))
    reader = LookupReader().use(LookupFile(str(tmp_path / "known.sqlite"), 2, 1))
    merged = known_of(reader, "p1")
    assert merged is not None
    assert set(merged.names) == {"Ada Lovelace", "Ada King"}
    assert set(merged.identifiers) == {"MRN-1"} and set(merged.telecom) == {"555-0100"}
    assert known_of(reader, "p2") == second and known_of(reader, "nobody") is None
    reader.close()
    assert list((tmp_path / "parts").iterdir()) == []


@pytest.mark.parametrize("key", ["", "ünïcödé-id", "with'quote", "x" * 300])
def test_any_text_key_round_trips(tmp_path: Path, key: str) -> None:
    parts = _write_part(tmp_path / "parts", [(key, b"\x00\xffvalue")])
    reader = LookupReader().use(merge_lookup_parts(parts, str(tmp_path / "l.sqlite"), _join_sorted))
    assert reader.get(key) == b"\x00\xffvalue"
    reader.close()


def test_a_text_lookup_reads_like_the_dict_it_replaces(tmp_path: Path) -> None:
    """The lanes' crosswalk: identifier value -> smallest Patient id, read through ``Mapping`` methods."""
    from components.deidentify.lookup_files import TextLookup
    from components.deidentify.pipeline import smallest_patient_id

    links = [("MRN-1", b"patient-b"), ("MRN-2", b"patient-c"), ("MRN-1", b"patient-a")]
    parts = _write_part(tmp_path / "parts", links)
    lookup = merge_lookup_parts(parts, str(tmp_path / "links.sqlite"), smallest_patient_id)
    reader = LookupReader().use(lookup)
    crosswalk = TextLookup(reader, lookup.keys)
    expected = {"MRN-1": "patient-a", "MRN-2": "patient-c"}
    assert dict(crosswalk) == expected and len(crosswalk) == 2
    assert crosswalk.get("MRN-1") == "patient-a" and crosswalk.get("MRN-9") is None
    assert "MRN-2" in crosswalk and "MRN-9" not in crosswalk
    with pytest.raises(KeyError):
        crosswalk["MRN-9"]
    reader.close()


def test_files_are_built_in_the_scratch_directory_and_nothing_else_is_left(tmp_path: Path) -> None:
    """Lookups hold identifiers: they are built where the stage's cleanup reaches, and no temp file stays."""
    scratch = tmp_path / "scratch"
    parts = _write_part(scratch / "parts", [("p1", b"a"), ("p2", b"b")])
    assert [Path(path).parent for path in parts] == [scratch / "parts"]
    merge_lookup_parts(parts, str(scratch / "lookup.sqlite"), _join_sorted)
    assert sorted(path.name for path in scratch.rglob("*") if path.is_file()) == ["lookup.sqlite"]


def test_a_bundle_that_fails_before_it_finishes_leaves_no_part(tmp_path: Path) -> None:
    writer = WriteLookupPartsFn(str(tmp_path / "parts"), "test")
    writer.start_bundle()
    for number in range(25_000):  # past one insert batch: the part exists on disk
        list(writer.process((f"p{number}", b"identifier")) or ())
    assert list((tmp_path / "parts").iterdir())
    writer.teardown()  # the runner tears the DoFn down without finish_bundle
    assert list((tmp_path / "parts").iterdir()) == []


def test_a_failed_merge_leaves_neither_staging_nor_result(tmp_path: Path) -> None:
    parts = _write_part(tmp_path / "parts", [("p1", b"a")]) + _write_part(tmp_path / "parts", [("p1", b"b")])

    def refuse(values: list[bytes]) -> bytes:
        raise ValueError("cannot merge")

    with pytest.raises(ValueError, match="cannot merge"):
        merge_lookup_parts(parts, str(tmp_path / "out" / "lookup.sqlite"), refuse)
    assert list((tmp_path / "out").iterdir()) == []
