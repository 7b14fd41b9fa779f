"""Free-text PHI redaction for clinical notes, annotations and narratives.

Two layers, applied by one ``Redactor`` per patient:

1. **Known identifiers**: every identifying value of the patient's own record (name parts,
   maiden name, birthplace, identifier values, phones, e-mails, street lines, city, postal code,
   birth/death dates in common renderings) is compiled into one case-insensitive, whole-word
   alternation, longest value first. Digits of phones and identifiers match with any common
   separators (``555-234-5678`` = ``(555) 234 5678`` = ``5552345678``; ``999-12-3456`` =
   ``999123456``).
2. **Patterns** that are PHI whoever they belong to: e-mail, URL, IPv4/IPv6, SSN, phone, dates
   (ISO, numeric, month names, plausible ``YYYYMMDD``), MRN-like ids (``MRN: 12345``,
   ``#123456789``), ZIP after a state (and any ZIP+4), ages over 89.

Replacements are ``[NAME]``, ``[MRN]``, ``[DATE]`` ... (``[<CATEGORY>]``); ``redact`` returns the
redacted text and a count per category (never the values). XHTML narratives go through
``redact_xhtml``, which redacts text nodes and drops every attribute except a small safe set.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

MAIDEN_NAME_URL = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"

CATEGORIES = frozenset(
    {"name", "identifier", "mrn", "ssn", "phone", "email", "url", "ip", "date", "address", "zip", "age"}
)
MIN_KNOWN_CHARS = 2  # shorter known values (initials) would redact ordinary letters
# A known-value alternation with more alternatives than this (the providers of a whole export) is
# skipped for a text in which no alternative's anchor occurs (see ``Redactor._known_pattern``).
GATED_ALTERNATIVES = 128
_FIRST_RUN_RE = re.compile(r"[^\W_]+")
RUN, PREFIX, PHONE = "run", "prefix", "phone"  # how an alternative's anchor must occur in a text
_ASCII_RUN_RE = re.compile(r"[a-z0-9]+")

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


def _key(text: str) -> str:
    """Normalises a value or a match for category lookup: case-folded letters and digits only."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


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
    try:
        day = dt.date.fromisoformat(iso[:10])
    except ValueError:
        return []
    month = _MONTHS[day.month - 1]
    yy = f"{day.year % 100:02d}"
    return [
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
    ]


def _ascii_runs(value: str) -> list[str]:
    """The lower-cased ASCII letter/digit runs of a value, in order (runs with other letters left out)."""
    return [run.lower() for run in _FIRST_RUN_RE.findall(value) if run.isascii()]


def _run_anchor(value: str) -> tuple[str | None, str]:
    """The longest letter/digit run of a literal value (words pattern, e-mail): a whole run of any match."""
    runs = _ascii_runs(value)
    return (max(runs, key=len), RUN) if runs else (None, RUN)


def _prefix_anchor(value: str) -> tuple[str | None, str]:
    """The first letter/digit run of a token or date pattern: every match starts a run with it."""
    match = _FIRST_RUN_RE.search(value)
    if match is None or not match.group(0).isascii():
        return None, PREFIX
    return match.group(0).lower(), PREFIX


def _known_alternatives(
    known: KnownIdentifiers,
) -> tuple[list[tuple[int, str, tuple[str | None, str]]], dict[str, str]]:
    """Builds (sort length, regex, anchor) alternatives and a normalised-match -> category lookup.

    The anchor ``(text, mode)`` is a necessary condition of a match in an ASCII text (``Redactor``
    skips the known values of a text that meets none): ``run``: a lower-cased letter/digit run of
    the text equals it; ``prefix``: a run starts with it; ``phone``: a run starts with it, or with
    ``1`` and then it (a country code); a None text means no such condition.
    """
    alternatives: list[tuple[int, str, tuple[str | None, str]]] = []
    categories: dict[str, str] = {}

    def add(pattern: str, length: int, keys: Iterable[str], category: str, anchor: tuple[str | None, str]) -> None:
        alternatives.append((length, pattern, anchor))
        for key in keys:
            categories.setdefault(key, category)

    for name in known.names:
        if len(_key(name)) >= MIN_KNOWN_CHARS:
            add(_words_pattern(name), len(name), [_key(name)], "name", _run_anchor(name))
    for address in known.addresses:
        if len(_key(address)) >= MIN_KNOWN_CHARS:
            category = "zip" if re.fullmatch(r"\d{5}(?:-\d{4})?", address) else "address"
            add(_words_pattern(address), len(address), [_key(address)], category, _run_anchor(address))
    for value in known.telecom:
        digits = _phone_digits(value)
        if "@" in value:
            add(re.escape(value), len(value), [_key(value)], "email", _run_anchor(value))
        elif len(digits) == 10:
            add(_phone_pattern(digits), len(value), [digits, "1" + digits], "phone", (digits[:3], PHONE))
            local = rf"{digits[3:6]}[\s.\-]?{digits[6:]}"  # local 7-digit form
            add(local, 8, [digits[3:]], "phone", (digits[3:6], PREFIX))
        elif len(_key(value)) >= MIN_KNOWN_CHARS:
            add(_token_pattern(value), len(value), [_key(value)], "phone", _prefix_anchor(value))
    for value in known.identifiers:
        if len(_key(value)) >= MIN_KNOWN_CHARS:
            add(_token_pattern(value), len(value), [_key(value)], "identifier", _prefix_anchor(value))
    for iso in known.dates:
        for rendering in date_renderings(iso):
            pattern = r"\s*".join(re.escape(part) for part in rendering.split())
            add(pattern, len(rendering), [_key(rendering)], "date", _prefix_anchor(rendering))
    return alternatives, categories


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class _Rule:
    """One pattern rule: the matches of ``group`` (0 = whole match) become ``[CATEGORY]``."""

    category: str
    regex: re.Pattern[str]
    group: int = 0
    gate: str | re.Pattern[str] | None = None  # a substring or pattern that must occur first (cheap skip)

    def applies(self, text: str) -> bool:
        """Tells whether the rule can match at all (the gate occurs in the text)."""
        if self.gate is None:
            return True
        if isinstance(self.gate, str):
            return self.gate in text
        return self.gate.search(text) is not None


def _month_alternation() -> str:
    forms: list[str] = []
    for month in _MONTHS:
        for form in {month, month[:3], "Sept" if month == "September" else month[:3]}:
            forms.extend((form, form.upper()))
    return "(?:" + "|".join(sorted(set(forms), key=len, reverse=True)) + r")\.?"


_MONTH = _month_alternation()
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH_NUM = r"(?:0?[1-9]|1[0-2])"
_ORDINAL = r"(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]\d{2}|20\d{2})"
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


def _rules() -> tuple[_Rule, ...]:
    """Compiles the pattern rules once, in the order they are applied."""
    month_gate = re.compile(r"(?:JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)", _I)
    return (
        _Rule(
            "email",
            re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            gate="@",
        ),
        _Rule(
            "url",
            re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]", _I),
            gate=re.compile(r"://|www\.", _I),
        ),
        _Rule(
            "ip", re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"), gate=re.compile(r"\d\.\d+\.\d")
        ),
        _Rule(
            "ip",
            re.compile(
                rf"(?<![\w:])(?:(?:{_HEX}:){{7}}{_HEX}|{_HEX}(?::{_HEX}){{0,6}}::(?:{_HEX}(?::{_HEX}){{0,6}})?"
                rf"|::{_HEX}(?::{_HEX}){{0,6}})(?![\w:])"
            ),
            gate=re.compile(r"::|(?:\w+:){7}"),
        ),
        _Rule("ssn", re.compile(r"(?<![\w-])\d{3}([-\s])\d{2}\1\d{4}(?![\w-])")),
        _Rule(
            "ssn",
            re.compile(r"\b(?:SSN|SS#|social\s+security(?:\s+(?:number|no\.?|#))?)\s*[:#]?\s*(\d{9})\b", _I),
            1,
            re.compile(r"\d{9}"),
        ),
        _Rule(
            "phone",
            re.compile(
                r"(?<![\w(+-])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}"
                r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?(?![\w-])",
                _I,
            ),
        ),
        _Rule(
            "phone",
            re.compile(
                r"\b(?:phone|tel|telephone|cell|mobile|fax|pager)\.?\s*(?:no\.?|#|number)?\s*[:#]?\s*(\d{10})\b", _I
            ),
            1,
            re.compile(r"\d{10}"),
        ),
        _Rule(
            "date",
            re.compile(
                rf"(?<![\w/.-]){_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
                r"(?:[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\w/-])"
            ),
        ),
        _Rule("date", re.compile(rf"(?<![\w/.-]){_YEAR}/(?:0?[1-9]|1[0-2])/{_DAY}(?![\w/-])")),
        _Rule(
            "date",
            re.compile(rf"(?<![\w/.-]){_MONTH_NUM}([/.-]){_DAY}\1(?:{_YEAR}|\d{{2}})(?![\w/-]|\.\d)"),
        ),
        _Rule(
            "date",
            re.compile(rf"(?<![\w/.-]){_YEAR}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![\w/-])"),
            gate=re.compile(r"\d{8}"),
        ),
        _Rule(
            "date",
            re.compile(rf"\b{_DAY}{_ORDINAL}(?:\s+of)?[\s-]+{_MONTH}(?:,?[\s-]+{_YEAR})?(?!\w)"),
            gate=month_gate,
        ),
        _Rule(
            "date",
            re.compile(rf"\b{_MONTH}\s+{_DAY}{_ORDINAL}(?:,?\s+{_YEAR})?(?!\w)|\b{_MONTH},?\s+{_YEAR}\b"),
            gate=month_gate,
        ),
        _Rule(
            "mrn",
            re.compile(
                r"\b(?:MRN|MR\s*#|medical\s+record(?:\s+(?:number|no\.?|#))?|patient\s+id|acct|account(?:\s+(?:number|no\.?|#))?)"
                r"\s*[:#]?\s*(?:#\s*)?([A-Z]{0,3}\d[\dA-Z-]{3,})\b",
                _I,
            ),
            1,
        ),
        _Rule("mrn", re.compile(r"(?<![\w&#])#\s?(\d{6,})\b"), 1, "#"),
        _Rule(
            "zip",
            re.compile(rf"(?:\b(?:{'|'.join(_STATES)})|\b(?:{_STATE_NAMES})),?\s+(\d{{5}}(?:-\d{{4}})?)(?![\w-])"),
            1,
            re.compile(r"\d{5}"),
        ),
        _Rule("zip", re.compile(r"(?<![\w-])\d{5}-\d{4}(?![\w-])"), gate=re.compile(r"\d{5}-")),
        _Rule(
            "age",
            re.compile(
                r"\b(9\d|1[0-4]\d)(?:\s*|-)(?:years?|yrs?|y)(?:\s*|-)old\b|\b(9\d|1[0-4]\d)\s*(?:yo|y/o|y\.o\.)", _I
            ),
            gate=re.compile(r"(?<!\d)(?:9\d|1[0-4]\d)(?!\d)"),
        ),
        _Rule(
            "age",
            re.compile(r"\b(?:aged?|age:)\s*(9\d|1[0-4]\d)\b", _I),
            1,
            re.compile(r"(?<!\d)(?:9\d|1[0-4]\d)(?!\d)"),
        ),
    )


_RULES = _rules()


def _substitute(rule: _Rule, text: str, counts: Counter[str]) -> str:
    """Applies one pattern rule, replacing the whole match or its ``group``."""
    if not rule.applies(text):
        return text
    replacement = placeholder(rule.category)

    def replace(match: re.Match[str]) -> str:
        counts[rule.category] += 1
        if rule.group == 0:
            return replacement
        start, end = match.span(rule.group)
        whole_start = match.start()
        whole = match.group(0)
        return whole[: start - whole_start] + replacement + whole[end - whole_start :]

    return rule.regex.sub(replace, text)


class Redactor:
    """Redacts one patient's known identifiers and pattern-based PHI from free text.

    Build one per patient (compiling the known-value alternation costs well under a millisecond
    for a typical record) and call ``redact`` for each of their notes.
    """

    def __init__(self, known: KnownIdentifiers | None = None, categories: frozenset[str] | None = None) -> None:
        """Compiles the patient's known values.

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
        self._rules = tuple(rule for rule in _RULES if rule.category in enabled)
        self._early = tuple(rule for rule in self._rules if rule.category in {"email", "url"})
        self._late = tuple(rule for rule in self._rules if rule.category not in {"email", "url"})
        self._known: re.Pattern[str] | None = None
        self._known_categories: dict[str, str] = {}
        self._gated = False
        self._run_anchors: frozenset[str] = frozenset()
        self._prefix_anchors: frozenset[str] = frozenset()
        self._phone_anchors: frozenset[str] = frozenset()
        self._prefix_lengths: tuple[int, ...] = ()
        if known is not None:
            alternatives, self._known_categories = _known_alternatives(known)
            if alternatives:
                ordered = dict.fromkeys(pattern for _, pattern, _ in sorted(alternatives, key=lambda item: -item[0]))
                self._known = re.compile(r"(?<!\w)(?:" + "|".join(ordered) + r")(?!\w)", re.IGNORECASE)
                anchors = [anchor for _, _, anchor in alternatives]
                if len(ordered) > GATED_ALTERNATIVES and all(text is not None for text, _ in anchors):
                    self._index_anchors(anchors)

    def _index_anchors(self, anchors: list[tuple[str | None, str]]) -> None:
        """Indexes the alternatives' anchors, so a text none of them can match skips the alternation."""
        by_mode: dict[str, set[str]] = {RUN: set(), PREFIX: set(), PHONE: set()}
        for text, mode in anchors:
            if text is not None:
                by_mode[mode].add(text)
                if mode == PHONE:
                    by_mode[PREFIX].add(text)
        self._run_anchors = frozenset(by_mode[RUN])
        self._prefix_anchors = frozenset(by_mode[PREFIX])
        self._phone_anchors = frozenset(by_mode[PHONE])
        self._prefix_lengths = tuple(sorted({len(text) for text in by_mode[PREFIX]}))
        self._gated = True

    def _known_pattern(self, text: str) -> re.Pattern[str] | None:
        """The known-value alternation, or None when no alternative can match ``text``.

        Only for a large alternation (the providers of an export) and an ASCII text: the
        alternation is skipped when no anchor of any alternative occurs in the text as its mode
        requires (a necessary condition of a match, see ``_known_alternatives``); otherwise the
        whole alternation runs, so the result is always the alternation's own.
        """
        if not self._gated or not text.isascii():
            return self._known
        runs = set(_ASCII_RUN_RE.findall(text.lower()))
        if not self._run_anchors.isdisjoint(runs):
            return self._known
        prefixes, phones = self._prefix_anchors, self._phone_anchors
        for run in runs:
            for length in self._prefix_lengths:
                if length > len(run):
                    break
                if run[:length] in prefixes or (run[0] == "1" and run[1 : 1 + length] in phones):
                    return self._known
        return None

    def _known_category(self, match: re.Match[str]) -> str:
        key = _key(match.group(0))
        category = self._known_categories.get(key)
        if category is None and key.startswith("1"):
            category = self._known_categories.get(key[1:])
        return category or "identifier"

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
        for rule in self._early:
            text = _substitute(rule, text, counts)
        known = self._known_pattern(text)
        if known is not None:

            def replace(match: re.Match[str]) -> str:
                category = self._known_category(match)
                counts[category] += 1
                return placeholder(category)

            text = known.sub(replace, text)
        for rule in self._late:
            text = _substitute(rule, text, counts)
        return text, counts


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
