"""Residual-PHI scan: find any identifying value of any input resource in the output bytes.

Values collected from **every** input resource (categories in ``PHI_CATEGORIES``): original
resource ids and ``urn:uuid:`` reference targets, identifier values (SSN, MRN, NPI, claim ids,
device serial/lot numbers, ...), HumanName parts and full names (patients, practitioners,
contacts), Organization/Location names, telecom values, address lines/city/district/text (any
resource), the mother's maiden name and birth-place city.

Matching is token based and case-insensitive: a value and every output line are split into runs
of letters/digits (ASCII punctuation and whitespace separate tokens); a value is found when its
token sequence occurs consecutively in a line. So ``999-12-3456`` is found as ``999 12 3456``
with any separators, and ``Ann`` is not found inside ``Annual``. Values with no letter/digit,
single-token values shorter than ``min_token_chars`` and single all-digit tokens shorter than
``MIN_DIGIT_TOKEN_CHARS`` (a street number, a sequence number) are not searched and are counted
as skipped. A single-word name or place found only inside kept coded vocabulary or redacted free
text is counted as a vocabulary match, not a leak. Base64 attachment ``data`` is decoded and
scanned as text too.

Memory: the value set is summarised in a fixed-size Bloom filter (``Bloom``: first tokens and
whole token sequences, size from the policy) that every scanning worker holds; each output line
is tested against it, and only candidate sequences (Bloom positives) are confirmed exactly by a
keyed join with the input values (``seq_key`` on both sides), so a Bloom false positive never
counts as a hit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

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
    """Splits text into case-folded runs of letters and digits (ASCII punctuation separates)."""
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


def confirm(categories: Iterable[str], candidates: Iterable[tuple[str, str, int]]) -> Counter[str]:
    r"""Counts confirmed hits for one join key.

    Args:
        categories: PHI categories of the input values with this key (empty: a Bloom false positive).
        candidates: ``(file kind, flag, token count)`` of output sequences with this key.

    Returns:
        ``hits\t<kind>\t<category>`` and ``vocabulary_matches`` counts.
    """
    found = set(categories)
    counts: Counter[str] = Counter()
    if not found:
        return counts
    for kind, flag, length in candidates:
        for category in found:
            if flag == VOCABULARY and length == 1 and category in EXEMPTABLE_CATEGORIES:
                counts["vocabulary_matches"] += 1
            else:
                counts[f"hits\t{kind}\t{category}"] += 1
    return counts


def scan_lines_exact(
    lines: Iterable[str], values: Iterable[tuple[str, str]], bloom_bits: int = 1 << 20
) -> Counter[str]:
    """Scans lines for values in one process (for tests and small inputs): same rules as the pipeline."""
    bloom = Bloom.empty(bloom_bits, 7)
    by_key: dict[str, set[str]] = {}
    for category, value in values:
        parts = searchable(value)
        if parts is not None:
            bloom.add_sequence(parts)
            by_key.setdefault(seq_key(parts), set()).add(category)
    candidates: dict[str, list[tuple[str, str, int]]] = {}
    for line in lines:
        for key, flag, length in line_candidates(line, bloom):
            candidates.setdefault(key, []).append(("line", flag, length))
    total: Counter[str] = Counter()
    for key, found in candidates.items():
        total.update(confirm(by_key.get(key, set()), found))
    return total
