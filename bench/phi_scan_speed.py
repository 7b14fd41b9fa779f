"""Residual-PHI scan speed: the current ``phi_scan`` functions vs a frozen copy of the previous ones, side by side.

Measured on the same data in one run (microseconds per item, single process):

* extraction per input resource: ``orjson.loads`` + every value's ``searchable`` + ``seq_key`` (old:
  ``resource_phi`` generator walk; new: ``extract_entries``, and ``resource_phi`` for comparison);
* Bloom build per value (``add_sequence``; and ``add_sequences`` on pipeline-sized batches, which must set
  the same bits);
* values per resource: ``resource_phi_list`` with the raw-line marker tests vs walking every object;
* the confirmation pass's first-token pre-filter per input line: one case-insensitive pattern vs
  ``may_hold_any`` (substring tests of the lower-cased line for few tokens);
* candidates per output line (old ``line_candidates(str)``; new ``line_candidates(str)`` and
  ``line_candidates_bytes(raw)``), after one warm-up pass per implementation (the per-worker caches
  are warm in a real scan after the first lines).

It also checks that both versions give the same values (multiset of ``(seq_key, category)``) and
the same candidates per line (multiset of ``(seq_key, flag, tokens)``) and prints any difference.

Output lines: the de-identified files of a real stage run (``--output``), else the input is
de-identified in process with ``components.deidentify.transform``.

    .venvs/platform/bin/python bench/phi_scan_speed.py                       # generates 500 patients
    .venvs/platform/bin/python bench/phi_scan_speed.py --input /tmp/g2000 --sample 4
    .venvs/platform/bin/python bench/phi_scan_speed.py --input /tmp/g500 --output /tmp/deid-out
"""

from __future__ import annotations

import argparse
import base64
import binascii
import glob
import hashlib
import os
import re
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from components.deidentify import phi_scan

BATCH_SEQUENCES = 1400  # about one pipeline batch of input lines (``BATCH_LINES``) worth of values

# ---------------------------------------------------------------------------------------------------
# Frozen copy of the previous implementation (components/deidentify/phi_scan.py before the speed-up).
# ---------------------------------------------------------------------------------------------------

MIN_TOKEN_CHARS = 2
MIN_DIGIT_TOKEN_CHARS = 5
MAX_SEQUENCE_TOKENS = 12
CACHE_LIMIT = 1 << 21  # distinct tokens remembered as Bloom-negative per worker before the cache is reset
MAIDEN_NAME_URL = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
URN_UUID = "urn:uuid:"

PHI_CATEGORIES = ("ids", "identifiers", "names", "telecom", "addresses", "maiden_names")
EXEMPTABLE_CATEGORIES = frozenset({"names", "addresses", "maiden_names"})
VOCABULARY_KEYS = frozenset(
    {"display", "text", "valueString", "description", "comment", "title", "summary", "conclusion"}
)
IDENTIFIER_LEAVES = frozenset({"serialNumber", "lotNumber", "distinctIdentifier"})
NAMED_ROOTS = frozenset({"Organization", "Location", "HealthcareService", "Group", "InsurancePlan", "Endpoint"})
STRICT = "strict"
VOCABULARY = "vocabulary"


# ASCII punctuation, controls and space become separators; UTF-8 bytes >= 0x80 stay token bytes,
# so non-ASCII letters (é, ß, ...) belong to tokens. bytes.translate + split run at C speed.
_SEPARATORS = bytes(b if chr(b).isalnum() or b >= 0x80 else 0x20 for b in range(256))


def tokens(text: str) -> list[str]:
    """Old: splits text into case-folded runs of letters and digits (ASCII punctuation separates)."""
    return text.casefold().encode("utf-8").translate(_SEPARATORS).decode("utf-8").split()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item


def _names(names: Any) -> Iterator[str]:
    for name in names if isinstance(names, list) else [names]:
        if isinstance(name, dict):
            family = list(_strings(name.get("family")))
            given = list(_strings(name.get("given")))
            yield from family
            yield from given
            yield from _strings(name.get("text"))
            if family and given:
                yield " ".join([*given, *family])  # the full name, never exempt (see scan_line)


def _telecom(points: Any) -> Iterator[str]:
    for point in points if isinstance(points, list) else [points]:
        if isinstance(point, dict):
            yield from _strings(point.get("value"))


def _addresses(addresses: Any) -> Iterator[str]:
    for address in addresses if isinstance(addresses, list) else [addresses]:
        if isinstance(address, dict):
            yield from _strings(address.get("line"))
            for part in ("city", "district", "text"):
                yield from _strings(address.get(part))


def _identifier_values(identifiers: Any) -> Iterator[str]:
    for identifier in identifiers if isinstance(identifiers, list) else [identifiers]:
        if isinstance(identifier, dict):
            yield from _strings(identifier.get("value"))


def _walk_phi(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """Yields PHI values found anywhere below one element (any resource type)."""
    if isinstance(value, list):
        for item in value:
            yield from _walk_phi(item, key)
        return
    if isinstance(value, str):
        if key == "reference" and value.startswith(URN_UUID):
            yield "ids", value[len(URN_UUID) :]
        elif key in IDENTIFIER_LEAVES:
            yield "identifiers", value
        return
    if not isinstance(value, dict):
        return
    url = value.get("url")
    if url == MAIDEN_NAME_URL:
        yield from (("maiden_names", v) for v in _strings(value.get("valueString")))
    elif url == BIRTH_PLACE_URL:
        yield from (("addresses", v) for v in _addresses(value.get("valueAddress")))
    for child_key, child in value.items():
        if child_key == "identifier" or child_key == "accessionIdentifier":
            yield from (("identifiers", v) for v in _identifier_values(child))
        elif child_key == "name" and isinstance(child, (dict, list)):
            yield from (("names", v) for v in _names(child))
        elif child_key == "telecom":
            yield from (("telecom", v) for v in _telecom(child))
        elif child_key == "address":
            yield from (("addresses", v) for v in _addresses(child))
        elif child_key == "udiCarrier":
            for carrier in child if isinstance(child, list) else [child]:
                if isinstance(carrier, dict):
                    for part in ("deviceIdentifier", "carrierHRF"):
                        yield from (("identifiers", v) for v in _strings(carrier.get(part)))
        if isinstance(child, (dict, list)) or child_key in ("reference", *IDENTIFIER_LEAVES):
            yield from _walk_phi(child, child_key)


def resource_phi(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yields ``(category, value)`` for every identifying value of one input resource.

    Args:
        resource: The original (not de-identified) resource.

    Yields:
        Category (one of ``PHI_CATEGORIES``) and the raw value.
    """
    yield from (("ids", value) for value in _strings(resource.get("id")))
    if resource.get("resourceType") in NAMED_ROOTS:
        yield from (("names", value) for value in _strings(resource.get("name")))
        yield from (("names", value) for value in _strings(resource.get("alias")))
    yield from _walk_phi(resource, "")


def patient_phi(patient: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yields ``(category, value)`` for one input Patient (kept for callers; see ``resource_phi``)."""
    yield from resource_phi(patient)


def searchable(value: str, min_token_chars: int = MIN_TOKEN_CHARS) -> tuple[str, ...] | None:
    """Returns the token sequence to search for, or None when the value is too short to search."""
    parts = tuple(tokens(value))
    if not parts:
        return None
    single = parts[0] if len(parts) == 1 else None
    if single is not None and (
        len(single) < min_token_chars or (single.isdigit() and len(single) < MIN_DIGIT_TOKEN_CHARS)
    ):
        return None
    return parts[:MAX_SEQUENCE_TOKENS]


def seq_key(parts: Iterable[str]) -> str:
    """The join key of a token sequence (128-bit blake2b hex)."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=16).hexdigest()


@lru_cache(maxsize=1 << 16)
def _positions(item: str, bits: int, hashes: int) -> tuple[int, ...]:
    """Bit positions of an item: double hashing over CRC-32 and Adler-32 (stable across processes)."""
    data = item.encode("utf-8")
    first = zlib.crc32(data) | (zlib.crc32(data[::-1]) << 32)
    second = (zlib.adler32(data) << 1) | 1
    return tuple((first + n * second) % bits for n in range(hashes))


@dataclass
class Bloom:
    """A fixed-size Bloom filter over first tokens (``f:``) and token sequences (``s:``).

    Attributes:
        bits: Filter size in bits.
        hashes: Number of bit positions per item.
        array: The bit array (``bits / 8`` bytes).
        lengths: The sequence lengths present (at most ``MAX_SEQUENCE_TOKENS`` values).
        first_lengths: The character lengths of first tokens present (a cheap pre-filter).
        items: Items added (for the false-positive estimate in the report).
    """

    bits: int
    hashes: int
    array: bytearray
    lengths: set[int]
    first_lengths: set[int]
    items: int = 0
    _negative: set[str] = field(default_factory=set, repr=False, compare=False)
    _positive: set[str] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def empty(cls, bits: int, hashes: int) -> Bloom:
        """A filter with no items."""
        return cls(bits, hashes, bytearray((bits + 7) // 8), set(), set())

    def _add(self, item: str) -> None:
        for position in _positions(item, self.bits, self.hashes):
            self.array[position >> 3] |= 1 << (position & 7)

    def _has(self, item: str) -> bool:
        array = self.array
        return all(array[p >> 3] & (1 << (p & 7)) for p in _positions(item, self.bits, self.hashes))

    def add_sequence(self, parts: tuple[str, ...]) -> None:
        """Adds one value's token sequence."""
        self._add("f:" + parts[0])
        self._add("s:" + "\x1f".join(parts))
        self.lengths.add(len(parts))
        self.first_lengths.add(len(parts[0]))
        self.items += 1

    def merge(self, other: Bloom) -> None:
        """ORs another filter of the same size into this one."""
        merged = int.from_bytes(self.array, "little") | int.from_bytes(other.array, "little")
        self.array = bytearray(merged.to_bytes(len(self.array), "little"))
        self.lengths |= other.lengths
        self.first_lengths |= other.first_lengths
        self.items += other.items

    def candidates(self, text: str) -> Iterator[tuple[str, ...]]:
        """Yields token sequences of ``text`` that may be indexed values (Bloom positives).

        Fast path: distinct tokens are filtered by the first-token lengths present (C-speed set
        and length checks skip, e.g., every 64-hex pseudonym), then by the first-token Bloom bits.
        """
        line = tokens(text)
        unique = set(line)
        new = unique - self._negative - self._positive
        if new:
            first_lengths = self.first_lengths
            found = {token for token in new if len(token) in first_lengths and self._has("f:" + token)}
            if len(self._negative) > CACHE_LIMIT:
                self._negative.clear()
            self._negative |= new - found
            self._positive |= found
        starts = unique & self._positive
        if not starts:
            return
        lengths = sorted(self.lengths)
        for position, token in enumerate(line):
            if token not in starts:
                continue
            for length in lengths:
                if position + length > len(line):
                    break
                parts = tuple(line[position : position + length])
                if self._has("s:" + "\x1f".join(parts)):
                    yield parts

    def false_positive_rate(self) -> float:
        """The estimated false-positive rate at the current fill."""
        filled = int.from_bytes(self.array, "little").bit_count() / self.bits
        return filled**self.hashes


def _blank_vocabulary(value: Any, kept: list[str], key: str = "") -> Any:
    """Copies a JSON value with vocabulary/free-text strings replaced by ``""`` (collected in ``kept``)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "data" and isinstance(v, str) and "contentType" in value:
                kept.append(_decoded(v))
                out[k] = ""
            else:
                out[k] = _blank_vocabulary(v, kept, k)
        return out
    if isinstance(value, list):
        return [_blank_vocabulary(v, kept, key) for v in value]
    if isinstance(value, str) and key in VOCABULARY_KEYS:
        kept.append(value)
        return ""
    return value


def _decoded(data: str) -> str:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return data


def line_candidates(line: str, bloom: Bloom) -> Iterator[tuple[str, str, int]]:
    """Yields ``(seq_key, flag, token count)`` for each Bloom-positive sequence of one output line.

    ``flag`` is ``"vocabulary"`` for sequences found only inside kept vocabulary, free text or a
    decoded attachment (single-word names/places there are exempt), ``"strict"`` otherwise.
    """
    if "contentType" not in line and next(bloom.candidates(line), None) is None:
        return
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, (dict, list)):
        for parts in bloom.candidates(line):
            yield seq_key(parts), STRICT, len(parts)
        return
    vocabulary: list[str] = []
    blanked = orjson.dumps(_blank_vocabulary(document, vocabulary)).decode("utf-8")
    for parts in bloom.candidates(blanked):
        yield seq_key(parts), STRICT, len(parts)
    for text in vocabulary:
        for parts in bloom.candidates(text):
            yield seq_key(parts), VOCABULARY, len(parts)


# ---------------------------------------------------------------------------------------------------


def read_lines(directory: str, sample: int) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(glob.glob(os.path.join(directory, "*.ndjson"))):
        with open(path, "rb") as handle:
            lines += [line for line in handle.read().splitlines() if line.strip()]
    return lines[::sample]


def deidentified(inputs: list[bytes]) -> list[bytes]:
    from components.deidentify.policy import load_policy, rules_of
    from components.deidentify.transform import deidentify_patient, deidentify_resource

    the_policy = load_policy()
    rules = rules_of(the_policy)
    key = b"k" * 32
    out = []
    for raw in inputs:
        resource = orjson.loads(raw)
        if resource.get("resourceType") == "Patient":
            result = deidentify_patient(resource, key, Counter(), "2025-01-01", rules, the_policy)
        else:
            result = deidentify_resource(resource, key, Counter(), rules, the_policy).resource
        out.append(orjson.dumps(result))
    return out


def per_item(seconds: float, items: int) -> float:
    return seconds / max(items, 1) * 1e6


def timed(function: Any, items: list[Any]) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    results = [function(item) for item in items]
    return time.perf_counter() - start, results


def old_extract(raw: bytes) -> list[tuple[str, str]]:
    out = []
    for category, value in resource_phi(orjson.loads(raw)):
        parts = searchable(value)
        if parts is not None:
            out.append((seq_key(parts), category))
    return out


def new_extract(raw: bytes) -> list[tuple[str, str]]:
    entries, _ = phi_scan.extract_entries(orjson.loads(raw), raw=raw)
    return [(key, category) for key, category, _ in entries]


def new_extract_generator(raw: bytes) -> list[tuple[str, str]]:
    out = []
    for category, value in phi_scan.resource_phi(orjson.loads(raw)):
        parts = phi_scan.searchable(value)
        if parts is not None:
            out.append((phi_scan.seq_key(parts), category))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="directory of input NDJSON (default: generate --patients)")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--output", help="directory of the stage's de-identified NDJSON for the same input")
    parser.add_argument("--sample", type=int, default=1, help="use every Nth line")
    parser.add_argument("--bloom-bits", type=int, default=1 << 25)
    args = parser.parse_args()

    if args.input:
        input_dir = args.input
    else:
        from clinflow.synthetic import generate_fhir_bulk

        input_dir = tempfile.mkdtemp(prefix="phi-scan-bench-")
        generate_fhir_bulk(input_dir, patients=args.patients, seed=7)
    inputs = read_lines(input_dir, args.sample)
    print(f"inputs: {len(inputs):,} resources from {input_dir}", file=sys.stderr)
    outputs = read_lines(args.output, args.sample) if args.output else deidentified(inputs)
    print(f"outputs: {len(outputs):,} lines", file=sys.stderr)

    rows = []
    old_seconds, old_values = timed(old_extract, inputs)
    new_seconds, new_values = timed(new_extract, inputs)
    gen_seconds, gen_values = timed(new_extract_generator, inputs)
    rows.append(("extract / resource (loads+values+keys)", old_seconds, new_seconds, len(inputs)))
    rows.append(("  new via resource_phi+searchable+seq_key", old_seconds, gen_seconds, len(inputs)))
    old_multiset = Counter(v for values in old_values for v in values)
    new_multiset = Counter(v for values in new_values for v in values)
    same_values = old_multiset == new_multiset == Counter(v for values in gen_values for v in values)

    sequences = []
    for raw in inputs:
        for _, value in resource_phi(orjson.loads(raw)):
            parts = searchable(value)
            if parts is not None:
                sequences.append(parts)
    old_bloom = Bloom.empty(args.bloom_bits, 7)
    new_bloom = phi_scan.Bloom.empty(args.bloom_bits, 7)
    old_seconds, _ = timed(old_bloom.add_sequence, sequences)
    new_seconds, _ = timed(new_bloom.add_sequence, sequences)
    rows.append(("bloom add / value", old_seconds, new_seconds, len(sequences)))
    batched_bloom = phi_scan.Bloom.empty(args.bloom_bits, 7)
    batches = [sequences[start : start + BATCH_SEQUENCES] for start in range(0, len(sequences), BATCH_SEQUENCES)]
    batch_seconds, _ = timed(batched_bloom.add_sequences, batches)
    rows.append(("  add_sequence vs add_sequences (batches)", new_seconds, batch_seconds, len(sequences)))
    same_bits = batched_bloom.array == new_bloom.array and batched_bloom.items == new_bloom.items

    marker_seconds, marker_values = timed(lambda raw: phi_scan.resource_phi_list(orjson.loads(raw), raw), inputs)
    walk_seconds, walk_values = timed(lambda raw: phi_scan.resource_phi_list(orjson.loads(raw)), inputs)
    rows.append(("values / resource: marker tests vs walk all", marker_seconds, walk_seconds, len(inputs)))
    same_values = same_values and all(Counter(a) == Counter(b) for a, b in zip(marker_values, walk_values, strict=True))

    tokens = [b"white", b"windmill"]  # few first tokens, rarely present (a clean output's candidates)
    pattern = re.compile(b"|".join(re.escape(token) for token in tokens), re.IGNORECASE)
    token_filter = phi_scan.first_token_filter(tokens)
    regex_seconds, regex_kept = timed(lambda raw: pattern.search(raw) is not None, inputs)
    filter_seconds, filter_kept = timed(lambda raw: phi_scan.may_hold_any(raw, token_filter), inputs)
    rows.append(("confirm pre-filter / line: regex vs substrings", regex_seconds, filter_seconds, len(inputs)))
    same_filter = all(
        new or not old for old, new in zip(regex_kept, filter_kept, strict=True)
    )  # substrings keep every line the pattern keeps (and escaped / non-ASCII lines)

    texts = [raw.decode("utf-8", errors="replace") for raw in outputs]
    for text in texts[:2000]:  # warm both per-worker caches the same way
        list(line_candidates(text, old_bloom))
        list(phi_scan.line_candidates(text, new_bloom))
    old_seconds, old_found = timed(lambda text: list(line_candidates(text, old_bloom)), texts)
    new_seconds, new_found = timed(lambda text: list(phi_scan.line_candidates(text, new_bloom)), texts)
    raw_seconds, raw_found = timed(lambda raw: phi_scan.line_candidates_bytes(raw, new_bloom), outputs)
    rows.append(("candidates / line (str)", old_seconds, new_seconds, len(texts)))
    rows.append(("candidates / line (bytes)", old_seconds, raw_seconds, len(outputs)))
    differing = [
        index
        for index, (old, new, raw) in enumerate(zip(old_found, new_found, raw_found, strict=True))
        if Counter(old) != Counter(new) or Counter(new) != Counter(raw)
    ]

    print(f"{'measure':44} {'old us':>9} {'new us':>9} {'speed-up':>9}")
    for label, old, new, items in rows:
        print(f"{label:44} {per_item(old, items):9.2f} {per_item(new, items):9.2f} {old / new:8.1f}x")
    print(f"values: {sum(old_multiset.values()):,} old, {sum(new_multiset.values()):,} new; identical: {same_values}")
    print(f"bloom: add_sequences bits and items identical to add_sequence: {same_bits}")
    print(f"confirm pre-filter keeps every line the pattern keeps: {same_filter}")
    old_count, new_count = sum(map(len, old_found)), sum(map(len, new_found))
    print(f"candidates: {old_count:,} old, {new_count:,} new; lines differing: {len(differing)}")
    for index in differing[:5]:
        old_keys = Counter(old_found[index]) - Counter(new_found[index])
        new_keys = Counter(new_found[index]) - Counter(old_found[index])
        print(f"  line {index}: only old {sorted(old_keys.elements())[:3]} only new {sorted(new_keys.elements())[:3]}")


if __name__ == "__main__":
    main()
