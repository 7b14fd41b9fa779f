r"""Residual-PHI scan: find any identifying value of any input resource in the output bytes.

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
text is counted as a vocabulary match, not a leak; a value equal to a whole code of a standard
terminology (``TERMINOLOGY_SYSTEMS``: an MRN that is also a SNOMED CT concept id) is counted as a
coded match, not a leak (the same digits anywhere else are a hit). Base64 attachment ``data`` is decoded and
scanned as text too. A JSON line is matched on its decoded text (JSON escapes such as ``\n``
separate tokens, ``\u00e9`` is the letter); a line that is not JSON is matched as it is.

Memory: the value set is summarised in a Bloom filter (``Bloom``: first tokens and whole token
sequences; sized by the input, see ``pipeline.bloom_bits``) that every scanning worker holds; each output line
is tested against it, and only candidate sequences (Bloom positives) are confirmed exactly by a
keyed join with the input values (``seq_key`` on both sides), so a Bloom false positive never
counts as a hit.

Speed: a line is tokenized as bytes (one ``bytes.translate`` lower-cases and separates, ``split``
cuts); its distinct tokens are tested once against per-worker caches of first-token results
(bounded by ``CACHE_LIMIT``), so a line with no first-token positive costs a few C-level passes
and is never parsed. Only a line with a Bloom-positive token sequence (or an attachment) is parsed
to tell vocabulary from strict occurrences; a plain line (ASCII, no backslash, no attachment) takes
a short path with one token view and stops at its first Bloom-positive sequence. The extraction
walks every container of every input resource (no subtree is skipped), with C-level key-set tests
per object. The Bloom filter is built from batches (``add_sequences``): items repeated in a batch
are hashed once and the bit positions of a batch are set with numpy, giving exactly the bits of
``add_sequence`` per value. The confirmation pass tests few candidate first tokens as substrings
of the lower-cased input line (``FirstTokenFilter``) instead of one case-insensitive pattern.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

MIN_TOKEN_CHARS = 2
MIN_DIGIT_TOKEN_CHARS = 5
MAX_SEQUENCE_TOKENS = 12
CACHE_LIMIT = 1 << 17  # tokens/sequences remembered per worker and kind before that cache is reset (bounds memory)
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
CODED = "coded"
# Code systems whose codes are concepts, never identifiers of a person: an input identifier equal to
# a whole code of one of them (an 8-digit MRN that is also a SNOMED CT concept id) is not a leak.
TERMINOLOGY_SYSTEMS = frozenset(
    {
        "http://snomed.info/sct",
        "http://loinc.org",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-9-cm",
        "http://www.ama-assn.org/go/cpt",
        "http://hl7.org/fhir/sid/ndc",
        "http://hl7.org/fhir/sid/cvx",
        "http://unitsofmeasure.org",
    }
)

# Keys whose presence in an object makes the extraction look closer (everything else is only descended).
_PHI_KEYS = frozenset(
    {"identifier", "accessionIdentifier", "name", "telecom", "address", "udiCarrier", "url", "reference"}
    | IDENTIFIER_LEAVES
)
# Without "urn:uuid:", "mothersMaidenName" and "patient-birthPlace" in the raw bytes (and no \\u escape)
# no "reference" or "url" can yield a value, so only these keys need a closer look.
_NAME_KEYS = _PHI_KEYS - {"url", "reference"}
_VALUE_MARKERS = (b"urn:uuid:", b"mothersMaidenName", b"patient-birthPlace", b"\\u")

# ASCII punctuation, controls and space become separators; UTF-8 bytes >= 0x80 stay token bytes,
# so non-ASCII letters (é, ß, ...) belong to tokens. bytes.translate + split run at C speed.
_SEPARATORS = bytes(b if chr(b).isalnum() or b >= 0x80 else 0x20 for b in range(256))
# The same, also lower-casing ASCII letters (for ASCII text that is the case fold): one pass.
_FOLD_SEPARATORS = bytes(
    (b | 0x20 if 0x41 <= b <= 0x5A else b) if chr(b).isalnum() or b >= 0x80 else 0x20 for b in range(256)
)
_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # left to right, so an escaped backslash is one escape
_GAP = b'"\\u0000"'  # a removed vocabulary string in the re-serialised line (orjson escapes NUL so)
_CONTENT_TYPE = b"contentType"
_DATA = re.compile(rb'"data"\s*:\s*"([^"\\]*)"')  # attachment data (lines without escapes only)


def tokens(text: str) -> list[str]:
    """Splits text into case-folded runs of letters and digits (ASCII punctuation separates)."""
    return text.casefold().encode("utf-8").translate(_SEPARATORS).decode("utf-8").split()


def _fold(data: bytes) -> bytes:
    """Case-folded UTF-8 bytes with separators as spaces (ASCII fast path; invalid UTF-8 replaced)."""
    if data.isascii():
        return data.translate(_FOLD_SEPARATORS)
    return data.decode("utf-8", errors="replace").casefold().encode("utf-8").translate(_SEPARATORS)


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


def _leaf_strings(value: Any) -> Iterator[str]:
    """Strings of a leaf value, through nested lists (objects inside are walked separately)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _leaf_strings(item)


def _object_phi(value: dict[str, Any], keys: frozenset[str], out: list[tuple[str, str]]) -> None:
    """Appends the PHI values held directly by one object (``keys``: its keys in ``_PHI_KEYS``)."""
    if "url" in keys:
        url = value["url"]
        if url == MAIDEN_NAME_URL:
            out.extend(("maiden_names", v) for v in _strings(value.get("valueString")))
        elif url == BIRTH_PLACE_URL:
            out.extend(("addresses", v) for v in _addresses(value.get("valueAddress")))
    for key in keys:
        child = value[key]
        if key == "identifier" or key == "accessionIdentifier":
            out.extend(("identifiers", v) for v in _identifier_values(child))
        elif key == "name":
            if isinstance(child, (dict, list)):
                out.extend(("names", v) for v in _names(child))
        elif key == "telecom":
            out.extend(("telecom", v) for v in _telecom(child))
        elif key == "address":
            out.extend(("addresses", v) for v in _addresses(child))
        elif key == "udiCarrier":
            for carrier in child if isinstance(child, list) else [child]:
                if isinstance(carrier, dict):
                    for part in ("deviceIdentifier", "carrierHRF"):
                        out.extend(("identifiers", v) for v in _strings(carrier.get(part)))
        if key == "reference":
            out.extend(("ids", v[len(URN_UUID) :]) for v in _leaf_strings(child) if v.startswith(URN_UUID))
        elif key in IDENTIFIER_LEAVES:
            out.extend(("identifiers", v) for v in _leaf_strings(child))


def _walk_values(value: dict[str, Any], out: list[tuple[str, str]], phi_keys: frozenset[str] = _PHI_KEYS) -> None:
    """Appends the PHI values of ``value`` and of every object below it (every container is visited)."""
    if not phi_keys.isdisjoint(value):
        _object_phi(value, phi_keys.intersection(value), out)
    for child in value.values():
        if isinstance(child, dict):
            _walk_values(child, out, phi_keys)
        elif isinstance(child, list):
            _walk_items(child, out, phi_keys)


def _walk_items(items: list[Any], out: list[tuple[str, str]], phi_keys: frozenset[str]) -> None:
    for item in items:
        if isinstance(item, dict):
            _walk_values(item, out, phi_keys)
        elif isinstance(item, list):
            _walk_items(item, out, phi_keys)


def resource_phi(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yields ``(category, value)`` for every identifying value of one input resource.

    Every object at any depth is visited; the order of the values is not significant.

    Args:
        resource: The original (not de-identified) resource.

    Yields:
        Category (one of ``PHI_CATEGORIES``) and the raw value.
    """
    return iter(resource_phi_list(resource))


def resource_phi_list(resource: dict[str, Any], raw: bytes | None = None) -> list[tuple[str, str]]:
    r"""``resource_phi`` as a list (no generator frames: the extraction's hot path).

    Args:
        resource: The original resource.
        raw: The line ``resource`` was parsed from, if known: when it holds none of the value
            markers (``urn:uuid:``, the maiden-name and birth-place URLs, a ``\u`` escape) the
            ``reference`` and ``url`` keys are not inspected (they cannot yield a value then).
    """
    out: list[tuple[str, str]] = [("ids", value) for value in _strings(resource.get("id"))]
    if resource.get("resourceType") in NAMED_ROOTS:
        out.extend(("names", value) for value in _strings(resource.get("name")))
        out.extend(("names", value) for value in _strings(resource.get("alias")))
    if raw is not None and not any(marker in raw for marker in _VALUE_MARKERS):
        _walk_values(resource, out, _NAME_KEYS)
    else:
        _walk_values(resource, out)
    return out


def patient_phi(patient: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yields ``(category, value)`` for one input Patient (kept for callers; see ``resource_phi``)."""
    yield from resource_phi(patient)


def searchable(value: str, min_token_chars: int = MIN_TOKEN_CHARS) -> tuple[str, ...] | None:
    """Returns the token sequence to search for, or None when the value is too short to search."""
    data = value.encode("utf-8")
    folded = data.translate(_FOLD_SEPARATORS).decode("ascii") if data.isascii() else " ".join(tokens(value))
    parts = tuple(folded.split())
    if not parts:
        return None
    if len(parts) == 1:
        single = parts[0]
        if len(single) < min_token_chars or (single.isdigit() and len(single) < MIN_DIGIT_TOKEN_CHARS):
            return None
    return parts[:MAX_SEQUENCE_TOKENS]


def seq_key(parts: Iterable[str]) -> str:
    """The join key of a token sequence (128-bit blake2b hex)."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=16).hexdigest()


def _bytes_key(parts: tuple[bytes, ...]) -> str:
    """``seq_key`` of a token sequence held as UTF-8 bytes."""
    return hashlib.blake2b(b"\x1f".join(parts), digest_size=16).hexdigest()


def extract_entries(
    resource: dict[str, Any], min_token_chars: int = MIN_TOKEN_CHARS, raw: bytes | None = None
) -> tuple[list[tuple[str, str, tuple[str, ...]]], list[str]]:
    """All searchable values of one input resource, keyed, plus the categories of the skipped ones.

    The same as ``resource_phi`` + ``searchable`` + ``seq_key`` per value, in one call. Pass the
    line the resource was parsed from as ``raw`` (see ``resource_phi_list``).

    Returns:
        ``[(seq_key, category, tokens)]`` and ``[category of each value too short to search]``.
    """
    entries: list[tuple[str, str, tuple[str, ...]]] = []
    skipped: list[str] = []
    for category, value in resource_phi_list(resource, raw):
        parts = searchable(value, min_token_chars)
        if parts is None:
            skipped.append(category)
        else:
            entries.append((seq_key(parts), category, parts))
    return entries, skipped


def _positions(item: bytes, bits: int, hashes: int) -> list[int]:
    """Bit positions of an item: double hashing over one 128-bit blake2b (stable across processes)."""
    digest = int.from_bytes(hashlib.blake2b(item, digest_size=16).digest(), "little")
    first = digest & 0xFFFFFFFFFFFFFFFF
    second = (digest >> 64) | 1
    return [(first + n * second) % bits for n in range(hashes)]


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
    _negative: set[bytes] = field(default_factory=set, repr=False, compare=False)
    _positive: dict[bytes, list[int]] = field(default_factory=dict, repr=False, compare=False)
    _sequences: dict[bytes, bool] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls, bits: int, hashes: int) -> Bloom:
        """A filter with no items."""
        return cls(bits, hashes, bytearray((bits + 7) // 8), set(), set())

    def _forget(self) -> None:
        """Drops the per-worker caches (the filter changed)."""
        if self._negative or self._positive or self._sequences:
            self._negative = set()
            self._positive = {}
            self._sequences = {}

    def _add(self, item: bytes) -> None:
        array = self.array
        for position in _positions(item, self.bits, self.hashes):
            array[position >> 3] |= 1 << (position & 7)

    def _has(self, item: bytes) -> bool:
        array = self.array
        return all(array[p >> 3] & (1 << (p & 7)) for p in _positions(item, self.bits, self.hashes))

    def add_sequence(self, parts: tuple[str, ...]) -> None:
        """Adds one value's token sequence."""
        encoded = [part.encode("utf-8") for part in parts]
        self._add(b"f:" + encoded[0])
        self._add(b"s:" + b"\x1f".join(encoded))
        self._add(b"l%d:" % len(encoded) + encoded[0])
        self.lengths.add(len(parts))
        self.first_lengths.add(len(encoded[0]))
        self.items += 1
        self._forget()

    def add_sequences(self, sequences: Iterable[tuple[str, ...]]) -> int:
        """Adds many values' token sequences: the same bits and counts as ``add_sequence`` for each.

        Items repeated within the call (a value several resources share, a common first token) are
        hashed once (the set of this call's items is the only memory used); the bit positions of
        all items are computed and set in one vectorised step.

        Returns:
            The number of sequences added (repeats included, as ``items`` counts them).
        """
        blake2b = hashlib.blake2b
        lengths, first_lengths = self.lengths, self.first_lengths
        seen: set[bytes] = set()
        digests: list[bytes] = []
        count = 0
        for parts in sequences:
            count += 1
            item = b"s:" + "\x1f".join(parts).encode("utf-8")
            if item in seen:
                continue
            seen.add(item)
            digests.append(blake2b(item, digest_size=16).digest())
            first = parts[0].encode("utf-8")
            lengths.add(len(parts))
            first_lengths.add(len(first))
            for token_item in (b"f:" + first, b"l%d:" % len(parts) + first):
                if token_item not in seen:
                    seen.add(token_item)
                    digests.append(blake2b(token_item, digest_size=16).digest())
        if digests:
            self._set_bits(b"".join(digests))
        self.items += count
        self._forget()
        return count

    def _set_bits(self, digests: bytes) -> None:
        """Sets the bits of items given as concatenated 16-byte blake2b digests (``_positions``, vectorised).

        ``(first + n * second) % bits`` equals ``(first % bits + n * (second % bits)) % bits``, which
        stays below 2**64 for every allowed size, so unsigned 64-bit arithmetic gives the same positions.
        """
        halves = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
        bits = np.uint64(self.bits)
        first = halves[:, 0] % bits
        second = (halves[:, 1] | np.uint64(1)) % bits
        steps = np.arange(self.hashes, dtype=np.uint64)
        positions = ((first[:, None] + steps[None, :] * second[:, None]) % bits).ravel()
        array = np.frombuffer(self.array, dtype=np.uint8)
        offsets = (positions >> np.uint64(3)).astype(np.intp)
        shifts = (positions & np.uint64(7)).astype(np.uint8)
        for shift in range(8):  # one bit per pass: repeated offsets then write the same byte value
            chosen = offsets[shifts == shift]
            array[chosen] |= np.uint8(1 << shift)

    def merge(self, other: Bloom) -> None:
        """ORs another filter of the same size into this one."""
        if other.bits != self.bits:
            raise ValueError(f"cannot merge Bloom filters of {self.bits} and {other.bits} bits")
        mine = np.frombuffer(self.array, dtype=np.uint8)
        np.bitwise_or(mine, np.frombuffer(other.array, dtype=np.uint8), out=mine)  # in place, no copy
        self.lengths |= other.lengths
        self.first_lengths |= other.first_lengths
        self.items += other.items
        self._forget()

    def _starts(self, unique: set[bytes]) -> set[bytes]:
        """The tokens of ``unique`` that are Bloom-positive first tokens (cached per worker).

        A token is positive when its ``f:`` item is, and some ``l<length>:`` item (a sequence of
        that many tokens starts with it) is; the lengths are remembered for ``_sequences_at``.
        """
        positive = self._positive
        new = unique.difference(self._negative, positive)
        if new:
            first_lengths = self.first_lengths
            if len(self._negative) > CACHE_LIMIT:
                self._negative = set()
            if len(positive) > CACHE_LIMIT:
                positive.clear()
            negative = self._negative
            for token in new:
                lengths = []
                if len(token) in first_lengths and self._has(b"f:" + token):
                    lengths = [n for n in sorted(self.lengths) if self._has(b"l%d:" % n + token)]
                if lengths:
                    positive[token] = lengths
                else:
                    negative.add(token)
        return unique.intersection(positive)

    def _has_sequence(self, joined: bytes) -> bool:
        known = self._sequences.get(joined)
        if known is None:
            known = self._has(b"s:" + joined)
            if len(self._sequences) > CACHE_LIMIT:
                self._sequences = {}
            self._sequences[joined] = known
        return known

    def _sequences_at(self, line: list[bytes], starts: set[bytes]) -> list[tuple[bytes, ...]]:
        """Bloom-positive sequences of a token list, by position then length."""
        positions: list[int] = []
        for token in starts:
            index = -1
            try:
                while True:
                    index = line.index(token, index + 1)
                    positions.append(index)
            except ValueError:
                pass
        positions.sort()
        size = len(line)
        found: list[tuple[bytes, ...]] = []
        positive = self._positive
        known = self._sequences
        all_lengths: list[int] | None = None
        for position in positions:
            lengths = positive.get(line[position])
            if lengths is None:
                lengths = all_lengths = all_lengths or sorted(self.lengths)
            for length in lengths:
                if position + length > size:
                    break
                parts = line[position : position + length]
                joined = b"\x1f".join(parts)
                hit = known.get(joined)
                if hit is None:
                    hit = self._has_sequence(joined)
                    known = self._sequences  # the cache may have been replaced
                if hit:
                    found.append(tuple(parts))
        return found

    def _any_sequence_at(self, line: list[bytes], starts: set[bytes]) -> bool:
        """Whether ``_sequences_at(line, starts)`` finds a sequence (stops at the first; no sorting)."""
        positive = self._positive
        known = self._sequences
        size = len(line)
        for token in starts:
            lengths = positive.get(token) or sorted(self.lengths)
            index = -1
            try:
                while True:
                    index = line.index(token, index + 1)
                    for length in lengths:
                        if index + length > size:
                            break
                        joined = b"\x1f".join(line[index : index + length])
                        hit = known.get(joined)
                        if hit is None:
                            hit = self._has_sequence(joined)
                            known = self._sequences  # the cache may have been replaced
                        if hit:
                            return True
            except ValueError:
                pass
        return False

    def token_candidates(self, line: list[bytes]) -> list[tuple[bytes, ...]]:
        """Bloom-positive sequences of an already tokenized (case-folded, UTF-8) line."""
        starts = self._starts(set(line))
        return self._sequences_at(line, starts) if starts else []

    def candidates(self, text: str) -> Iterator[tuple[str, ...]]:
        """Yields token sequences of ``text`` that may be indexed values (Bloom positives).

        Distinct tokens are filtered by the first-token lengths present and by the first-token
        Bloom bits (results cached per worker), then sequences starting at positive tokens.
        """
        for parts in self.token_candidates(_fold(text.encode("utf-8")).split()):
            yield tuple(part.decode("utf-8") for part in parts)

    def false_positive_rate(self) -> float:
        """The estimated false-positive rate at the current fill."""
        filled = int(np.bitwise_count(np.frombuffer(self.array, dtype=np.uint8)).sum(dtype=np.int64)) / self.bits
        return filled**self.hashes


def _blank_vocabulary(value: Any, kept: list[str], codes: list[str], key: str = "", blank: str = "") -> Any:
    """Copies a JSON value with vocabulary/free-text strings replaced by ``blank`` (collected in ``kept``).

    The ``code`` of a Coding (or Quantity) of a ``TERMINOLOGY_SYSTEMS`` system is blanked too and
    collected in ``codes``.
    """
    if isinstance(value, dict):
        out = {}
        terminology = value.get("system") in TERMINOLOGY_SYSTEMS
        for k, v in value.items():
            if k == "data" and isinstance(v, str) and "contentType" in value:
                kept.append(_decoded(v))
                out[k] = blank
            elif k == "code" and terminology and isinstance(v, str):
                codes.append(v)
                out[k] = blank
            else:
                out[k] = _blank_vocabulary(v, kept, codes, k, blank)
        return out
    if isinstance(value, list):
        return [_blank_vocabulary(v, kept, codes, key, blank) for v in value]
    if isinstance(value, str) and key in VOCABULARY_KEYS:
        kept.append(value)
        return blank
    return value


def _decoded(data: str) -> str:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return data


def line_candidates(line: str, bloom: Bloom) -> Iterator[tuple[str, str, int]]:
    """Yields ``(seq_key, flag, token count)`` for each Bloom-positive sequence of one output line.

    ``flag`` is ``"vocabulary"`` for sequences found only inside kept vocabulary, free text or a
    decoded attachment (single-word names/places there are exempt), ``"coded"`` for a whole code of
    a ``TERMINOLOGY_SYSTEMS`` coding (exempt), ``"strict"`` otherwise.
    """
    return iter(line_candidates_bytes(line.encode("utf-8"), bloom))


def line_candidates_bytes(raw: bytes, bloom: Bloom) -> list[tuple[str, str, int]]:
    """``line_candidates`` of one output line as read (UTF-8 bytes, no line end): no decode needed."""
    return [candidate[:3] for candidate in line_candidates_with_first_token(raw, bloom)]


def line_candidates_with_first_token(raw: bytes, bloom: Bloom) -> list[tuple[str, str, int, bytes]]:
    """``(seq_key, flag, token count, first token)`` of each Bloom-positive sequence of one output line.

    The first token (case-folded UTF-8) lets the confirmation pass skip input lines that cannot
    hold the value (``may_hold_any``).

    Tiers: (1) distinct tokens of the whole line against the cached first-token results: no
    positive and no attachment means no candidate (most lines); (2) positive sequences of the
    whole line: none and no attachment means no candidate; (3) the line is parsed and the
    vocabulary/free text and decoded attachments are told apart from the rest.
    """
    if raw.isascii():
        if b"\\" not in raw and _CONTENT_TYPE not in raw:  # most lines: one view, no decoding
            view = raw.translate(_FOLD_SEPARATORS).split()
            starts = bloom._starts(set(view))
            if starts and bloom._any_sequence_at(view, starts):
                return _parsed_candidates(raw, bloom)
            return []
    else:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # as ScanFn's decode(errors="replace") did
            raw = raw.decode("utf-8", errors="replace").encode("utf-8")
    if b"\\" in raw:
        if b"\\u" in raw or _CONTENT_TYPE in raw:
            return _parsed_candidates(raw, bloom)
        # As written (a line that is not JSON) and with JSON escapes decoded (they all separate).
        views = [_fold(raw).split(), _fold(_JSON_ESCAPE.sub(b" ", raw)).split()]
    else:
        views = [_fold(raw).split()]
        if _CONTENT_TYPE in raw:  # every "data" string, decoded: a superset of the attachments
            views += [_fold(_decoded(data.decode("utf-8")).encode("utf-8")).split() for data in _DATA.findall(raw)]
    unique = set(views[0])
    for view in views[1:]:
        unique.update(view)
    starts = bloom._starts(unique)
    if starts and any(bloom._any_sequence_at(view, starts) for view in views):
        return _parsed_candidates(raw, bloom)
    return []


def _keyed(found: list[tuple[bytes, ...]], flag: str) -> list[tuple[str, str, int, bytes]]:
    return [(_bytes_key(parts), flag, len(parts), parts[0]) for parts in found]


FEW_FIRST_TOKENS = 16  # up to this many first tokens, substring tests of the lower-cased line beat one pattern


@dataclass(frozen=True)
class FirstTokenFilter:
    """The candidates' ASCII first tokens, lower-cased, as ``may_hold_any`` tests them.

    Attributes:
        tokens: The distinct tokens, when there are at most ``FEW_FIRST_TOKENS`` (else empty).
        pattern: One case-insensitive alternation of all tokens, when there are more.
    """

    tokens: tuple[bytes, ...]
    pattern: re.Pattern[bytes] | None = None


def first_token_filter(first_tokens: Iterable[bytes]) -> FirstTokenFilter | None:
    """What one of the candidates' first tokens matches in an input line (see ``may_hold_any``).

    Returns None when there is no ASCII first token (no ASCII, escape-free line can hold a value).
    """
    ascii_tokens = sorted({token.lower() for token in first_tokens if token.isascii()}, key=len, reverse=True)
    if not ascii_tokens:
        return None
    if len(ascii_tokens) <= FEW_FIRST_TOKENS:
        return FirstTokenFilter(tuple(ascii_tokens))
    return FirstTokenFilter((), re.compile(b"|".join(re.escape(token) for token in ascii_tokens), re.IGNORECASE))


def may_hold_any(raw: bytes, pattern: FirstTokenFilter | None) -> bool:
    """A necessary condition for an input line to hold a value whose first token is a candidate's.

    An ASCII line without JSON escapes holds each value's letters as written, so the value's
    first token occurs in it ignoring ASCII case. Any other line (non-ASCII characters may
    case-fold to ASCII, escapes hide letters) must be parsed.
    """
    if not raw.isascii() or b"\\" in raw:
        return True
    if pattern is None:
        return False
    if pattern.pattern is not None:
        return pattern.pattern.search(raw) is not None
    lowered = raw.lower()
    return any(token in lowered for token in pattern.tokens)


def _parsed_candidates(raw: bytes, bloom: Bloom) -> list[tuple[str, str, int, bytes]]:
    """Tier 3: candidates of the parsed line, vocabulary/free text and attachments told apart."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, (dict, list)):
        return _keyed(bloom.token_candidates(_fold(raw).split()), STRICT)
    found: list[tuple[str, str, int, bytes]] = []
    vocabulary: list[str] = []
    codes: list[str] = []
    # Removed strings become a NUL string ("\u0000" in orjson's output): no sequence spans one.
    blanked = orjson.dumps(_blank_vocabulary(document, vocabulary, codes, blank="\x00"))
    for segment in blanked.split(_GAP):
        found += _keyed(bloom.token_candidates(_fold(_JSON_ESCAPE.sub(b" ", segment)).split()), STRICT)
    for text in vocabulary:
        found += _keyed(bloom.token_candidates(_fold(text.encode("utf-8")).split()), VOCABULARY)
    for code in codes:
        parts = _fold(code.encode("utf-8")).split()
        for sequence in bloom.token_candidates(parts):  # only the whole code is a concept; a part of it is strict
            found += _keyed([sequence], CODED if len(sequence) == len(parts) else STRICT)
    return found


def confirm(categories: Iterable[str], candidates: Iterable[tuple[str, str, int, int]]) -> Counter[str]:
    r"""Counts confirmed hits for one join key.

    Args:
        categories: PHI categories of the input values with this key (empty: a Bloom false positive).
        candidates: ``(file kind, flag, token count, occurrences)`` of output sequences with this key
            (the scan counts identical candidates together before they are joined).

    Returns:
        ``hits\t<kind>\t<category>``, ``vocabulary_matches`` and ``coded_matches`` counts.
    """
    found = set(categories)
    counts: Counter[str] = Counter()
    if not found:
        return counts
    for kind, flag, length, occurrences in candidates:
        for category in found:
            if flag == VOCABULARY and length == 1 and category in EXEMPTABLE_CATEGORIES:
                counts["vocabulary_matches"] += occurrences
            elif flag == CODED:
                counts["coded_matches"] += occurrences
            else:
                counts[f"hits\t{kind}\t{category}"] += occurrences
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
    candidates: dict[str, Counter[tuple[str, str, int]]] = {}
    for line in lines:
        for key, flag, length in line_candidates(line, bloom):
            candidates.setdefault(key, Counter())["line", flag, length] += 1
    total: Counter[str] = Counter()
    for key, found in candidates.items():
        total.update(confirm(by_key.get(key, set()), [(*candidate, n) for candidate, n in found.items()]))
    return total
