"""Free-text redactor speed: the token-index ``Redactor`` vs the original regex design, side by side.

Reads the free texts of a generated FHIR export (``--input``, default ``/tmp/g2000``; generated
with ``clinflow.synthetic.generate_fhir_bulk`` when missing) the way the deidentify stage meets them
(``free_text.elements`` of the policy and base64 ``text/*`` attachments), builds each patient's
redactor and the export's provider redactor (``components.deidentify.transform.provider_redactor``)
with both implementations, and prints build microseconds, microseconds per text and per resource
(patient redactor then provider redactor, as ``transform._free_text`` does) per resource type, and
the ratios. It also counts texts whose outputs differ and texts where the new output keeps a
letter/digit token the old one removed (must be 0). First it times the pattern pass alone (the rules
after the known values, uncached) on the export's clinical notes (DocumentReference texts) and on
notes joined eight at a time, old vs new, and counts differing outputs (must be 0).

The old implementation is kept here as a frozen copy (``LegacyRedactor``, ``legacy_provider_redactor``)
so the differential test ``tests/deid/test_free_text.py`` can compare against it too.

    .venvs/platform/bin/python bench/redactor_speed.py
    .venvs/platform/bin/python bench/redactor_speed.py --input /tmp/g500 --patients 500
    .venvs/platform/bin/python bench/redactor_speed.py --pattern-pass-only
"""

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import gc
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.deidentify.free_text import (
    CATEGORIES,
    KnownIdentifiers,
    Redactor,
    known_identifiers_from_patient,
)

# ============================================================================ frozen old implementation
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


class LegacyRedactor:
    """The pre-token-index redactor (frozen copy): one compiled alternation per patient.

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


def legacy_provider_redactor(values: Iterable[tuple[str, str]]) -> LegacyRedactor | None:
    """``transform.provider_redactor`` built with the legacy class."""
    fields: dict[str, list[str]] = {"names": [], "addresses": [], "telecom": [], "identifiers": []}
    for name, value in values:
        fields[name].append(value)
    if not any(fields.values()):
        return None
    known = KnownIdentifiers(**{name: tuple(dict.fromkeys(items)) for name, items in fields.items()})
    return LegacyRedactor(known, categories=frozenset())


# ============================================================================ export free texts

FREE_TEXT_KEYS = frozenset(
    [
        "note",
        "comment",
        "description",
        "valueString",
        "valueMarkdown",
        "title",
        "text",
        "display",
        "summary",
        "conclusion",
        "instruction",
        "patientInstruction",
        "detail",
        "reason",
        "statement",
    ]
)
CODE_KEYS = frozenset({"system", "code", "valueCode", "version", "profile", "valueUri", "valueCanonical"})
DATE_LIKE = re.compile(r"^\d{4}(?:-\d{2}(?:-\d{2})?)?(?:T|$)")
TOKEN_RE = re.compile(r"[^\W_]+")


def free_texts(value: Any, out: list[str]) -> None:
    """Collects the strings of a resource that the stage sends through the redactor (approximation)."""
    if isinstance(value, dict):
        content_type = value.get("contentType")
        if isinstance(content_type, str) and content_type.startswith("text/") and isinstance(value.get("data"), str):
            with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
                out.append(base64.b64decode(value["data"], validate=True).decode("utf-8"))
        for key, item in value.items():
            if isinstance(item, str):
                if key not in FREE_TEXT_KEYS or key in CODE_KEYS or DATE_LIKE.match(item):
                    continue
                if key == "display" and ("code" in value or "system" in value or "reference" in value):
                    continue
                if key == "text" and "coding" in value:
                    continue
                out.append(item)
            else:
                free_texts(item, out)
    elif isinstance(value, list):
        for item in value:
            free_texts(item, out)


@dataclass
class Export:
    patients: dict[str, dict[str, Any]]
    providers: list[tuple[str, str]]
    resources: list[tuple[str, str, list[str]]]  # (resource type, patient id, free texts)
    total_resources: int


def load_export(directory: Path) -> Export:
    from components.deidentify.transform import provider_values

    patients: dict[str, dict[str, Any]] = {}
    providers: list[tuple[str, str]] = []
    resources: list[tuple[str, str, list[str]]] = []
    total = 0
    for path in sorted(directory.glob("*.ndjson")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                resource = json.loads(line)
                total += 1
                resource_type = resource["resourceType"]
                if resource_type == "Patient":
                    patients[resource["id"]] = resource
                    continue
                if resource_type in {"Practitioner", "Organization", "Location", "PractitionerRole"}:
                    providers.extend(provider_values(resource))
                    continue
                texts: list[str] = []
                free_texts(resource, texts)
                if texts:
                    reference = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
                    resources.append((resource_type, str(reference).removeprefix("Patient/"), texts))
    return Export(patients, list(dict.fromkeys(providers)), resources, total)


def kept_tokens(old: str, new: str) -> set[str]:
    """Tokens of ``new`` that ``old`` removed (case-folded letter/digit runs, placeholders ignored)."""
    old_tokens = Counter(TOKEN_RE.findall(old.casefold()))
    new_tokens = Counter(TOKEN_RE.findall(new.casefold()))
    return {token for token, count in new_tokens.items() if count > old_tokens.get(token, 0)} - {
        category.casefold() for category in CATEGORIES
    }


# ============================================================================ measurement


def time_builds(export: Export, factory: Any) -> tuple[dict[str, Any], float]:
    """Builds every patient's redactor (cold: first build of each) and returns them with the mean microseconds.

    The timed loop keeps no redactor alive (as the stage, which drops each patient's redactor after
    its resources), so the garbage collector's cost of holding 2000 redactors is not measured.
    """
    knowns = {pid: known_identifiers_from_patient(patient) for pid, patient in export.patients.items()}
    start = time.perf_counter()
    for known in knowns.values():
        factory(known)
    elapsed = time.perf_counter() - start
    return {pid: factory(known) for pid, known in knowns.items()}, elapsed / max(1, len(knowns)) * 1e6


def time_redaction(
    export: Export, patient_redactors: dict[str, Any], provider: Any, none_redactor: Any
) -> tuple[dict[str, float], dict[str, int], float, list[list[str]]]:
    per_type: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    outputs: list[list[str]] = []
    start_all = time.perf_counter()
    for resource_type, pid, texts in export.resources:
        redactor = patient_redactors.get(pid, none_redactor)
        start = time.perf_counter()
        out = []
        for text in texts:
            redacted, _ = redactor.redact(text)
            if provider is not None:
                redacted, _ = provider.redact(redacted)
            out.append(redacted)
        per_type[resource_type] += time.perf_counter() - start
        counts[resource_type] += 1
        outputs.append(out)
    return per_type, counts, time.perf_counter() - start_all, outputs


def legacy_pattern_pass(text: str) -> tuple[str, Counter[str]]:
    """The legacy pattern rules that run after the known values (every category), on one text."""
    counts: Counter[str] = Counter()
    for rule in _RULES:
        if rule.category not in {"email", "url"}:
            text = _substitute(rule, text, counts)
    return text, counts


def new_pattern_pass() -> Any:
    """The new pattern pass after the known values (every category), uncached: ``text -> (text, counts)``."""
    from components.deidentify import free_text

    late = free_text._pattern_passes(CATEGORIES)[1]

    def apply(text: str) -> tuple[str, Counter[str]]:
        counts: Counter[str] = Counter()
        run = late._apply_ascii if text.isascii() else late._apply_any
        return run(text, counts), counts

    return apply


def time_pattern_pass(texts: list[str], rounds: int = 5) -> dict[str, float]:
    """Microseconds per text of the pattern pass, old and new, best of interleaved rounds (load-robust)."""
    implementations = {"old": legacy_pattern_pass, "new": new_pattern_pass()}
    best = dict.fromkeys(implementations, float("inf"))
    for round_number in range(rounds):
        for label, apply in implementations.items():
            start = time.perf_counter()
            for text in texts:
                apply(text)
            best[label] = min(best[label], time.perf_counter() - start)
        print(f"    pattern pass round {round_number + 1}/{rounds}", file=sys.stderr)
    return {label: seconds / max(1, len(texts)) * 1e6 for label, seconds in best.items()}


def pattern_pass_report(export: Export, rounds: int) -> int:
    """Prints the pattern-pass microseconds per clinical note (DocumentReference texts) old vs new; checks outputs."""
    notes = [
        max(items, key=len) for resource_type, _, items in export.resources if resource_type == "DocumentReference"
    ]
    if not notes:
        print("pattern pass: no DocumentReference texts in the export")
        return 0
    new = new_pattern_pass()
    differ = sum(1 for text in notes if new(text) != legacy_pattern_pass(text))
    long_notes = ["\n".join(notes[index : index + 8]) for index in range(0, min(len(notes), 4000), 8)]
    differ += sum(1 for text in long_notes if new(text) != legacy_pattern_pass(text))
    sample = notes[: min(len(notes), 3000)]
    per_note = time_pattern_pass(sample, rounds)
    per_long = time_pattern_pass(long_notes[:300], max(2, rounds // 2))
    mean = sum(map(len, sample)) / len(sample)
    mean_long = sum(map(len, long_notes[:300])) / max(1, len(long_notes[:300]))
    print(
        f"pattern pass (rules after the known values, uncached, raw notes): {len(sample)} notes of {mean:.0f} chars: "
        f"old {per_note['old']:.1f} us, new {per_note['new']:.1f} us per note "
        f"({per_note['old'] / per_note['new']:.1f}x); "
        f"{len(long_notes[:300])} notes of 8 joined ({mean_long:.0f} chars): old {per_long['old']:.1f} us, "
        f"new {per_long['new']:.1f} us ({per_long['old'] / per_long['new']:.1f}x)"
    )
    print(f"pattern pass outputs: {differ} of {len(notes) + len(long_notes)} texts differ (must be 0)")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=Path("/tmp/g2000"))
    parser.add_argument("--patients", type=int, default=2000, help="patients to generate when --input is missing")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-legacy", action="store_true", help="measure the new redactor only")
    parser.add_argument("--pattern-pass-only", action="store_true", help="only the pattern pass on clinical notes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of the pattern pass")
    args = parser.parse_args(argv)
    if not args.input.exists():
        from clinflow.synthetic import generate_fhir_bulk

        print(f"generating {args.patients} patients into {args.input} ...", file=sys.stderr)
        generate_fhir_bulk(args.input, patients=args.patients, seed=args.seed)
    export = load_export(args.input)
    gc.collect()
    gc.freeze()  # the loaded export is not garbage: keep the collector from rescanning it in the timed loops
    texts = [text for _, _, items in export.resources for text in items]
    print(
        f"export {args.input}: {export.total_resources} resources, {len(export.patients)} patients, "
        f"{len(export.resources)} resources with {len(texts)} free texts "
        f"(mean {sum(map(len, texts)) / max(1, len(texts)):.0f} chars, max {max(map(len, texts), default=0)}), "
        f"{len(export.providers)} provider values"
    )
    pattern_status = pattern_pass_report(export, args.rounds)
    if args.pattern_pass_only:
        return pattern_status
    from components.deidentify.transform import provider_redactor

    implementations: list[tuple[str, Any, Any]] = [("new", Redactor, provider_redactor)]
    if not args.no_legacy:
        implementations.append(("old", LegacyRedactor, legacy_provider_redactor))
    results: dict[str, dict[str, Any]] = {}
    for label, factory, provider_factory in implementations:
        start = time.perf_counter()
        provider = provider_factory(export.providers)
        provider_ms = (time.perf_counter() - start) * 1e3
        redactors, build_us = time_builds(export, factory)
        per_type, counts, total_s, outputs = time_redaction(export, redactors, provider, factory(None))
        results[label] = {
            "build_us": build_us,
            "provider_ms": provider_ms,
            "per_type": per_type,
            "counts": counts,
            "total_s": total_s,
            "outputs": outputs,
        }
        print(
            f"[{label}] provider redactor build {provider_ms:.1f} ms; patient redactor build {build_us:.1f} us "
            f"(known_identifiers_from_patient excluded); all free texts {total_s:.2f} s "
            f"= {total_s / max(1, export.total_resources) * 1e6:.1f} us per resource of the export"
        )
        for resource_type in sorted(counts):
            print(
                f"    {resource_type:<20} {counts[resource_type]:>7} resources "
                f"{per_type[resource_type] / counts[resource_type] * 1e6:9.1f} us each"
            )
    if "old" in results:
        new, old = results["new"], results["old"]
        print("ratios old/new:")
        print(f"    patient redactor build  {old['build_us'] / new['build_us']:.1f}x")
        print(f"    provider redactor build {old['provider_ms'] / new['provider_ms']:.1f}x")
        print(f"    all free texts          {old['total_s'] / new['total_s']:.1f}x")
        for resource_type in sorted(new["counts"]):
            print(f"    {resource_type:<23} {old['per_type'][resource_type] / new['per_type'][resource_type]:.1f}x")
        differ = weaker = 0
        for old_texts, new_texts in zip(old["outputs"], new["outputs"], strict=True):
            for old_text, new_text in zip(old_texts, new_texts, strict=True):
                if old_text != new_text:
                    differ += 1
                    if kept_tokens(old_text, new_text):
                        weaker += 1
        print(f"outputs: {differ} of {len(texts)} texts differ; {weaker} keep a token the old redactor removed")
        return 1 if weaker or pattern_status else 0
    return pattern_status


if __name__ == "__main__":
    raise SystemExit(main())
