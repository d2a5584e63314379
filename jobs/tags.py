"""Tags: a short list of short labels a job is enqueued with (`tags=["customer:7",
"month-end"]`), for operators to find jobs by and act on all that match."""

from __future__ import annotations

import re

MAX_TAGS = 10
MAX_LENGTH = 64
# Letters, digits and . _ : / - (no space, comma, quote or brace: a tag reads the same
# in a URL, a log line and PostgreSQL's array literal).
_TAG = re.compile(r"[A-Za-z0-9._:/-]+")


def checked(tags) -> list[str]:
    """`tags` as stored (each once, in order given); ValueError saying what is wrong."""
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise ValueError(f"tags must be a list of strings, not {type(tags).__name__}")
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, not {len(unique)}")
    for tag in unique:
        if not isinstance(tag, str):
            raise ValueError(f"a tag must be a string, not {tag!r}")
        if not 0 < len(tag) <= MAX_LENGTH or not _TAG.fullmatch(tag):
            raise ValueError(
                f"tag {tag!r} must be 1 to {MAX_LENGTH} letters, digits or . _ : / - (such as customer:7)"
            )
    return unique
