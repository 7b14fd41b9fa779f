"""Unit tests of the residual-PHI scan (values of every resource, Bloom filter + exact confirmation)."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from clinflow.synthetic import generate_fhir_bulk
from components.deidentify.phi_scan import (
    Bloom,
    confirm,
    extract_entries,
    line_candidates,
    line_candidates_bytes,
    resource_phi,
    scan_lines_exact,
    searchable,
    seq_key,
    tokens,
)
from components.deidentify.pipeline import BLOOM_BITS_PER_RESOURCE, MAX_BLOOM_BITS, bloom_bits

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "3f0c-77aa",
    "identifier": [{"value": "999-12-3456"}, {"value": "MRN00042"}],
    "name": [{"family": "Quixote", "given": ["Zelda", "Ann"]}],
    "telecom": [{"system": "email", "value": "zq@example.org"}],
    "address": [{"line": ["12 Windmill Lane"], "city": "La Mancha", "state": "MA"}],
    "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Brisk"}],
    "contact": [{"name": {"family": "Panza"}}],
}
PRACTITIONER: dict[str, Any] = {
    "resourceType": "Practitioner",
    "id": "pr-77",
    "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999912345"}],
    "name": [{"family": "Casey", "given": ["Benedict"]}],
    "address": [{"line": ["1 Hospital Way"], "city": "Springfield"}],
}
ORGANIZATION = {"resourceType": "Organization", "id": "org-1", "name": "Valley Primary Care Associates"}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "obs-1",
    "subject": {"reference": "urn:uuid:5e1d7a44-aaaa"},
    "device": {"reference": "Device/d1"},
}


def scan(lines: list[str], *resources: dict[str, Any]) -> Counter[str]:
    values = [value for resource in resources for value in resource_phi(resource)]
    return scan_lines_exact(lines, values)


def test_collects_values_of_every_resource_type_by_category() -> None:
    values = Counter(category for category, _ in resource_phi(PATIENT))
    assert values == Counter(ids=1, identifiers=2, names=5, telecom=1, addresses=2, maiden_names=1)
    assert ("names", "Zelda Ann Quixote") in set(resource_phi(PATIENT))
    assert {("names", "Benedict Casey"), ("identifiers", "9999912345"), ("addresses", "Springfield")} <= set(
        resource_phi(PRACTITIONER)
    )
    assert ("names", "Valley Primary Care Associates") in set(resource_phi(ORGANIZATION))
    assert {("ids", "obs-1"), ("ids", "5e1d7a44-aaaa")} <= set(resource_phi(OBSERVATION))


def test_finds_values_in_any_separator_and_case() -> None:
    assert scan(['{"x":"quixote"}'], PATIENT) == Counter({"hits\tline\tnames": 1})
    assert scan(['{"ssn":"999 12 3456"}'], PATIENT) == Counter({"hits\tline\tidentifiers": 1})
    assert scan(['{"line":"12 WINDMILL lane"}'], PATIENT) == Counter({"hits\tline\taddresses": 1})
    assert scan(['{"ref":"Patient/3f0c-77aa"}'], PATIENT) == Counter({"hits\tline\tids": 1})
    assert scan(['{"x":"npi 9999912345 and 5e1d7a44-aaaa"}'], PRACTITIONER, OBSERVATION) == Counter(
        {"hits\tline\tidentifiers": 1, "hits\tline\tids": 1}
    )


def test_does_not_match_inside_longer_tokens_or_partial_phrases() -> None:
    assert scan(['{"code":"Annual check-up; Quixotes"}'], PATIENT) == Counter()
    assert scan(['{"line":"12 Windmill Road"}'], PATIENT) == Counter()
    assert scan(['{"value":"999-12-3457"}'], PATIENT) == Counter()


def test_short_values_are_not_searched() -> None:
    assert searchable("J") is None and searchable("Jo") == ("jo",)
    assert searchable("12") is None  # a lone short number (street number, sequence) is not searchable
    assert searchable("12 Main St") == ("12", "main", "st")


def test_tokens_split_on_ascii_punctuation_and_keep_accented_letters() -> None:
    assert tokens("Véliz-O'Brien_42") == ["véliz", "o", "brien", "42"]


def test_single_word_names_inside_vocabulary_or_free_text_are_exempt_not_leaks() -> None:
    white = dict(PATIENT, name=[{"family": "White", "given": ["Zelda"]}])
    race = {"url": "text", "valueString": "White", "valueCoding": {"code": "2106-3", "display": "White"}}
    assert scan([orjson.dumps(race).decode()], white) == Counter(vocabulary_matches=2)
    assert scan(['{"code":"white"}'], white) == Counter({"hits\tline\tnames": 1})
    assert scan(['{"text":"seen by Zelda White"}'], white)["hits\tline\tnames"] == 1  # full name never exempt
    assert scan(['{"text":"ssn 999-12-3456"}'], white) == Counter({"hits\tline\tidentifiers": 1})


def test_base64_attachment_data_is_decoded_and_scanned() -> None:
    data = base64.b64encode(b"Patient Zelda Ann Quixote, MRN00042").decode()
    line = orjson.dumps({"content": [{"attachment": {"contentType": "text/plain", "data": data}}]}).decode()
    hits = scan([line], PATIENT)
    assert hits["hits\tline\tnames"] >= 1 and hits["hits\tline\tidentifiers"] == 1


def test_bloom_false_positives_are_not_hits() -> None:
    bloom = Bloom.empty(64, 1)
    bloom.add_sequence(("quixote",))
    bloom.array = bytearray(b"\xff" * 8)  # saturated: every sequence is a Bloom positive
    candidates = list(line_candidates('{"x":"windmil"}', bloom))
    assert candidates  # positives from the saturated filter ...
    assert confirm([], [("line", flag, n, 1) for _, flag, n in candidates]) == Counter()  # ... confirmed as none
    assert confirm(["names"], [("line", "strict", 1, 1)]) == Counter({"hits\tline\tnames": 1})


def test_candidates_counted_together_confirm_as_many_hits_as_their_occurrences() -> None:
    counted = [("Encounter", "strict", 1, 5), ("Condition", "coded", 1, 17_065), ("Note", "vocabulary", 1, 2)]
    assert confirm(["identifiers", "names"], counted) == Counter(
        {
            "hits\tEncounter\tidentifiers": 5,
            "hits\tEncounter\tnames": 5,
            "coded_matches": 2 * 17_065,
            "vocabulary_matches": 2,  # names may be a vocabulary word (race display "White") ...
            "hits\tNote\tidentifiers": 2,  # ... identifiers may not
        }
    )
    assert seq_key(("a", "b")) != seq_key(("ab",))


def test_bloom_merge_is_a_union() -> None:
    first, second = Bloom.empty(1 << 12, 5), Bloom.empty(1 << 12, 5)
    first.add_sequence(("zelda",))
    second.add_sequence(("quixote", "lane"))
    first.merge(second)
    assert list(first.candidates("Zelda at Quixote Lane")) == [("zelda",), ("quixote", "lane")]
    assert first.items == 2 and 0 < first.false_positive_rate() < 1e-6


def test_an_identifier_equal_to_a_whole_terminology_code_is_a_coded_match_not_a_hit() -> None:
    # Found at 30k generated patients: an 8-digit MRN that is also the SNOMED CT concept id of
    # "Streptococcal sore throat" failed the run on every Condition with that diagnosis.
    patient = {"resourceType": "Patient", "id": "p-1", "identifier": [{"value": "43878008"}]}

    def coding(system: str, code: str) -> str:
        condition = {"resourceType": "Condition", "code": {"coding": [{"system": system, "code": code}]}}
        return orjson.dumps(condition).decode()

    assert scan([coding("http://snomed.info/sct", "43878008")], patient) == Counter({"coded_matches": 1})
    assert scan([coding("http://loinc.org", "43878008")], patient) == Counter({"coded_matches": 1})
    # The same digits anywhere else stay hits: a local code system, part of a longer code, free text.
    assert scan([coding("urn:oid:1.2.3.4", "43878008")], patient) == Counter({"hits\tline\tidentifiers": 1})
    assert scan([coding("http://snomed.info/sct", "43878008-7")], patient) == Counter({"hits\tline\tidentifiers": 1})
    note = '{"resourceType":"Condition","note":[{"text":"MRN 43878008"}]}'
    assert scan([note], patient) == Counter({"hits\tline\tidentifiers": 1})


def test_bloom_merge_rejects_a_filter_of_another_size() -> None:
    first, second = Bloom.empty(1 << 12, 5), Bloom.empty(1 << 13, 5)
    with pytest.raises(ValueError, match="4096 and 8192 bits"):
        first.merge(second)


def test_false_positive_rate_is_the_fill_to_the_power_of_the_hashes() -> None:
    bloom = Bloom.empty(64, 3)
    bloom.array = bytearray(b"\xff\x0f" + b"\x00" * 6)  # 12 of 64 bits set
    assert bloom.false_positive_rate() == pytest.approx((12 / 64) ** 3)


def test_bloom_size_grows_with_the_input_above_the_policy_minimum() -> None:
    settings = {"bloom_bits": 1 << 20, "bloom_bits_per_resource": 64}
    assert bloom_bits(settings, 0) == 1 << 20  # small inputs: the policy's minimum
    assert bloom_bits(settings, 1_000_000) == 64_000_000  # then 64 bits per input resource
    assert bloom_bits({"bloom_bits": 1 << 20}, 1_000_000) == BLOOM_BITS_PER_RESOURCE * 1_000_000
    assert bloom_bits({"bloom_bits": 1000}, 0) % 64 == 0
    assert bloom_bits(settings, 10**12) == MAX_BLOOM_BITS


def test_json_escapes_are_decoded_before_matching() -> None:
    # A value right after an escaped newline, and a letter written as a \u escape, are still found.
    assert scan(['{"note":"seen\\nQuixote today"}'], PATIENT) == Counter({"hits\tline\tnames": 1})
    assert scan(['{"x":"Quix\\u006fte"}'], PATIENT) == Counter({"hits\tline\tnames": 1})
    assert scan(['{"x":"a\\\\nQuixote"}'], PATIENT) == Counter()  # an escaped backslash, then the letters "nQuixote"
    assert scan(["not json: ssn 999-12-3456"], PATIENT) == Counter({"hits\tline\tidentifiers": 1})


def test_bytes_and_str_lines_give_the_same_candidates() -> None:
    bloom = Bloom.empty(1 << 16, 5)
    for _, value in resource_phi(PATIENT):
        parts = searchable(value)
        if parts is not None:
            bloom.add_sequence(parts)
    lines = ['{"a":"Zelda Ann Quixote","display":"Quixote"}', '{"x":"La Mancha 12 Windmill Lane"}', "plain MRN00042"]
    for line in lines:
        assert list(line_candidates(line, bloom)) == line_candidates_bytes(line.encode(), bloom)
        assert line_candidates_bytes(line.encode(), bloom)


def test_every_planted_value_of_a_generated_dataset_is_found(tmp_path: Path) -> None:
    generate_fhir_bulk(tmp_path, patients=4, seed=7)
    values: dict[str, set[str]] = {}
    bloom = Bloom.empty(1 << 20, 7)
    for path in sorted(tmp_path.glob("*.ndjson")):
        for raw in path.read_bytes().splitlines():
            entries, _ = extract_entries(orjson.loads(raw), raw=raw)
            assert sorted(e[:2] for e in entries) == sorted(
                (seq_key(p), c) for c, v in resource_phi(orjson.loads(raw)) if (p := searchable(v)) is not None
            )
            for key, _, parts in entries:
                bloom.add_sequence(parts)
                values.setdefault(" ".join(parts), set()).add(key)
    assert len(values) > 50
    for text, keys in values.items():
        strict = orjson.dumps({"code": f"x-{text.upper()}-y", "status": "final"})
        vocabulary = orjson.dumps({"note": [{"text": f"Seen:\n{text}."}]})
        assert keys <= {key for key, flag, _ in line_candidates_bytes(strict, bloom) if flag == "strict"}
        assert keys <= {key for key, flag, _ in line_candidates_bytes(vocabulary, bloom) if flag == "vocabulary"}


def test_first_token_prefilter_never_skips_a_line_holding_the_value(tmp_path: Path) -> None:
    from components.deidentify.phi_scan import first_token_filter, may_hold_any, resource_phi_list, searchable

    generate_fhir_bulk(tmp_path, patients=4, seed=11)
    lines = [line for path in sorted(tmp_path.glob("*.ndjson")) for line in path.read_bytes().splitlines()]
    lines.append(b'{"resourceType":"Patient","id":"p","name":[{"family":"\\u0051uixote"}]}')
    lines.append('{"resourceType":"Patient","id":"q","name":[{"family":"ſmith"}]}'.encode())
    checked = 0
    for raw in lines:
        for _, value in resource_phi_list(orjson.loads(raw)):
            parts = searchable(value)
            if parts is not None:
                assert may_hold_any(raw, first_token_filter([parts[0].encode()])), value
                checked += 1
    assert checked > 100


def test_first_token_prefilter_skips_plain_lines_without_the_token() -> None:
    from components.deidentify.phi_scan import first_token_filter, may_hold_any

    pattern = first_token_filter([b"white", "é".encode()])
    assert may_hold_any(b'{"display":"WHITE"}', pattern)
    assert not may_hold_any(b'{"display":"Black"}', pattern)
    assert may_hold_any('{"display":"Noé"}'.encode(), pattern)  # not ASCII: always parsed
    assert may_hold_any(b'{"display":"a\\nb"}', pattern)  # escapes: always parsed
    assert not may_hold_any(b'{"display":"Black"}', first_token_filter(["é".encode()]))


def _sequences_of_generated_data(tmp_path: Path) -> list[tuple[str, ...]]:
    generate_fhir_bulk(tmp_path, patients=3, seed=5)
    lines = [line for path in sorted(tmp_path.glob("*.ndjson")) for line in path.read_bytes().splitlines()]
    found = [
        parts
        for raw in lines
        for _, value in resource_phi(orjson.loads(raw))
        if (parts := searchable(value)) is not None
    ]
    return found + found[:50]  # repeats: counted as items, hashed once


def test_add_sequences_sets_the_same_bits_and_counts_as_one_by_one(tmp_path: Path) -> None:
    sequences = _sequences_of_generated_data(tmp_path)
    for bits, hashes in ((1 << 20, 7), (1_000_003, 5), (4099, 3)):
        one_by_one, at_once = Bloom.empty(bits, hashes), Bloom.empty(bits, hashes)
        for parts in sequences:
            one_by_one.add_sequence(parts)
        half = len(sequences) // 2
        assert at_once.add_sequences(sequences[:half]) == half
        at_once.add_sequences(iter(sequences[half:]))
        at_once.add_sequences([])
        assert at_once.array == one_by_one.array
        assert (at_once.items, at_once.lengths, at_once.first_lengths) == (
            one_by_one.items,
            one_by_one.lengths,
            one_by_one.first_lengths,
        )


def test_bundle_parts_merge_into_the_filter_of_all_values(tmp_path: Path) -> None:
    from components.deidentify.pipeline import load_bloom, merge_bloom_parts, save_bloom

    sequences = _sequences_of_generated_data(tmp_path / "data")
    bits, hashes = (1 << 18) + 64, 7  # not a multiple of the merge block: the last block is short
    whole = Bloom.empty(bits, hashes)
    whole.add_sequences(sequences)
    parts = []
    for number, chunk in enumerate((sequences[:100], sequences[100:])):
        part = Bloom.empty(bits, hashes)
        part.add_sequences(chunk)
        parts.append(save_bloom(part, str(tmp_path / "parts" / f"{number}.bin")))
    merged = merge_bloom_parts(parts, str(tmp_path / "bloom.bin"), bits, hashes)
    assert load_bloom(merged).array == whole.array
    assert (merged.items, set(merged.lengths), set(merged.first_lengths)) == (
        whole.items,
        whole.lengths,
        whole.first_lengths,
    )
    assert merged.false_positive_ppm == round(whole.false_positive_rate() * 1e6)
    assert list((tmp_path / "parts").iterdir()) == []  # parts are deleted once merged
    empty = merge_bloom_parts([], str(tmp_path / "empty.bin"), bits, hashes)  # no searchable value at all
    assert load_bloom(empty).array == Bloom.empty(bits, hashes).array and empty.items == 0
    other = save_bloom(Bloom.empty(1 << 12, hashes), str(tmp_path / "other.bin"))
    with pytest.raises(ValueError, match="4096 bits/7 hashes, not 262208/7"):
        merge_bloom_parts([other], str(tmp_path / "x.bin"), bits, hashes)


def test_extract_fn_saves_one_part_per_bundle_with_every_value(tmp_path: Path) -> None:
    from components.deidentify.pipeline import ExtractPhiFn, load_bloom

    generate_fhir_bulk(tmp_path / "data", patients=3, seed=5)
    lines = [line for path in sorted((tmp_path / "data").glob("*.ndjson")) for line in path.read_bytes().splitlines()]
    extract = ExtractPhiFn(2, 1 << 18, 7, str(tmp_path / "parts"))
    extract.start_bundle()
    for start in range(0, len(lines), 7):
        batch = ("x.ndjson", list(enumerate(lines[start : start + 7])))
        assert list(extract.process(batch)) == []
    parts = [item.value for item in extract.finish_bundle() if not hasattr(item, "tag")]
    assert len(parts) == 1 and len(list((tmp_path / "parts").iterdir())) == 1
    expected = Bloom.empty(1 << 18, 7)
    expected.add_sequences(searchable(v) for raw in lines for _, v in resource_phi(orjson.loads(raw)) if searchable(v))
    assert load_bloom(parts[0]).array == expected.array and parts[0].items == expected.items


def test_bloom_filter_travels_as_a_file_and_reads_back_identical(tmp_path: Path) -> None:
    from components.deidentify.pipeline import load_bloom, save_bloom

    sequences = _sequences_of_generated_data(tmp_path)
    built = Bloom.empty(1 << 18, 7)
    built.add_sequences(sequences)
    saved = save_bloom(built, str(tmp_path / "bloom.bin"))
    assert (tmp_path / "bloom.bin").stat().st_size == (1 << 18) // 8
    assert (saved.bits, saved.hashes, saved.items) == (1 << 18, 7, len(sequences))
    assert saved.false_positive_ppm == round(built.false_positive_rate() * 1e6)
    loaded = load_bloom(saved)
    assert loaded.array == built.array
    assert (loaded.lengths, loaded.first_lengths) == (built.lengths, built.first_lengths)
    line = " ".join(" ".join(parts) for parts in sequences[:3])
    assert list(loaded.candidates(line)) == list(built.candidates(line))
    (tmp_path / "bloom.bin").write_bytes(b"\x00" * 10)  # truncated or replaced: refused
    with pytest.raises(ValueError, match="not the 262144 bits"):
        load_bloom(saved)


def test_sequence_found_after_earlier_occurrences_of_its_first_token() -> None:
    values = [("addresses", "1 Windmill Lane"), ("names", "Quixote")]
    line = '{"version":"1","n":1,"line":["1 WINDMILL lane"],"ids":["1-2-3"]}'
    assert scan([line]) == Counter()
    found = scan_lines_exact([line], values)
    assert found == Counter({"hits\tline\taddresses": 1})
    assert scan_lines_exact(['{"a":"1 windmill","b":"lane 1"}'], values) == Counter()


def test_first_token_filter_with_many_tokens_matches_as_the_few_token_filter() -> None:
    from components.deidentify.phi_scan import FEW_FIRST_TOKENS, first_token_filter, may_hold_any

    tokens = [f"tok{n}".encode() for n in range(FEW_FIRST_TOKENS + 5)]
    many = first_token_filter(tokens)
    assert many is not None and many.pattern is not None
    for token in tokens:
        few = first_token_filter([token])
        assert few is not None and few.pattern is None
        for raw in (b'{"a":"x' + token.upper() + b'y"}', b'{"a":"' + token + b'"}', b'{"a":"none"}'):
            assert may_hold_any(raw, few) == (token in raw.lower())
            assert may_hold_any(raw, many) == any(t in raw.lower() for t in tokens)
    assert not may_hold_any(b'{"a":"tok"}', many)
