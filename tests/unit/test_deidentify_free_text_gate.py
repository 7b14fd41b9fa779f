"""The anchor gate of large known-value alternations gives exactly the full alternation's result."""

import random

from components.deidentify import free_text
from components.deidentify.free_text import KnownIdentifiers, Redactor


def _known(count: int) -> KnownIdentifiers:
    rnd = random.Random(3)
    words = ["Ann", "Lee", "O'Brien", "Smith-Jones", "Mercy", "General", "Hospital", "St.", "Kline"]
    names = tuple(dict.fromkeys(f"{rnd.choice([*words, 'Zoë'])} {rnd.choice(words)}{n}" for n in range(count)))
    phones = tuple(f"555-{100 + n:03d}-{1000 + n:04d}" for n in range(count // 4))
    identifiers = tuple(f"AB-{n:05d}" for n in range(count // 4))
    addresses = tuple(f"{n} Main St" for n in range(count // 4))
    return KnownIdentifiers(names=names, identifiers=identifiers, telecom=phones, addresses=addresses)


def test_gated_redactor_equals_full_alternation(monkeypatch) -> None:
    known = _known(200)
    gated = Redactor(known, categories=frozenset())
    monkeypatch.setattr(free_text, "GATED_ALTERNATIVES", 10**9)
    full = Redactor(known, categories=frozenset())
    assert gated._gated and not full._gated
    rnd = random.Random(5)
    values = [*known.names, *known.telecom, *known.identifiers, *known.addresses]
    texts = ["nothing to see here", "", "Kelvin \u212aline1 and Zoë", "call 1555 100 1000 or +1 (555) 101-1001"]
    for _ in range(400):
        value = rnd.choice(values)
        form = rnd.choice(
            [value, value.upper(), value.lower(), "1" + value, "x" + value, value + "_", value.replace("-", "")]
        )
        texts.append(f"seen {form}; also {rnd.choice(values)} at 2020-01-02")
    for text in texts:
        assert gated.redact(text) == full.redact(text), text
