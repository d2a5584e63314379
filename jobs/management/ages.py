"""Ages given on a command line: 30d, 12h, 90m."""

import datetime
import re

from django.core.management.base import CommandError

_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str, flag: str) -> datetime.timedelta:
    """`text` (a number and d, h or m) as a timedelta; a CommandError naming `flag` if not."""
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if not match:
        raise CommandError(f"{flag} {text!r}: give a number and a unit, such as 30d, 12h or 90m.")
    return datetime.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
