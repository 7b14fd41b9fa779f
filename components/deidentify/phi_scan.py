"""Residual-PHI scan: find any identifying value of an input Patient in the output bytes.

Values collected from every input Patient (categories in ``PHI_CATEGORIES``): the original
resource id, identifier values (SSN, MRN, driver's licence, passport, ...), name parts
(family, given, text), telecom values (phone, email), address lines/city/district/text, the
mother's maiden name and birth-place city, and the same fields of ``Patient.contact``.

Matching is token based and case-insensitive: a value and every output line are split into
runs of letters/digits (ASCII punctuation and whitespace separate tokens); a value is found
when its token sequence occurs consecutively in a line. So ``999-12-3456`` is found as
``999 12 3456`` with any separators, and ``Ann`` is not found inside ``Annual``. Values with
no letter/digit, and single-token values shorter than ``MIN_TOKEN_CHARS`` (e.g. an initial),
are not searched and are counted as skipped. A single-word name or place found only inside
kept coded vocabulary (``scan_line``) is counted as a vocabulary match, not a leak.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

MIN_TOKEN_CHARS = 2
MAIDEN_NAME_URL = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"

PHI_CATEGORIES = ("ids", "identifiers", "names", "telecom", "addresses", "maiden_names")
EXEMPTABLE_CATEGORIES = frozenset({"names", "addresses", "maiden_names"})
VOCABULARY_KEYS = frozenset({"display", "text", "valueString"})

PhiIndex = dict[str, list[tuple[tuple[str, ...], str]]]


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
    for point in points if isinstance(points, list) else []:
        if isinstance(point, dict):
            yield from _strings(point.get("value"))


def _addresses(addresses: Any) -> Iterator[str]:
    for address in addresses if isinstance(addresses, list) else [addresses]:
        if isinstance(address, dict):
            yield from _strings(address.get("line"))
            for part in ("city", "district", "text"):
                yield from _strings(address.get(part))


def patient_phi(patient: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yields ``(category, value)`` for every identifying value of one input Patient.

    Args:
        patient: The original (not de-identified) Patient resource.

    Yields:
        Category (one of ``PHI_CATEGORIES``) and the raw value.
    """
    yield from (("ids", value) for value in _strings(patient.get("id")))
    for identifier in patient.get("identifier") or []:
        if isinstance(identifier, dict):
            yield from (("identifiers", value) for value in _strings(identifier.get("value")))
    yield from (("names", value) for value in _names(patient.get("name")))
    yield from (("telecom", value) for value in _telecom(patient.get("telecom")))
    yield from (("addresses", value) for value in _addresses(patient.get("address")))
    for extension in patient.get("extension") or []:
        if not isinstance(extension, dict):
            continue
        if extension.get("url") == MAIDEN_NAME_URL:
            yield from (("maiden_names", value) for value in _strings(extension.get("valueString")))
        elif extension.get("url") == BIRTH_PLACE_URL:
            yield from (("addresses", value) for value in _addresses(extension.get("valueAddress")))
    for contact in patient.get("contact") or []:
        if isinstance(contact, dict):
            yield from (("names", value) for value in _names(contact.get("name")))
            yield from (("telecom", value) for value in _telecom(contact.get("telecom")))
            yield from (("addresses", value) for value in _addresses(contact.get("address")))


def searchable(value: str) -> tuple[str, ...] | None:
    """Returns the token sequence to search for, or None when the value is too short to search."""
    parts = tuple(tokens(value))
    if not parts or (len(parts) == 1 and len(parts[0]) < MIN_TOKEN_CHARS):
        return None
    return parts


def build_index(values: Iterable[tuple[str, str]]) -> tuple[PhiIndex, Counter[str]]:
    r"""Indexes PHI values by their first token.

    Args:
        values: ``(category, value)`` pairs.

    Returns:
        The index (first token -> list of (token sequence, category)) and counts
        ``indexed\t<category>`` / ``skipped\t<category>``.
    """
    index: PhiIndex = {}
    counts: Counter[str] = Counter()
    seen: set[tuple[tuple[str, ...], str]] = set()
    for category, value in values:
        parts = searchable(value)
        if parts is None:
            counts["skipped\t" + category] += 1
            continue
        counts["indexed\t" + category] += 1
        if (parts, category) not in seen:
            seen.add((parts, category))
            index.setdefault(parts[0], []).append((parts, category))
    return index, counts


def scan_text(text: str, index: PhiIndex, strict_only: bool = False) -> Counter[str]:
    """Counts occurrences of indexed PHI values in one piece of output text.

    Args:
        text: An output line.
        index: From ``build_index``.
        strict_only: Count only values that are never exempt (see ``scan_line``).

    Returns:
        Hits per PHI category (empty when clean).
    """
    hits: Counter[str] = Counter()
    line_tokens = tokens(text)
    if index.keys().isdisjoint(line_tokens):
        return hits
    for position, token in enumerate(line_tokens):
        candidates = index.get(token)
        if not candidates:
            continue
        for parts, category in candidates:
            if strict_only and len(parts) == 1 and category in EXEMPTABLE_CATEGORIES:
                continue
            if tuple(line_tokens[position : position + len(parts)]) == parts:
                hits[category] += 1
    return hits


def _blank_vocabulary(value: Any, kept: list[str], key: str = "") -> Any:
    """Copies a JSON value with coded-vocabulary strings replaced by ``""`` (collected in ``kept``)."""
    if isinstance(value, dict):
        return {k: _blank_vocabulary(v, kept, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank_vocabulary(v, kept, key) for v in value]
    if isinstance(value, str) and key in VOCABULARY_KEYS:
        kept.append(value)
        return ""
    return value


def scan_line(line: str, index: PhiIndex) -> tuple[Counter[str], int]:
    """Scans one output NDJSON line, exempting single common words inside coded vocabulary.

    A one-word name or place (e.g. the family name ``White``) that occurs only inside a kept
    ``display``/``text``/``valueString`` (e.g. the US Core race ``White``) is a vocabulary
    match, not a leak: it is counted apart and does not fail the stage. Multi-word values (full
    names, street lines, SSNs) and ids, identifiers and telecom values are never exempt.

    Args:
        line: One output line (a JSON object; other text is scanned as it is).
        index: From ``build_index``.

    Returns:
        Hits per category, and the number of exempt vocabulary matches.
    """
    hits = scan_text(line, index)
    if not hits:
        return hits, 0
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return hits, 0
    vocabulary: list[str] = []
    blanked = orjson.dumps(_blank_vocabulary(document, vocabulary)).decode("utf-8")
    strict = scan_text(blanked, index)
    for text in vocabulary:
        strict.update(scan_text(text, index, strict_only=True))
    return strict, sum(hits.values()) - sum(strict.values())
