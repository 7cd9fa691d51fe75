"""Durations written the way people write them: "1h30m", "45s", "2d 4h"."""

import re

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
PART = re.compile(r"(\d+)\s*([dhms])")


def parse_duration(text):
    """Seconds in a duration such as "1h 30m"; ValueError if anything else is in the text."""
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError("empty duration")
    total = 0
    position = 0
    for match in PART.finditer(cleaned):
        if cleaned[position:match.start()].strip():
            raise ValueError(f"unexpected text in {text!r}")
        total += int(match.group(1)) * UNITS[match.group(2)]
        position = match.end()
    if cleaned[position:].strip() or position == 0:
        raise ValueError(f"unexpected text in {text!r}")
    return total


def format_duration(seconds):
    """The shortest form parse_duration reads back, largest units first ("0s" for zero)."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def is_leap_year(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year, month):
    if month == 2:
        return 29 if is_leap_year(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def add_months(year, month, day, months):
    """The date `months` later, the day clamped to the end of a shorter month."""
    index = year * 12 + (month - 1) + months
    new_year, new_month = divmod(index, 12)
    new_month += 1
    return new_year, new_month, min(day, days_in_month(new_year, new_month))
