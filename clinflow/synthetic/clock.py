"""Time constants and formatting for the synthetic generator (Unix seconds, fixed UTC offsets)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

DAY = 86_400
YEAR = 365.2425 * DAY
MONTH = YEAR / 12

# The simulated world ends here: every history stops at this instant (or at death).
REFERENCE_END = int(datetime(2025, 6, 30, 23, 59, 59, tzinfo=timezone.utc).timestamp())
# Routine care, acute events and deaths are simulated from here on; conditions may start earlier.
HISTORY_START = int(datetime(2018, 1, 1, tzinfo=timezone.utc).timestamp())
# Births are drawn uniformly from this range.
BIRTH_FIRST = int(datetime(1930, 1, 1, tzinfo=timezone.utc).timestamp())
BIRTH_LAST = int(datetime(2020, 12, 31, tzinfo=timezone.utc).timestamp())

_ZONES = {offset: timezone(timedelta(hours=offset)) for offset in range(-12, 15)}


def iso_datetime(seconds: int, utc_offset: int) -> str:
    """Formats Unix seconds as a FHIR dateTime in a fixed UTC offset.

    Args:
        seconds: Unix time.
        utc_offset: Hours from UTC (e.g. ``-5``).

    Returns:
        ``YYYY-MM-DDThh:mm:ss±hh:mm``.
    """
    return datetime.fromtimestamp(seconds, _ZONES[utc_offset]).isoformat()


def iso_date(seconds: int, utc_offset: int) -> str:
    """Formats Unix seconds as a FHIR date (``YYYY-MM-DD``) in a fixed UTC offset."""
    return datetime.fromtimestamp(seconds, _ZONES[utc_offset]).date().isoformat()


def month_starts(first: int, last: int) -> list[int]:
    """Lists the UTC month starts from the month containing ``first`` through ``last``.

    Args:
        first: Unix seconds; its month is the first one.
        last: Unix seconds; months starting after it are left out.

    Returns:
        Unix seconds of each month start.
    """
    when = datetime.fromtimestamp(first, timezone.utc)
    year, month = when.year, when.month
    starts: list[int] = []
    while True:
        start = int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp())
        if start > last:
            return starts
        starts.append(start)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
