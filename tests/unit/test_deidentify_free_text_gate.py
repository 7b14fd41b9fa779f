"""The token index of known values redacts what the original regex alternation redacted (frozen copy in bench/)."""

import random
import re
from collections import Counter
from types import ModuleType

from components.deidentify.free_text import KnownIdentifiers, Redactor


def _known(count: int) -> KnownIdentifiers:
    rnd = random.Random(3)
    words = ["Ann", "Lee", "O'Brien", "Smith-Jones", "Mercy", "General", "Hospital", "St.", "Kline", "(Dr.)"]
    names = tuple(dict.fromkeys(f"{rnd.choice([*words, 'Zoë'])} {rnd.choice(words)}{n}" for n in range(count)))
    phones = tuple(f"555-{100 + n:03d}-{1000 + n:04d}" for n in range(count // 4))
    identifiers = tuple(f"AB-{n:05d}" for n in range(count // 4))
    addresses = tuple(f"{n} Main St" for n in range(count // 4))
    return KnownIdentifiers(
        names=(*names, "- Ann", "_x"),
        identifiers=(*identifiers, "999-41-2207", "S99954321"),
        telecom=(*phones, "ann.lee@example.org", "ext 4411"),
        addresses=addresses,
        dates=("1948-07-04", "2021-11-30"),
    )


def _texts(known: KnownIdentifiers, count: int) -> list[str]:
    rnd = random.Random(5)
    values = [*known.names, *known.telecom, *known.identifiers, *known.addresses, "07/04/1948", "July 4, 1948"]
    texts = [
        "nothing to see here",
        "",
        "Kelvin \u212aline1 and Zoë, ſt. kline2",
        "call 1555 100 1000 or +1 (555) 101-1001 or 1(555)102-1002 or x1-555-103-1003 or 5551041004",
        "ids 999412207, 999 41 2207, 99941 2207, s99954321, AB00001, ab-00002x, 4July1948, 19480704",
    ]
    for _ in range(count):
        value = rnd.choice(values)
        form = rnd.choice(
            [
                value,
                value.upper(),
                value.lower(),
                "1" + value,
                "x" + value,
                value + "_",
                "_" + value,
                value.replace("-", ""),
                value.replace(" ", "  "),
                value.replace(" ", "\n"),
                f"({value})",
            ]
        )
        texts.append(f"seen {form}; also {rnd.choice(values)} at 2020-01-02")
    return texts


def kept(old: str, new: str) -> set[str]:
    """Letter/digit tokens of ``new`` that ``old`` had removed."""
    old_tokens = re.findall(r"[^\W_]+", old.casefold())
    new_tokens = re.findall(r"[^\W_]+", new.casefold())
    return {token for token in set(new_tokens) if new_tokens.count(token) > old_tokens.count(token)}


def test_token_index_equals_the_original_alternation(legacy_redactor: ModuleType) -> None:
    module = legacy_redactor
    known = _known(200)
    new = Redactor(known, categories=frozenset())
    old = module.LegacyRedactor(known, categories=frozenset())
    differ = []
    for text in _texts(known, 600):
        new_text, new_counts = new.redact(text)
        old_text, old_counts = old.redact(text)
        assert not kept(old_text, new_text), (text, old_text, new_text)
        if (new_text, new_counts) != (old_text, old_counts):
            differ.append((text, old_text, new_text))
    assert differ == []


def test_patient_sized_redactor_equals_the_original_with_patterns(legacy_redactor: ModuleType) -> None:
    module = legacy_redactor
    known = _known(12)
    new, old = Redactor(known), module.LegacyRedactor(known)
    for text in _texts(known, 300):
        assert new.redact(text) == old.redact(text), text


def test_pattern_rules_equal_the_original_rules(legacy_redactor: ModuleType) -> None:
    module = legacy_redactor
    rnd = random.Random(11)
    pieces = [
        "MA 02139",
        "MA, 02139",
        "MA ,02139",
        "MA\n\t02139-1234",
        "xMA 02139",
        "New York 10001",
        "New  York 10001",
        "Arkansas 72201",
        "West Virginia 25301",
        "Texas, 75001-",
        "TX 750012",
        "CA 90210_",
        "(CA 90210)",
        "ca 90210",
        "April 5, 2021",
        "5th of April",
        "seen 04/05/2021",
        "1.2.3.4",
        "fe80::1",
        "SSN 123456789",
        "age 95",
        "may 2",
        "May 2",
        "MAY 2, 2021",
        "Sept 5",
        "SEPT. 5th",
        "Septem 5",
        "JANuary 5",
        "5 JUNE 2020",
        "June2020",
        "3rd of Jun. 1999",
        "June, 2020",
        "ab:cd:ef:01:23:45:67:89",
        "1:2:3:4:5:6:7:8",
        "t 10:30: a: b: c: d: e: f:",
        "123-45-6789",
        "x123-45-6789",
        "-123 45 6789",
        "123 45-6789",
        "WWW.x.org",
        "HTTPS://X.ORG/a",
        "2021-04-05",
        "x2021-04-05",
        "/2021/4/5",
        ".20210405",
        "-1999-01-01",
        "_1999-01-01T10:30Z",
        "1899/12/31",
        "19991231",
        "a19991231",
        "93-year-old",
        "93 YEARS OLD",
        "101 yrs-old",
        "95yo",
        "95 Y/O",
        "99 y.o.",
        "MRN: A1234567",
        "#1234567",
        "call 617-555-0100 x12",
        "phone 6175550100",
        "a@b.org",
        "www.x.org/a",
    ]
    redactor, old = Redactor(), module.LegacyRedactor()
    for _ in range(400):
        text = " ".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 4)))
        assert redactor.redact(text) == old.redact(text), text


# --------------------------------------------------------------------------- pattern pass: fast ASCII road

_PHI_SNIPPETS = [
    "+1 (555) 234-5678",
    "1-555-234-5678 ext. 12",
    "1.555.234.5678",
    "(555)234-5678",
    "555 234 5678 x 9",
    "555-234-5678-",
    "+555-234-5678",
    "5552345678",
    "phone: 5552345678",
    "Tel #5552345678",
    "10/04/1959",
    "9/18/18",
    "09-04-2018 18:08",
    "1.2.20",
    "12/31/99.5",
    "3/4/5/2020",
    "2020-01-02T10:30:00Z",
    "2020-01-02 10:30:00.123+05:00",
    "1899/12/31",
    "20210405",
    "19991231x",
    "4th of September, 2018",
    "4 SEPT 2018",
    "5-Jun-2020",
    "September 4, 2018",
    "Sept. 5th",
    "JANUARY 2020",
    "Dec, 1999",
    "on the 3rd of Jun. 1999",
    "MRN: 69650364",
    "MRN:\n A123-45",
    "mr # 12345",
    "Medical Record Number: AB1234",
    "patient id 123-4567",
    "acct#9876543",
    "account no. X12345",
    "#1234567",
    "&#1234567",
    "Seattle, WA 98165",
    "New York 10001-1234",
    "West Virginia\n25301",
    "MA,02139",
    "xMA 02139",
    "TX 750012",
    "02139-1234",
    "123-45-6789",
    "123 45 6789",
    "123\t45\t6789",
    "SSN 123456789",
    "social security no. 123456789",
    "95-year-old",
    "101 YEARS OLD",
    "93 yrs-old",
    "99 y.o.",
    "95yo",
    "aged 92",
    "Age: 140",
    "58-year-old",
    "1.2.3.4",
    "255.255.255.255.1",
    "fe80::1",
    "a@b.org",
    "www.x.org",
]
_FILLER = [
    "seen",
    "for",
    "BP 132/84",
    "lisinopril 10 MG",
    "x",
    "Dr.",
    "at",
    "on",
    "(",
    ")",
    "-",
    "/",
    ".",
    ",",
    "1",
    "22",
]
_JOINERS = [" ", "  ", "\n", "\n\n", "\t", "", ", ", "-", "/", ".", ":", "\x1c", "\r\n", "#"]


def _long_phi_text(rnd: random.Random, parts: int) -> str:
    out = []
    for _ in range(parts):
        out.append(rnd.choice(_PHI_SNIPPETS) if rnd.random() < 0.6 else rnd.choice(_FILLER))
        out.append(rnd.choice(_JOINERS))
    return "".join(out)


def test_fast_ascii_pattern_pass_equals_the_reference_and_the_legacy_rules(legacy_redactor: ModuleType) -> None:
    from components.deidentify.free_text import CATEGORIES, _pattern_passes

    module = legacy_redactor
    late = _pattern_passes(CATEGORIES)[1]
    legacy_late = [rule for rule in module._RULES if rule.category not in {"email", "url"}]
    rnd = random.Random(23)
    checked = 0
    for _ in range(700):
        text = _long_phi_text(rnd, rnd.randint(1, 60))
        fast_counts: Counter[str] = Counter()
        reference_counts: Counter[str] = Counter()
        fast = late._apply_ascii(text, fast_counts)
        reference = late._apply_any(text, reference_counts)
        old_counts: Counter[str] = Counter()
        old = text
        for rule in legacy_late:
            old = module._substitute(rule, old, old_counts)
        assert (fast, fast_counts) == (reference, reference_counts) == (old, old_counts), text
        checked += 1
    assert checked == 700


def test_non_ascii_texts_take_the_reference_road_with_the_same_result(legacy_redactor: ModuleType) -> None:
    module = legacy_redactor
    rnd = random.Random(29)
    for _ in range(150):
        text = _long_phi_text(rnd, rnd.randint(1, 30))
        position = rnd.randint(0, len(text))
        text = text[:position] + rnd.choice(["é", "٣", "\u2003", "ſ", "\u212a"]) + text[position:]
        assert Redactor().redact(text) == module.LegacyRedactor().redact(text), text
