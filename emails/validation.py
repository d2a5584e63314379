"""What an email's addresses and subject may hold: checked when it is queued
(emails.services) and again when it is sent (emails.delivery)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.core.validators import validate_email


class EmailInputError(ValueError):
    """An email that cannot be queued; the message says what to fix."""


# Not only CR and LF end a line: Python's str.splitlines(), which the email package
# uses on header values, breaks at each of these too.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 and C1 control characters (tab aside, for a subject): no address holds one, and
# what a mail server makes of one in a header is anyone's guess.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def check_header(value: str, what: str, allow_tab: bool = True) -> None:
    """Refuses what could end or corrupt the header `value` goes into (header injection)."""
    if _LINE_BREAK.search(value):
        problem = "a line break"
    elif "\x00" in value:
        problem = "a NUL character"
    elif control := _CONTROL.search(value) or (None if allow_tab else re.search("\t", value)):
        problem = f"a control character ({control.group()!r})"
    else:
        return
    raise EmailInputError(f"The {what} contains {problem}, which email headers cannot carry; remove it.")


def clean_addresses(addresses: Iterable[str], what: str, required: bool = False) -> list[str]:
    """The addresses as a list; EmailInputError for one that is not text, could inject a
    header or is not a valid address, or for none when `required`."""
    cleaned = []
    for address in addresses:
        if not isinstance(address, str):
            raise EmailInputError(f"Every {what} address must be text; got {address!r}.")
        check_header(address, f"{what} address {address!r}", allow_tab=False)
        try:
            validate_email(address)
        except ValidationError:
            raise EmailInputError(f"{address!r} is not a valid {what} address.") from None
        cleaned.append(address)
    if required and not cleaned:
        raise EmailInputError(f"An email needs at least one {what} address.")
    return cleaned
