"""Free-text PHI redaction for clinical notes, annotations and narratives.

Two layers, applied by one ``Redactor`` per patient:

1. **Known identifiers**: every identifying value of the patient's own record (name parts,
   maiden name, birthplace, identifier values, phones, e-mails, street lines, city, postal code,
   birth/death dates in common renderings) is matched case-insensitively as whole words. Digits
   of phones and identifiers match with any common separators (``555-234-5678`` =
   ``(555) 234 5678`` = ``5552345678``; ``999-12-3456`` = ``999123456``). The values are indexed
   by the letter/digit run a match starts with, so a text is tokenised once and each value is
   verified only where such a run occurs (cost independent of the number of values).
2. **Patterns** that are PHI whoever they belong to: e-mail, URL, IPv4/IPv6, SSN, phone, dates
   (ISO, numeric, month names, plausible ``YYYYMMDD``), MRN-like ids (``MRN: 12345``,
   ``#123456789``), ZIP after a state (and any ZIP+4), ages over 89. Applied one after another;
   on an ASCII text (most notes) each rule runs only where a cheap scan of the text's "shape"
   (digits as ``0``) or of its anchor says a match can start, with the same result (see ``_Rule``).

Replacements are ``[NAME]``, ``[MRN]``, ``[DATE]`` ... (``[<CATEGORY>]``); ``redact`` returns the
redacted text and a count per category (never the values). XHTML narratives go through
``redact_xhtml``, which redacts text nodes and drops every attribute except a small safe set.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any, NamedTuple

import orjson

MAIDEN_NAME_URL = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"

CATEGORIES = frozenset(
    {"name", "identifier", "mrn", "ssn", "phone", "email", "url", "ip", "date", "address", "zip", "age"}
)
MIN_KNOWN_CHARS = 2  # shorter known values (initials) would redact ordinary letters
_FIRST_RUN_RE = re.compile(r"[^\W_]+")
_ZIP_VALUE_RE = re.compile(r"\d{5}(?:-\d{4})?")
# Kinds of known values (how the original design turned each into a regex).
WORDS, LITERAL, PHONE, LOCAL_PHONE, TOKENS, DATE = "words", "literal", "phone", "local_phone", "tokens", "date"
_PHONE_KINDS = frozenset({PHONE, LOCAL_PHONE})

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_SEPARATOR = r"[\s().\-/]*"


def placeholder(category: str) -> str:
    """Returns the replacement text of a category (``name`` -> ``[NAME]``)."""
    return f"[{category.upper()}]"


# --------------------------------------------------------------------------- known identifiers


@dataclass(frozen=True)
class KnownIdentifiers:
    """One patient's identifying values, taken from their own record.

    Attributes:
        names: Name parts (given, family, prefix, suffix, text), maiden names, contacts' names.
        identifiers: Identifier values (MRN, SSN, driver's license, passport, ...).
        telecom: Phone numbers and e-mail addresses.
        addresses: Street lines, cities, districts, postal codes, birthplace city.
        dates: ISO dates (``YYYY-MM-DD``) such as birth and death dates.
    """

    names: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    telecom: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        """A compact encoding (JSON lists, about a quarter of the object's memory) for side inputs."""
        return orjson.dumps([self.names, self.identifiers, self.telecom, self.addresses, self.dates])

    @classmethod
    def from_bytes(cls, data: bytes) -> KnownIdentifiers:
        """Decodes ``to_bytes``."""
        names, identifiers, telecom, addresses, dates = orjson.loads(data)
        return cls(tuple(names), tuple(identifiers), tuple(telecom), tuple(addresses), tuple(dates))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _name_parts(names: Any) -> Iterator[str]:
    for name in names if isinstance(names, list) else [names]:
        if isinstance(name, dict):
            for part in ("family", "given", "prefix", "suffix", "text"):
                yield from _strings(name.get(part))


def _address_parts(addresses: Any) -> Iterator[str]:
    for address in addresses if isinstance(addresses, list) else [addresses]:
        if isinstance(address, dict):
            for part in ("line", "city", "district", "postalCode", "text"):
                yield from _strings(address.get(part))


def _telecom_values(points: Any) -> Iterator[str]:
    for point in points if isinstance(points, list) else []:
        if isinstance(point, dict):
            yield from _strings(point.get("value"))


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def known_identifiers_from_patient(patient: dict[str, Any]) -> KnownIdentifiers:
    """Collects the identifying values of one FHIR Patient resource.

    Args:
        patient: The original (not de-identified) Patient resource.

    Returns:
        Its names, identifier values, telecom values, address parts and dates.
    """
    names = list(_name_parts(patient.get("name")))
    addresses = list(_address_parts(patient.get("address")))
    telecom = list(_telecom_values(patient.get("telecom")))
    for extension in patient.get("extension") or []:
        if not isinstance(extension, dict):
            continue
        if extension.get("url") == MAIDEN_NAME_URL:
            for maiden in _strings(extension.get("valueString")):
                names.append(maiden)
                names.extend(maiden.split())
        elif extension.get("url") == BIRTH_PLACE_URL:
            place = extension.get("valueAddress")
            if isinstance(place, dict):
                addresses.extend(_strings(place.get("city")))
                addresses.extend(_strings(place.get("district")))
    for contact in patient.get("contact") or []:
        if isinstance(contact, dict):
            names.extend(_name_parts(contact.get("name")))
            telecom.extend(_telecom_values(contact.get("telecom")))
            addresses.extend(_address_parts(contact.get("address")))
    identifiers = [
        value
        for identifier in patient.get("identifier") or []
        if isinstance(identifier, dict)
        for value in _strings(identifier.get("value"))
    ]
    dates = [
        value[:10]
        for key in ("birthDate", "deceasedDateTime")
        for value in _strings(patient.get(key))
        if re.match(r"^\d{4}-\d{2}-\d{2}", value)
    ]
    return KnownIdentifiers(
        names=_unique(names),
        identifiers=_unique(identifiers),
        telecom=_unique(telecom),
        addresses=_unique(addresses),
        dates=_unique(dates),
    )


_ASCII_NON_ALNUM = bytes(byte for byte in range(128) if not chr(byte).isalnum())


def _key(text: str) -> str:
    """Normalises a value or a match for category lookup: case-folded letters and digits only."""
    folded = text.casefold()
    if folded.isascii():
        return folded.encode("ascii").translate(None, _ASCII_NON_ALNUM).decode("ascii")
    return "".join(ch for ch in folded if ch.isalnum())


def _words_pattern(value: str) -> str:
    """Matches a text value case-insensitively with any run of whitespace between its words."""
    return r"\s+".join(re.escape(word) for word in value.split())


def _token_pattern(value: str) -> str:
    """Matches an identifier by its letter/digit runs, with optional separators between them."""
    tokens = re.findall(r"[^\W_]+", value)
    return _SEPARATOR.join(re.escape(token) for token in tokens)


def _phone_digits(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    return digits[1:] if len(digits) == 11 and digits.startswith("1") else digits


def _phone_pattern(digits: str) -> str:
    """Matches a 10-digit phone in any common formatting, with an optional +1 country code."""
    area, exchange, line = digits[:3], digits[3:6], digits[6:]
    return rf"(?:\+?1[\s.\-]?)?\(?{area}\)?[\s.\-]*{exchange}[\s.\-]*{line}"


def date_renderings(iso: str) -> list[str]:
    """Returns the common renderings of an ISO date (ISO, US numeric, month names, compact).

    Args:
        iso: ``YYYY-MM-DD``.

    Returns:
        The renderings (empty when the value is not a calendar date).
    """
    return list(_date_renderings(iso[:10]))


@lru_cache(maxsize=4096)
def _date_renderings(iso: str) -> tuple[str, ...]:
    try:
        day = dt.date.fromisoformat(iso)
    except ValueError:
        return ()
    month = _MONTHS[day.month - 1]
    yy = f"{day.year % 100:02d}"
    return (
        day.isoformat(),
        day.strftime("%Y%m%d"),
        f"{day.year}/{day.month:02d}/{day.day:02d}",
        f"{day.month:02d}/{day.day:02d}/{day.year}",
        f"{day.month}/{day.day}/{day.year}",
        f"{day.month:02d}/{day.day:02d}/{yy}",
        f"{day.month}/{day.day}/{yy}",
        f"{day.month:02d}-{day.day:02d}-{day.year}",
        f"{day.month}-{day.day}-{day.year}",
        f"{day.month:02d}.{day.day:02d}.{day.year}",
        f"{month} {day.day}, {day.year}",
        f"{month} {day.day} {day.year}",
        f"{month[:3]} {day.day}, {day.year}",
        f"{month[:3]}. {day.day}, {day.year}",
        f"{month[:3]} {day.day} {day.year}",
        f"{day.day} {month} {day.year}",
        f"{day.day} {month[:3]} {day.year}",
        f"{day.day:02d} {month[:3]} {day.year}",
        f"{day.day}-{month[:3]}-{day.year}",
        f"{day.day:02d}-{month[:3]}-{day.year}",
    )


# --------------------------------------------------------------------------- known-value index
#
# Each known value becomes literal parts (case-folded like ``re.IGNORECASE`` folds characters) and
# the gap the regex of the original design allowed between them; a value can only match where a
# whole letter/digit run of the text equals one of its "first run" keys (a value's first run, or
# the first runs concatenated where the gaps may be empty), so a text is tokenised once and only
# the values keyed by its runs are verified, character by character, at those runs.

WS_PLUS, WS_STAR, SEP_STAR, SEP_OPT = range(4)  # \s+ | \s* | [\s().\-/]* | [\s.\-]?
_RUN_RE = re.compile(r"[^\W_]+")
_SEPARATOR_CHARS = "().-/"
_PHONE_SEPARATOR_CHARS = ".-"
_NON_ALNUM_TO_SPACE = bytes(byte if chr(byte).isalnum() else 0x20 for byte in range(256))
_EXTRA_CASES: dict[int, tuple[int, ...]] = getattr(importlib.import_module("re._compiler"), "_EXTRA_CASES", {})
_TOLOWER: Callable[[int], int] | None = getattr(importlib.import_module("_sre"), "unicode_tolower", None)


class _FoldTable(dict[int, int]):
    """``str.translate`` table folding each character the way ``re.IGNORECASE`` compares it."""

    def __missing__(self, code: int) -> int:
        if _TOLOWER is not None:
            lower = _TOLOWER(code)
        else:
            lowered = chr(code).lower()
            lower = ord(lowered) if len(lowered) == 1 else code
        folded = min((lower, *_EXTRA_CASES.get(lower, ())))
        self[code] = folded
        return folded


_FOLD_TABLE = _FoldTable()


def _fold(text: str) -> str:
    """Case-folds a text character by character (same length), as ``re.IGNORECASE`` compares."""
    return text.lower() if text.isascii() else text.translate(_FOLD_TABLE)


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


_LEADING_RUN_RE = re.compile(r"[^\W_]*")


def _leading_run(text: str) -> str:
    """The letters/digits a text starts with."""
    match = _LEADING_RUN_RE.match(text)
    return match.group(0) if match is not None else ""


class _KnownValue(NamedTuple):
    r"""One known value as literal parts (folded) and the gap allowed between them.

    A phone value (``phone`` set) has parts ``(area code, exchange, line)`` and matches
    ``(?:\+?1[\s.\-]?)?\(?AAA\)?[\s.\-]*EEE[\s.\-]*LLLL``; every other value matches
    ``lead part0 gap part1 gap ...``.
    """

    lead: str
    parts: tuple[str, ...]
    gap: int
    phone: bool = False


def _skip_gap(text: str, index: int, gap: int) -> int:
    """The index after the gap starting at ``index`` (-1 when a required gap is missing)."""
    end = len(text)
    if gap == SEP_OPT:
        if index < end and (text[index] in _PHONE_SEPARATOR_CHARS or text[index].isspace()):
            return index + 1
        return index
    start = index
    if gap == SEP_STAR:
        while index < end and (text[index] in _SEPARATOR_CHARS or text[index].isspace()):
            index += 1
        return index
    while index < end and text[index].isspace():
        index += 1
    return -1 if gap == WS_PLUS and index == start else index


def _skip_phone_separators(text: str, index: int) -> int:
    end = len(text)
    while index < end and (text[index] in _PHONE_SEPARATOR_CHARS or text[index].isspace()):
        index += 1
    return index


def _match_parts(text: str, index: int, parts: tuple[str, ...], gap: int) -> int:
    """The end of ``parts`` matched at ``index`` then a non-word boundary, or -1."""
    for position, part in enumerate(parts):
        if position:
            index = _skip_gap(text, index, gap)
            if index < 0:
                return -1
        if not text.startswith(part, index):
            return -1
        index += len(part)
    if index < len(text) and _is_word(text[index]):
        return -1
    return index


def _phone_starts(text: str, body: int) -> list[int]:
    r"""Where ``(?:\+?1[\s.\-]?)?\(?`` can start when the area code starts at ``body``."""
    starts = [body]
    if body > 0 and text[body - 1] == "(":
        starts.append(body - 1)
    for start in list(starts):
        code_ends = [start]
        if start > 0 and (text[start - 1] in _PHONE_SEPARATOR_CHARS or text[start - 1].isspace()):
            code_ends.append(start - 1)
        for code_end in code_ends:  # the country code "1" ends here
            if code_end > 0 and text[code_end - 1] == "1":
                starts.append(code_end - 1)
                if code_end > 1 and text[code_end - 2] == "+":
                    starts.append(code_end - 2)
    return starts


def _after_area_code(text: str, index: int) -> int:
    """Where a phone's exchange may start after its area code ends at ``index`` (``)`` and separators skipped)."""
    if index < len(text) and text[index] == ")":
        index += 1
    return _skip_phone_separators(text, index)


def _match_phone(text: str, run_start: int, value: _KnownValue) -> list[tuple[int, int]]:
    """The matches of a 10-digit phone whose digits (or country code) start the run at ``run_start``."""
    area, exchange, line = value.parts
    spans: list[tuple[int, int]] = []
    bodies = (run_start, run_start + 1) if text.startswith("1", run_start) else (run_start,)
    for body in bodies:
        if not text.startswith(area, body):
            continue
        index = _after_area_code(text, body + len(area))
        if not text.startswith(exchange, index):
            continue
        index = _skip_phone_separators(text, index + len(exchange))
        if not text.startswith(line, index):
            continue
        end = index + len(line)
        if end < len(text) and _is_word(text[end]):
            continue
        if body == run_start:
            starts = _phone_starts(text, body)
        else:  # the run starts with the country code 1
            starts = [run_start, run_start - 1] if run_start > 0 and text[run_start - 1] == "+" else [run_start]
        valid = [start for start in starts if start == 0 or not _is_word(text[start - 1])]
        if valid:
            spans.append((min(valid), end))
    return spans


def _run_keys(parts: tuple[str, ...], gap: int) -> list[str]:
    """The text runs a match can start with: the first run, extended over parts while gaps may be empty."""
    keys: list[str] = []
    joined = ""
    for position, part in enumerate(parts):
        run = _leading_run(part)
        joined += run
        keys.append(joined)
        if run != part or gap == WS_PLUS or position == len(parts) - 1:
            break
    return [key for position, key in enumerate(keys) if key and key not in keys[:position]]


def _literal_value(parts: list[str], gap: int) -> tuple[_KnownValue, list[str]] | None:
    """A value of literal parts with its run keys (None when its first part has no letter or digit)."""
    folded = [_fold(part) for part in parts]
    first = folded[0]
    lead_length = 0 if first[:1].isalnum() else next((i for i, char in enumerate(first) if char.isalnum()), None)
    if lead_length is None:
        return None
    lead = first[:lead_length]
    body = (first[lead_length:], *folded[1:]) if lead_length else tuple(folded)
    return _KnownValue(lead, body, gap), _run_keys(body, gap)


class _Bucket:
    """The known values keyed by one text run, split by their first word and next run when they have several words.

    A provider redactor keys hundreds of values by the same run (``dr``, ``general``); values of
    several whitespace-separated words are looked up by the run after their first word, so only
    values that can still match are verified.
    """

    def __init__(self) -> None:
        self.exact_rank: int | None = None  # a value that is exactly the run (matches wherever the run occurs)
        self.values: list[tuple[int, _KnownValue]] = []
        self.by_next_run: dict[tuple[str, str], dict[str, list[tuple[int, _KnownValue]]]] = {}
        self.phones: dict[str, dict[str, list[tuple[int, _KnownValue]]]] = {}  # area code -> exchange -> values

    def add(self, rank: int, value: _KnownValue, key: str) -> None:
        """Adds a value (with its alternation rank) keyed by ``key``."""
        if not value.phone and not value.lead and value.parts == (key,):
            self.exact_rank = rank if self.exact_rank is None else min(rank, self.exact_rank)
            return
        if value.phone:
            area, exchange, _ = value.parts
            self.phones.setdefault(area, {}).setdefault(exchange, []).append((rank, value))
            return
        if value.gap == WS_PLUS and not value.phone and len(value.parts) > 1:
            next_run = _leading_run(value.parts[1])
            if next_run:
                group = self.by_next_run.setdefault((value.lead, value.parts[0]), {})
                group.setdefault(next_run, []).append((rank, value))
                return
        self.values.append((rank, value))

    def match(self, text: str, start: int, spans: list[tuple[int, int, int]]) -> None:
        """Adds ``(start, rank, end)`` of every non-exact value of the bucket matching at the run at ``start``."""
        for rank, value in self.values:
            _match_value(text, start, rank, value, spans)
        for (_, first), group in self.by_next_run.items():
            if not text.startswith(first, start):
                continue
            index = start + len(first)
            after = index
            while after < len(text) and text[after].isspace():
                after += 1
            if after == index:
                continue
            run = _RUN_RE.match(text, after)
            candidates = group.get(run.group(0)) if run is not None else None
            for rank, value in candidates or ():
                _match_value(text, start, rank, value, spans)
        for area, exchanges in self.phones.items():
            for body in (start, start + 1):
                if not text.startswith(area, body):
                    continue
                index = _after_area_code(text, body + len(area))
                for rank, value in exchanges.get(text[index : index + 3], ()):
                    _match_value(text, start, rank, value, spans)


def _match_value(text: str, start: int, rank: int, value: _KnownValue, spans: list[tuple[int, int, int]]) -> None:
    """Adds the matches of one value whose first run starts at ``start`` to ``spans``."""
    if value.phone:
        spans.extend((first, rank, last) for first, last in _match_phone(text, start, value))
        return
    first = start - len(value.lead)
    if first < 0 or (first > 0 and _is_word(text[first - 1])):
        return
    if value.lead and not text.startswith(value.lead, first):
        return
    last = _match_parts(text, start, value.parts, value.gap)
    if last >= 0:
        spans.append((first, rank, last))


@lru_cache(maxsize=16384)
def _indexed_value(kind: str, value: str) -> tuple[_KnownValue, tuple[str, ...]] | None:
    """A known value of one kind (see ``_known_entries``) with its run keys (None: not indexable)."""
    if kind == PHONE:
        area, exchange, line = value[:3], value[3:6], value[6:]
        runs = (area, area + exchange, value)
        return _KnownValue("", (area, exchange, line), SEP_STAR, phone=True), (*runs, *("1" + run for run in runs))
    if kind == WORDS:
        built = _literal_value(value.split(), WS_PLUS)
    elif kind == LITERAL:
        built = _literal_value([value], WS_PLUS)
    elif kind == LOCAL_PHONE:
        built = _literal_value([value[3:6], value[6:]], SEP_OPT)
    elif kind == TOKENS:
        built = _literal_value(_FIRST_RUN_RE.findall(value), SEP_STAR)
    else:  # DATE
        built = _literal_value(value.split(), WS_STAR)
    return None if built is None else (built[0], tuple(built[1]))


def _pattern_of(kind: str, value: str) -> str:
    """The regex the original design compiled for a known value (for values ``_indexed_value`` cannot index)."""
    if kind == WORDS:
        return _words_pattern(value)
    if kind == LITERAL:
        return re.escape(value)
    if kind == TOKENS:
        return _token_pattern(value)
    if kind == DATE:
        return r"\s*".join(re.escape(part) for part in value.split())
    if kind == PHONE:
        return _phone_pattern(value)
    return rf"{value[3:6]}[\s.\-]?{value[6:]}"


def _known_entries(known: KnownIdentifiers) -> tuple[list[tuple[int, str, str]], dict[str, str]]:
    """The (sort length, kind, value) of every known value and a normalised-match -> category lookup.

    Same values, order and categories as the alternation of the original design: names, addresses,
    telecom (e-mail, 10-digit phone and its local 7-digit form, other), identifiers, date renderings.
    """
    entries: list[tuple[int, str, str]] = []
    categories: dict[str, str] = {}

    def add(kind: str, value: str, length: int, keys: Iterable[str], category: str) -> None:
        entries.append((length, kind, value))
        for key in keys:
            categories.setdefault(key, category)

    for name in known.names:
        if len(_key(name)) >= MIN_KNOWN_CHARS:
            add(WORDS, name, len(name), [_key(name)], "name")
    for address in known.addresses:
        if len(_key(address)) >= MIN_KNOWN_CHARS:
            category = "zip" if _ZIP_VALUE_RE.fullmatch(address) else "address"
            add(WORDS, address, len(address), [_key(address)], category)
    for value in known.telecom:
        digits = _phone_digits(value)
        if "@" in value:
            add(LITERAL, value, len(value), [_key(value)], "email")
        elif len(digits) == 10:
            add(PHONE, digits, len(value), [digits, "1" + digits], "phone")
            add(LOCAL_PHONE, digits, 8, [digits[3:]], "phone")
        elif len(_key(value)) >= MIN_KNOWN_CHARS:
            add(TOKENS, value, len(value), [_key(value)], "phone")
    for value in known.identifiers:
        if len(_key(value)) >= MIN_KNOWN_CHARS:
            add(TOKENS, value, len(value), [_key(value)], "identifier")
    for iso in known.dates:
        for rendering in date_renderings(iso):
            add(DATE, rendering, len(rendering), [_key(rendering)], "date")
    return entries, categories


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class _Rule:
    """One pattern rule: the matches of ``group`` (0 = whole match) become ``[CATEGORY]``."""

    category: str
    regex: re.Pattern[str]
    group: int = 0
    gate: str | re.Pattern[str] | Callable[[str], bool] | None = None  # must occur first (cheap skip)
    words: tuple[str, ...] = ()  # one of these must occur in the case-folded text (cheap skip)
    context: Callable[[str, int], bool] | None = None  # a match (text, start) counts only when this holds
    # ASCII texts only (see ``_PatternPass``): one of ``shapes`` must occur in the text's shape
    # (``_shape``); ``anchor`` (a fixed-width regex starting with a character class or literals)
    # matches at ``anchor_offset`` from the start of every match.
    shapes: tuple[str, ...] = ()
    shape_gate: Callable[[str, bytes], bool] | None = None  # (text, shape): a further necessary condition
    regex_gate_on_ascii: bool = True  # False: a regex ``gate`` is left out on ASCII texts (shapes imply it)
    anchor: str | None = None
    anchor_offset: int = 0
    anchored_source: str | None = None  # the regex without back-references, for ``anchored`` (same matches)
    anchored: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)
    # ASCII texts: every match starting at ``s`` has a match of the bytes regex ``locate`` in the text's
    # shape starting in ``s + locate_offsets[0] .. s + locate_offsets[1]`` (a literal-led scan of the shape
    # finds the few places worth trying the rule's regex at).
    locate: bytes | None = None
    locate_offsets: tuple[int, int] = (0, 0)
    located: re.Pattern[bytes] | None = field(init=False, default=None, repr=False, compare=False)
    needles: tuple[str, ...] = ()  # ASCII texts: every match starts with one of these (case-folded)
    shape_parts: tuple[bytes, ...] = field(init=False, default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        r"""Compiles ``anchored``: ``anchor`` first (the engine skips to it), the rule's regex as a look-ahead.

        ``A(?<=(?=(?:R)(?P<_end>))[\s\S]{k}A)`` matches the anchor character at ``start + k`` of a
        match of ``R`` at ``start`` (found by the look-ahead, so with the same span and groups, which keep
        their numbers; ``_end`` marks where it ends); the engine only tries ``R`` where the anchor occurs.
        """
        object.__setattr__(self, "shape_parts", tuple(part.encode("ascii") for part in self.shapes))
        if self.locate is not None:
            object.__setattr__(self, "located", re.compile(self.locate))
        if self.anchor is None:
            return
        source = self.regex.pattern if self.anchored_source is None else self.anchored_source
        if self.regex.flags & re.IGNORECASE:
            source = f"(?i:{source})"
        skip = r"[\s\S]" * self.anchor_offset
        anchored = re.compile(rf"{self.anchor}(?<=(?=(?:{source})(?P<_end>)){skip}(?:{self.anchor}))")
        object.__setattr__(self, "anchored", anchored)

    def applies(self, text: str, folded: str) -> bool:
        """Tells whether the rule can match at all (a necessary condition: its gates occur in the text)."""
        if self.words and not any(word in folded for word in self.words):
            return False
        if self.gate is None:
            return True
        if isinstance(self.gate, str):
            return self.gate in text
        if isinstance(self.gate, re.Pattern):
            return self.gate.search(text) is not None
        return self.gate(text)

    @property
    def ascii_gate(self) -> str | re.Pattern[str] | Callable[[str], bool] | None:
        """The gate checked on an ASCII text: a regex gate is left to ``shapes`` or the anchor scan, as cheap."""
        if isinstance(self.gate, re.Pattern) and not self.regex_gate_on_ascii:
            return None
        return self.gate


def _month_alternation() -> str:
    """Month names and abbreviations (``Sept`` too), capitalised or upper case, longest form first.

    Written as one branch per month and case (``Jan(?:uary)?``): the same forms in the same order of
    preference as an alternation sorted by length, but the regex engine rejects a position after
    one character instead of trying every form.
    """
    branches = []
    for month in _MONTHS:
        for form in (month, month.upper()):
            abbreviation, rest = form[:3], form[3:]
            if month == "September":
                branches.append(f"{abbreviation}(?:{rest[0]}(?:{rest[1:]})?)?")
            elif rest:
                branches.append(f"{abbreviation}(?:{rest})?")
            else:
                branches.append(abbreviation)
    return "(?:" + "|".join(branches) + r")\.?"


_MONTH = _month_alternation()
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH_NUM = r"(?:0?[1-9]|1[0-2])"
_ORDINAL = r"(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]\d{2}|20\d{2})"
# ``(?<![\w/.-]){_YEAR}`` with the look-behind after the first digit: the engine then skips to 1s and 2s.
_YEAR_AFTER_BOUNDARY = r"(?:1(?<![\w/.-]1)[89]\d{2}|2(?<![\w/.-]2)0\d{2})"
_STATES = [
    "AL",
    "AK",
    "AZ",
    "AR",
    "CA",
    "CO",
    "CT",
    "DE",
    "DC",
    "FL",
    "GA",
    "HI",
    "ID",
    "IL",
    "IN",
    "IA",
    "KS",
    "KY",
    "LA",
    "ME",
    "MD",
    "MA",
    "MI",
    "MN",
    "MS",
    "MO",
    "MT",
    "NE",
    "NV",
    "NH",
    "NJ",
    "NM",
    "NY",
    "NC",
    "ND",
    "OH",
    "OK",
    "OR",
    "PA",
    "RI",
    "SC",
    "SD",
    "TN",
    "TX",
    "UT",
    "VT",
    "VA",
    "WA",
    "WV",
    "WI",
    "WY",
    "PR",
    "GU",
    "VI",
    "AS",
    "MP",
]
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|Hawaii|Idaho|"
    "Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|Michigan|Minnesota|"
    "Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|New York|"
    "North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|South Carolina|South Dakota|"
    "Tennessee|Texas|Utah|Vermont|Virginia|Washington|West Virginia|Wisconsin|Wyoming|Puerto Rico"
)
_HEX = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_I = re.IGNORECASE


_IPV6_GROUPS = re.compile(r":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")  # starts with a literal: a fast scan


def _may_hold_ipv6(text: str) -> bool:
    """A necessary condition of an IPv6 match: ``::``, or seven colons with hex groups between them."""
    return "::" in text or (text.count(":") >= 7 and _IPV6_GROUPS.search(text) is not None)


_STATE_AT_END = re.compile(rf"(?:\b(?:{'|'.join(_STATES)})|\b(?:{_STATE_NAMES}))\Z")
_LONGEST_STATE = 16


def _after_state(text: str, start: int) -> bool:
    r"""Whether a ZIP candidate (whitespace, digits) at ``start`` follows ``<state>,?\s+`` (state code or name)."""
    end = start
    while end > 0 and text[end - 1].isspace():
        end -= 1
    if end > 0 and text[end - 1] == ",":
        end -= 1
    return _STATE_AT_END.search(text, max(0, end - _LONGEST_STATE), end) is not None


_MONTH_STARTS = "|".join(form for month in _MONTHS for form in (month[:3], month[:3].upper()))


_BETWEEN_AGE_AND_OLD = frozenset(b" -years")
_WHITESPACE_ONLY = frozenset(b" ")


def _may_hold_old_age(text: str, shape: bytes) -> bool:
    r"""Whether an age over 89 can precede ``old`` or ``yo`` (a necessary condition of the first age rule).

    The rule's number (``9\d|1[0-4]\d``) is followed by whitespace, ``-`` and ``years``-letters
    before ``old``, by whitespace before ``yo``, ``y/o`` or ``y.o.``: walking back over those must end
    after such a number.
    """
    lower = shape.lower()
    for needle, between in (
        (b"old", _BETWEEN_AGE_AND_OLD),
        (b"yo", _WHITESPACE_ONLY),
        (b"y/o", _WHITESPACE_ONLY),
        (b"y.o.", _WHITESPACE_ONLY),
    ):
        index = lower.find(needle)
        while index >= 0:
            end = index
            while end > 0 and lower[end - 1] in between:
                end -= 1
            if end >= 2 and (text[end - 2] == "9" or (end >= 3 and text[end - 3] == "1" and text[end - 2] in "01234")):
                return True
            index = lower.find(needle, index + 1)
    return False


def _may_hold_compact_date(text: str, shape: bytes) -> bool:
    """Whether eight digits starting with 1 or 2 occur (a necessary condition of ``YYYYMMDD``)."""
    index = shape.find(b"00000000")
    while index >= 0:
        if text[index] in "12":
            return True
        index = shape.find(b"00000000", index + 1)
    return False


def _rules() -> tuple[_Rule, ...]:
    """Compiles the pattern rules once, in the order they are applied."""
    months = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    return (
        _Rule(
            "email",
            re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            gate="@",
        ),
        _Rule(
            "url",
            re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]", _I),
            words=("://", "www."),
        ),
        _Rule(
            "ip",
            re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"),
            gate=re.compile(r"\.\d+\.\d"),  # starts with a literal: a fast scan
            shapes=("0.0",),
        ),
        _Rule(
            "ip",
            re.compile(
                rf"(?<![\w:])(?:(?:{_HEX}:){{7}}{_HEX}|{_HEX}(?::{_HEX}){{0,6}}::(?:{_HEX}(?::{_HEX}){{0,6}})?"
                rf"|::{_HEX}(?::{_HEX}){{0,6}})(?![\w:])"
            ),
            gate=_may_hold_ipv6,
        ),
        # ``(?<![\w-])\d{3}...`` with the look-behind after the first digit: the engine then skips to digits.
        _Rule(
            "ssn", re.compile(r"\d(?<![\w-]\d)\d\d([-\s])\d{2}\1\d{4}(?![\w-])"), shapes=("000-00-0000", "000 00 0000")
        ),
        _Rule(
            "ssn",
            re.compile(r"\b(?:SSN|SS#|social\s+security(?:\s+(?:number|no\.?|#))?)\s*[:#]?\s*(\d{9})\b", _I),
            1,
            re.compile(r"\d{9}"),
            words=("ssn", "ss#", "social"),
            shapes=("000000000",),
            regex_gate_on_ascii=False,
        ),
        _Rule(
            "phone",
            re.compile(
                r"(?<![\w(+-])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}"
                r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?(?![\w-])",
                _I,
            ),
            shapes=("000 0000", "000.0000", "000-0000"),
            anchor=r"[+(0-9](?<![\w(+-].)",
            # the exchange and line digits come 4 (``555-``) to 9 (``+1 (555) ``) characters after the start
            locate=rb"000[ .\-]0000",
            locate_offsets=(4, 9),
        ),
        _Rule(
            "phone",
            re.compile(
                r"\b(?:phone|tel|telephone|cell|mobile|fax|pager)\.?\s*(?:no\.?|#|number)?\s*[:#]?\s*(\d{10})\b", _I
            ),
            1,
            re.compile(r"\d{10}"),
            words=("phone", "tel", "cell", "mobile", "fax", "pager"),
            shapes=("0000000000",),
            regex_gate_on_ascii=False,
        ),
        _Rule(
            "date",
            re.compile(
                rf"{_YEAR_AFTER_BOUNDARY}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
                r"(?:[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\w/-])"
            ),
            shapes=("0000-00-00",),
        ),
        _Rule("date", re.compile(rf"{_YEAR_AFTER_BOUNDARY}/(?:0?[1-9]|1[0-2])/{_DAY}(?![\w/-])"), shapes=("0000/0",)),
        _Rule(
            "date",
            re.compile(rf"(?<![\w/.-]){_MONTH_NUM}([/.-]){_DAY}\1(?:{_YEAR}|\d{{2}})(?![\w/-]|\.\d)"),
            shapes=("0/00", "0.00", "0-00"),
            # a month (one or two digits) and the separator, then a day's digit
            anchor=r"[0-9](?<![\w/.-].)(?:[0-9][/.-]|[/.-][0-9])",
            locate=rb"0[/.\-]0{1,2}[/.\-]00",  # from the month's last digit
            locate_offsets=(0, 1),
            # ``([/.-])D\1`` as one branch per separator: a look-behind cannot hold a back-reference.
            anchored_source=(
                rf"(?<![\w/.-]){_MONTH_NUM}(?:/{_DAY}/|\.{_DAY}\.|-{_DAY}-)(?:{_YEAR}|\d{{2}})(?![\w/-]|\.\d)"
            ),
        ),
        _Rule(
            "date",
            re.compile(rf"{_YEAR_AFTER_BOUNDARY}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![\w/-])"),
            gate=re.compile(r"\d{8}"),
            shapes=("00000000",),
            shape_gate=_may_hold_compact_date,
            regex_gate_on_ascii=False,
        ),
        _Rule(
            "date",
            re.compile(rf"\b{_DAY}{_ORDINAL}(?:\s+of)?[\s-]+{_MONTH}(?:,?[\s-]+{_YEAR})?(?!\w)"),
            words=months,
            # the rule's own shape from the day's last digit (month names are case-sensitive)
            locate=rb"0(?:st|nd|rd|th)?(?: +of)?[ \-]+(?:" + _MONTH_STARTS.encode("ascii") + rb")",
            locate_offsets=(0, 1),
        ),
        _Rule(
            "date",
            re.compile(rf"\b{_MONTH}\s+{_DAY}{_ORDINAL}(?:,?\s+{_YEAR})?(?!\w)|\b{_MONTH},?\s+{_YEAR}\b"),
            words=months,
            # month names are matched case-sensitively (capitalised or upper case)
            anchor=rf"(?:{_MONTH_STARTS})(?<!\w...)",
        ),
        _Rule(
            "mrn",
            re.compile(
                r"\b(?:MRN|MR\s*#|medical\s+record(?:\s+(?:number|no\.?|#))?|patient\s+id|acct|account(?:\s+(?:number|no\.?|#))?)"
                r"\s*[:#]?\s*(?:#\s*)?([A-Z]{0,3}\d[\dA-Z-]{3,})\b",
                _I,
            ),
            1,
            needles=("mr", "medical", "patient", "acc"),  # MRN, MR #, medical, patient, acct, account
        ),
        _Rule("mrn", re.compile(r"(?<![\w&#])#\s?(\d{6,})\b"), 1, "#"),
        # ``<state>,?\s+(ZIP)``, found from the ZIP backwards (``_after_state``): a scan for a state at
        # every word boundary costs ten times more and finds the same matches.
        _Rule(
            "zip",
            re.compile(r"\s(\d{5}(?:-\d{4})?)(?![\w-])"),
            1,
            re.compile(r"\d{5}"),
            context=_after_state,
            shapes=(" 00000",),
            regex_gate_on_ascii=False,
            anchor=r"[0-9](?<=\s[0-9])[0-9]{4}(?!\w)",  # five digits after whitespace, then no letter or digit
            locate=rb" 00000(?:-0000)?(?![\w-])",
            anchor_offset=1,
        ),
        _Rule(
            "zip",
            re.compile(r"(?<![\w-])\d{5}-\d{4}(?![\w-])"),
            gate=re.compile(r"\d{5}-"),
            shapes=("00000-0000",),
            regex_gate_on_ascii=False,
        ),
        _Rule(
            "age",
            re.compile(
                r"\b(9\d|1[0-4]\d)(?:\s*|-)(?:years?|yrs?|y)(?:\s*|-)old\b|\b(9\d|1[0-4]\d)\s*(?:yo|y/o|y\.o\.)", _I
            ),
            gate=re.compile(r"(?<!\d)(?:9\d|1[0-4]\d)(?!\d)"),
            words=("old", "yo", "y/o", "y.o."),
            shapes=("00",),
            shape_gate=_may_hold_old_age,
            regex_gate_on_ascii=False,
            anchor=r"[19](?<!\w.)[0-9]",
        ),
        _Rule(
            "age",
            re.compile(r"\b(?:aged?|age:)\s*(9\d|1[0-4]\d)\b", _I),
            1,
            re.compile(r"(?<!\d)(?:9\d|1[0-4]\d)(?!\d)"),
            words=("age",),
            shapes=("00",),
        ),
    )


_RULES = _rules()


def _substitute(rule: _Rule, text: str, counts: Counter[str], folded: str | None = None) -> str:
    """Applies one pattern rule, replacing the whole match or its ``group``."""
    if not rule.applies(text, _fold(text) if folded is None else folded):
        return text
    return _replace_all(rule, text, counts)


def _replace_all(rule: _Rule, text: str, counts: Counter[str]) -> str:
    """Replaces every match of a rule (``regex.sub``)."""
    replacement = placeholder(rule.category)

    def replace(match: re.Match[str]) -> str:
        if rule.context is not None and not rule.context(match.string, match.start()):
            return match.group(0)
        counts[rule.category] += 1
        if rule.group == 0:
            return replacement
        start, end = match.span(rule.group)
        whole_start = match.start()
        whole = match.group(0)
        return whole[: start - whole_start] + replacement + whole[end - whole_start :]

    return rule.regex.sub(replace, text)


def _substitute_anchored(rule: _Rule, anchored: re.Pattern[str], text: str, counts: Counter[str]) -> str:
    """``_substitute`` (rule already applies) for an ASCII text, with the rule's anchored regex.

    ``regex.sub`` replaces the leftmost match, then searches again from its end; ``anchored`` finds
    the same leftmost match (every match has the anchor at ``anchor_offset``; look-behinds see the
    text before the search position), so searching it from the end of each match finds the same
    matches. No rule matches an empty string.
    """
    offset = rule.anchor_offset
    match = anchored.search(text, offset)
    if match is None:
        return text
    end_group = anchored.groupindex["_end"]
    replacement = placeholder(rule.category)
    pieces: list[str] = []
    last = 0
    while match is not None:
        start = match.start() - offset
        end = match.start(end_group)
        if rule.context is None or rule.context(text, start):
            counts[rule.category] += 1
            if rule.group == 0:
                pieces += [text[last:start], replacement]
                last = end
            else:
                group_start, group_end = match.span(rule.group)
                pieces += [text[last:group_start], replacement]
                last = group_end
        match = anchored.search(text, end + offset)
    pieces.append(text[last:])
    return "".join(pieces)


def _keep_replaced(text: str, match: re.Match[str], group: int, last: int, replacement: str, pieces: list[str]) -> int:
    """Appends the kept text before the match's ``group`` and the placeholder; returns where kept text resumes."""
    start, end = match.span(group)
    pieces += [text[last:start], replacement]
    return end


def _substitute_located(rule: _Rule, located: re.Pattern[bytes], text: str, shape: bytes, counts: Counter[str]) -> str:
    """``_substitute`` (rule already applies) for an ASCII text and its shape, trying the regex where ``located`` says.

    ``regex.sub`` replaces the leftmost match, then the leftmost match from its end, and so on. Each
    match starting at ``s`` has a ``located`` match in the shape starting in ``s + low .. s + high``;
    the candidates are taken in order and the untried starts of each window are tried in order
    (``regex.match`` at a start sees the text before it, as ``sub`` does), so the first start that
    matches is the leftmost match.
    """
    low, high = rule.locate_offsets
    regex, group, context = rule.regex, rule.group, rule.context
    replacement = placeholder(rule.category)
    pieces: list[str] = []
    last = 0
    tried = 0  # every start before this one is tried (or inside a match)
    candidate = located.search(shape, low)
    while candidate is not None:
        at = candidate.start()
        match = None
        for start in range(max(tried, at - high), at - low + 1):
            match = regex.match(text, start)
            if match is not None:
                break
        if match is None:
            tried = max(tried, at - low + 1)
            candidate = located.search(shape, at + 1)
            continue
        start, end = match.span()
        if context is None or context(text, start):
            counts[rule.category] += 1
            last = _keep_replaced(text, match, group, last, replacement, pieces)
        tried = end
        candidate = located.search(shape, end + low)
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _substitute_at_needles(rule: _Rule, text: str, folded: str, counts: Counter[str]) -> str:
    """``_substitute`` (rule already applies) for an ASCII text whose matches start with one of ``rule.needles``.

    The needles' occurrences in the case-folded text (same length: ASCII) are every start worth
    trying; trying them in order from the end of each match finds the matches ``regex.sub`` finds.
    """
    starts: set[int] = set()
    for needle in rule.needles:
        index = folded.find(needle)
        while index >= 0:
            starts.add(index)
            index = folded.find(needle, index + 1)
    if not starts:
        return text
    regex, group, context = rule.regex, rule.group, rule.context
    replacement = placeholder(rule.category)
    pieces: list[str] = []
    last = 0
    tried = 0
    for start in sorted(starts):
        if start < tried:
            continue
        match = regex.match(text, start)
        if match is None:
            continue
        end = match.end()
        if context is None or context(text, start):
            counts[rule.category] += 1
            last = _keep_replaced(text, match, group, last, replacement, pieces)
        tried = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


_SHAPE_TABLE = bytes(
    ord("0") if chr(byte).isdigit() else ord(" ") if chr(byte).isspace() else byte for byte in range(128)
) + bytes(range(128, 256))


def _shape(ascii_text: str) -> bytes:
    r"""An ASCII text with each digit as ``0`` and each whitespace character (``\s``) as a space.

    A rule's ``shapes`` are necessary conditions of a match (``000-00-0000`` for an SSN). They hold of
    the texts the earlier rules of a pass produce too: a replacement only brings ``[``, ``]`` and capital
    letters, which no shape part holds, so a part found in a later text lies within text that was
    there before.
    """
    return ascii_text.encode("ascii").translate(_SHAPE_TABLE)


PATTERN_CACHE_SIZE = 8192  # texts per pattern pass whose result is kept (dosage texts, titles repeat)
PATTERN_CACHE_MAX_CHARS = 2048  # longer texts are not cached


class _PatternPass:
    """Applies pattern rules in order, remembering the results of recent texts (a bounded cache).

    The result only depends on the text and the rules, so the cache returns exactly what the rules
    return; one instance per rule set is shared by every ``Redactor`` (every patient). An ASCII text
    (most notes) takes a faster road to the same result: the rules' ``shapes`` skip rules that cannot
    match, and anchored rules scan only where their anchor character occurs.
    """

    def __init__(self, rules: tuple[_Rule, ...]) -> None:
        self.rules = rules
        self._cache: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}
        self._ascii_gates = tuple((rule, rule.shape_parts, rule.words, rule.ascii_gate) for rule in rules)

    def apply(self, text: str, counts: Counter[str]) -> str:
        """Returns ``text`` with every rule applied; adds the replacements to ``counts``."""
        if not self.rules:
            return text
        cached = self._cache.get(text)
        if cached is not None:
            for category, count in cached[1]:
                counts[category] += count
            return cached[0]
        own: Counter[str] = Counter()
        result = self._apply_ascii(text, own) if text.isascii() else self._apply_any(text, own)
        if len(text) <= PATTERN_CACHE_MAX_CHARS:
            if len(self._cache) >= PATTERN_CACHE_SIZE:
                self._cache.clear()  # bounded; clearing is atomic (worker threads may share the cache)
            self._cache[text] = (result, tuple(own.items()))
        counts.update(own)
        return result

    def _apply_any(self, text: str, counts: Counter[str]) -> str:
        lowered = text.lower()
        result = text
        for rule in self.rules:
            result = _substitute(rule, result, counts, lowered if result is text else None)
        return result

    def _apply_ascii(self, text: str, counts: Counter[str]) -> str:
        shape = _shape(text)
        folded = text.lower()
        result = text
        for rule, shape_parts, words, gate in self._ascii_gates:
            if shape_parts and not _contains_any(shape, shape_parts):
                continue
            if words and not (rule.anchor or rule.locate) and not _contains_any(folded, words):
                continue  # (a located or anchored rule's scan is as cheap as the words)
            if rule.shape_gate is not None and not rule.shape_gate(result, shape):
                continue
            if gate is not None:
                if isinstance(gate, str):
                    if gate not in result:
                        continue
                elif isinstance(gate, re.Pattern):
                    if gate.search(result) is None:
                        continue
                elif not gate(result):
                    continue
            before = result
            if rule.needles:
                result = _substitute_at_needles(rule, result, folded, counts)
            elif rule.located is not None:
                result = _substitute_located(rule, rule.located, result, shape, counts)
            elif rule.anchored is not None:
                result = _substitute_anchored(rule, rule.anchored, result, counts)
            else:
                result = _replace_all(rule, result, counts)
            if result is not before and result != before:
                folded = result.lower()
                shape = _shape(result)
        return result


def _contains_any(text: Any, parts: tuple[Any, ...]) -> bool:
    """Whether one of ``parts`` occurs in ``text`` (both ``str`` or both ``bytes``)."""
    for part in parts:  # noqa: SIM110 (a loop: several times faster than any() over a generator here)
        if part in text:
            return True
    return False


@lru_cache(maxsize=64)
def _pattern_passes(enabled: frozenset[str]) -> tuple[_PatternPass, _PatternPass]:
    """The (before known values, after known values) pattern passes of a category set."""
    rules = tuple(rule for rule in _RULES if rule.category in enabled)
    return (
        _PatternPass(tuple(rule for rule in rules if rule.category in _EARLY_CATEGORIES)),
        _PatternPass(tuple(rule for rule in rules if rule.category not in _EARLY_CATEGORIES)),
    )


_EARLY_CATEGORIES = frozenset({"email", "url"})
_UNRANKED = 1 << 30


class Redactor:
    """Redacts one patient's known identifiers and pattern-based PHI from free text.

    Build one per patient and call ``redact`` for each of their notes. Known values are indexed by
    the text runs a match can start with (see ``_KnownValue``), so building costs microseconds per
    value and a text is tokenised once; values are verified only at runs that key them. Where
    matches of several values overlap, the union of their spans is redacted (one placeholder).
    """

    def __init__(self, known: KnownIdentifiers | None = None, categories: frozenset[str] | None = None) -> None:
        """Indexes the patient's known values.

        Args:
            known: The patient's identifying values, or None for patterns only.
            categories: Pattern categories to apply (default: all of ``CATEGORIES``); known
                identifiers are always redacted.

        Raises:
            ValueError: On an unknown category name.
        """
        enabled = CATEGORIES if categories is None else frozenset(categories)
        unknown = enabled - CATEGORIES
        if unknown:
            raise ValueError(f"unknown free-text categories: {sorted(unknown)}; known: {sorted(CATEGORIES)}")
        self._early, self._late = _pattern_passes(enabled)
        self._exact: dict[str, int] = {}  # run -> rank of a value that is exactly that run
        self._index: dict[str, _Bucket] = {}  # run -> the other values a match can start with
        self._ascii_keys: frozenset[bytes] = frozenset()
        self._all_keys: frozenset[str] = frozenset()
        self._known_categories: dict[str, str] = {}
        self._rare: re.Pattern[str] | None = None
        if known is not None:
            self._index_known(known)

    def _index_known(self, known: KnownIdentifiers) -> None:
        entries, self._known_categories = _known_entries(known)
        order = sorted(range(len(entries)), key=lambda position: -entries[position][0])
        index, exact = self._index, self._exact
        rare: list[str] = []
        seen: set[tuple[str, str]] = set()
        for rank, position in enumerate(order):
            _, kind, value = entries[position]
            if (kind, value) in seen:
                continue
            seen.add((kind, value))
            if value.isalnum() and kind not in _PHONE_KINDS:  # a single run: matches wherever the run occurs
                key = _fold(value)
                exact.setdefault(key, rank)
                continue
            indexed = _indexed_value(kind, value)
            if indexed is None:
                rare.append(_pattern_of(kind, value))
                continue
            for key in indexed[1]:
                bucket = index.get(key)
                if bucket is None:
                    bucket = index[key] = _Bucket()
                bucket.add(rank, indexed[0], key)
        self._all_keys = frozenset(index).union(exact)
        self._ascii_keys = frozenset(key.encode("ascii") for key in self._all_keys if key.isascii())
        if rare:
            self._rare = re.compile(r"(?<!\w)(?:" + "|".join(rare) + r")(?!\w)", re.IGNORECASE)

    def _known_spans(self, text: str) -> list[tuple[int, int, int]]:
        """Every ``(start, rank, end)`` where a known value matches ``text``."""
        folded = _fold(text)
        if folded.isascii():
            tokens = set(folded.encode("ascii").translate(_NON_ALNUM_TO_SPACE).split())
            hits = [token.decode("ascii") for token in tokens & self._ascii_keys]
        else:
            hits = list(set(_RUN_RE.findall(folded)) & self._all_keys)
        spans: list[tuple[int, int, int]] = []
        size = len(folded)
        for key in hits:
            bucket = self._index.get(key)
            exact = self._exact.get(key)
            if bucket is not None and bucket.exact_rank is not None:
                exact = bucket.exact_rank if exact is None else min(exact, bucket.exact_rank)
            if bucket is not None and not (bucket.values or bucket.by_next_run or bucket.phones):
                bucket = None
            start = folded.find(key)
            while start >= 0:
                end = start + len(key)
                before = folded[start - 1] if start else " "
                after = folded[end] if end < size else " "
                if not before.isalnum() and not after.isalnum():
                    if exact is not None and before != "_" and after != "_":
                        spans.append((start, exact, end))
                    if bucket is not None:
                        bucket.match(folded, start, spans)
                start = folded.find(key, end)
        if self._rare is not None:
            spans.extend((match.start(), _UNRANKED, match.end()) for match in self._rare.finditer(text))
        return spans

    def _known_category(self, matched: str) -> str:
        key = _key(matched)
        category = self._known_categories.get(key)
        if category is None and key.startswith("1"):
            category = self._known_categories.get(key[1:])
        return category or "identifier"

    def _redact_known(self, text: str, counts: Counter[str]) -> str:
        """Replaces every known-value match; overlapping matches become one placeholder."""
        if not self._all_keys and self._rare is None:
            return text
        spans = self._known_spans(text)
        if not spans:
            return text
        spans.sort()
        pieces: list[str] = []
        last = 0
        group_start, group_end, category = -1, -1, ""
        for start, _, end in spans:
            if start < group_end:
                group_end = max(group_end, end)
                continue
            if group_start >= 0:
                pieces += [text[last:group_start], placeholder(category)]
                last = group_end
            group_start, group_end = start, end
            category = self._known_category(text[start:end])
            counts[category] += 1
        pieces += [text[last:group_start], placeholder(category), text[group_end:]]
        return "".join(pieces)

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Redacts one piece of free text.

        Args:
            text: A note, annotation or text node.

        Returns:
            The redacted text and the number of replacements per category.
        """
        counts: Counter[str] = Counter()
        if not text:
            return text, counts
        text = self._early.apply(text, counts)
        text = self._redact_known(text, counts)
        return self._late.apply(text, counts), counts


# --------------------------------------------------------------------------- XHTML narratives

SAFE_ATTRIBUTES = frozenset({"xmlns", "class", "colspan", "rowspan", "align", "valign", "border", "width"})
_VOID_TAGS = frozenset({"br", "hr", "img", "col", "area", "base", "input", "meta", "link", "wbr"})


class _XhtmlRedactor(HTMLParser):
    """Re-serialises XHTML with redacted text nodes and only safe attributes."""

    def __init__(self, redact: Callable[[str], tuple[str, Counter[str]]]) -> None:
        super().__init__(convert_charrefs=True)
        self._redact = redact
        self.parts: list[str] = []
        self.counts: Counter[str] = Counter()

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], close: bool) -> None:
        kept = "".join(
            f' {name}="{html.escape(value or "", quote=True)}"' for name, value in attrs if name in SAFE_ATTRIBUTES
        )
        dropped = sum(1 for name, _ in attrs if name not in SAFE_ATTRIBUTES)
        if dropped:
            self.counts["attribute_removed"] += dropped
        self.parts.append(f"<{tag}{kept}{'/' if close else ''}>")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, close=tag in _VOID_TAGS)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, close=True)

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID_TAGS:
            self.parts.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        redacted, counts = self._redact(data)
        self.counts.update(counts)
        self.parts.append(html.escape(redacted, quote=False))


def redact_xhtml(div: str, redactor: Redactor) -> tuple[str, Counter[str]]:
    """Redacts an XHTML narrative (``text.div``): text nodes redacted, unsafe attributes dropped.

    Attributes outside ``SAFE_ATTRIBUTES`` (``href``, ``src``, ``title``, ``alt``, ``id``, ...) are
    removed (counted as ``attribute_removed``); comments and processing instructions are dropped.
    A value split across elements (``<b>Ann</b> Lee``) is redacted part by part.

    Args:
        div: The narrative's XHTML.
        redactor: The patient's redactor.

    Returns:
        The redacted XHTML and counts per category.
    """
    parser = _XhtmlRedactor(redactor.redact)
    parser.feed(div)
    parser.close()
    return "".join(parser.parts), parser.counts
