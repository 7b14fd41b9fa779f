"""FHIR date, dateTime and instant values: recognise, shift by whole days, cap ages over 89.

Shifting keeps the value's precision and form: ``YYYY-MM-DD`` and the date part of a
``dateTime``/``instant`` move by the offset while the time of day and the zone stay as they
were; a ``YYYY-MM`` value shifts the 15th of that month and keeps month precision; a ``YYYY``
value shifts 2 July of that year and keeps year precision.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache

# FHIR R4 date / dateTime / instant (seconds optional so hand-written "T10:30" values still match).
FULL_DATE_RE = re.compile(
    r"^(\d{4})-(0[1-9]|1[0-2])(?:-(0[1-9]|[12]\d|3[01])"
    r"(T(?:[01]\d|2[0-3]):[0-5]\d(?::(?:[0-5]\d|60)(?:\.\d{1,9})?)?(?:Z|[+-](?:0\d|1[0-4]):[0-5]\d)?)?)?$"
)
YEAR_RE = re.compile(r"^\d{4}$")

# Element names whose values are dates even at year precision (a bare "1984" elsewhere may be a code).
DATE_KEY_NAMES = frozenset(
    {"date", "start", "end", "issued", "created", "recorded", "authoredOn", "lastUpdated", "instant", "started"}
)
DATE_KEY_SUFFIXES = ("Date", "DateTime", "Instant")


def is_date_key(key: str) -> bool:
    """Tells whether an element name holds a date/dateTime/instant by FHIR naming convention."""
    return key in DATE_KEY_NAMES or key.endswith(DATE_KEY_SUFFIXES)


def looks_like_date(value: str, key: str) -> bool:
    """Tells whether a string is a FHIR date/dateTime/instant value.

    Args:
        value: The string.
        key: Its element name; year-only values count only under date-named elements.

    Returns:
        True when the value must be shifted (or removed) as a date.
    """
    if len(value) < 4 or not value[:4].isdigit():
        return False
    if FULL_DATE_RE.match(value):
        return True
    return bool(YEAR_RE.match(value)) and is_date_key(key)


@lru_cache(maxsize=1 << 16)  # the resources of one visit repeat its timestamps
def shift_date(value: str, days: int) -> str | None:
    """Shifts a FHIR date/dateTime/instant by whole days, keeping its precision and time part.

    Args:
        value: A value for which ``looks_like_date`` is true.
        days: The patient's offset.

    Returns:
        The shifted value, or None when it is not a real calendar date (e.g. ``2019-02-30``) or
        would leave the years 1-9999; the caller then removes it.
    """
    delta = dt.timedelta(days=days)
    try:
        if YEAR_RE.match(value):
            return f"{(dt.date(int(value), 7, 2) + delta).year:04d}"
        match = FULL_DATE_RE.match(value)
        if match is None:
            return None
        year, month, day, rest = match.groups()
        if day is None:
            shifted = dt.date(int(year), int(month), 15) + delta
            return f"{shifted.year:04d}-{shifted.month:02d}"
        return (dt.date(int(year), int(month), int(day)) + delta).isoformat() + (rest or "")
    except (ValueError, OverflowError):
        return None


def parse_day(value: str | None) -> dt.date | None:
    """Returns the calendar day of a date/dateTime string (first day of the period when partial)."""
    if not value:
        return None
    try:
        if YEAR_RE.match(value):
            return dt.date(int(value), 1, 1)
        match = FULL_DATE_RE.match(value)
        if match is None:
            return None
        year, month, day, _ = match.groups()
        return dt.date(int(year), int(month), int(day or 1))
    except ValueError:
        return None


def age_in_years(birth: dt.date, on: dt.date) -> int:
    """Returns the completed years between ``birth`` and ``on``."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def cap_birth_date(shifted_birth: str, shifted_reference: dt.date, cap: int = 90) -> str:
    """Moves a shifted birth date so the age at the (shifted) reference day is exactly ``cap``.

    Month and day (and the value's precision) are kept; only the year changes. 29 February
    becomes 28 February when the new year is not a leap year.

    Args:
        shifted_birth: The already shifted ``birthDate`` (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``).
        shifted_reference: The patient's reference day (end of data or death), shifted too.
        cap: The age to report.

    Returns:
        The capped birth date in the same form.
    """
    parts = shifted_birth.split("-")
    month = int(parts[1]) if len(parts) > 1 else 1
    day = int(parts[2][:2]) if len(parts) > 2 else 1
    year = shifted_reference.year - cap - ((shifted_reference.month, shifted_reference.day) < (month, day))
    if len(parts) == 1:
        return f"{shifted_reference.year - cap:04d}"
    if len(parts) == 2:
        return f"{year:04d}-{month:02d}"
    if month == 2 and day == 29 and not _is_leap(year):
        day = 28
    return f"{year:04d}-{month:02d}-{day:02d}"


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
