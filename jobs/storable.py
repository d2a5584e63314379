"""What PostgreSQL's text and jsonb columns can hold, asked before anything is written.

They hold neither NUL nor half of a UTF-16 surrogate pair (JSON's "\\ud800" decodes to
one): an INSERT of either fails with a DataError and aborts the transaction it runs
in. Enqueue (jobs.services), the worker's message check (jobs.task_message) and the
dead-letter keeper (jobs.dead_letters) ask here first.
"""

from __future__ import annotations


def unstorable_text(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` ("a NUL character (\\x00)"), or None if it can."""
    if "\x00" in text:
        return "a NUL character (\\x00)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"a lone surrogate ({text[exc.start]!r}, half of a UTF-16 pair, not a character)"
    return None


def find_unstorable(value, where: str) -> tuple[str, str] | None:
    """(where, why) of the first string or dict key in `value` that PostgreSQL cannot
    store; None if there is none. A loop, not recursion: what the C encoder took may
    nest deeper than Python's recursion limit allows."""
    stack = [(value, where)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            reason = unstorable_text(value)
            if reason:
                return f"Argument {where}", reason
        elif isinstance(value, dict):
            for key in value:
                reason = unstorable_text(key) if isinstance(key, str) else None
                if reason:
                    return f"The dict key {key!r} in argument {where}", reason
            stack.extend((item, f"{where}[{key!r}]") for key, item in reversed(list(value.items())))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{where}[{n}]") for n, item in reversed(list(enumerate(value))))
    return None
