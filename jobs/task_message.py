"""What a delivery must look like for a worker to turn it into a task call.

Celery trusts the shape of a protocol-2 message: a body that is not the
`[args, kwargs, embed]` triple, or a header of the wrong type, raises inside its
consumer and stops the whole worker, and the message, still unacked, stops the next
worker too. The worker's consumer (jobs.consumer) asks `refusal` first and rejects
what it names into the dead-letter queue; the dead-letter keeper asks it again, so
the record says the same sentence.

A refusal is a sentence for an operator: what was wrong, in terms of the message.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping

from celery.utils.time import maybe_iso8601

from jobs.storable import unstorable_text

# Deeper than this is no payload of ids and names; it is refused, not walked.
MAX_NESTING = 64

_OPTIONAL_TEXT_HEADERS = (
    "root_id",
    "parent_id",
    "group",
    "lang",
    "shadow",
    "argsrepr",
    "kwargsrepr",
    "origin",
)
_EMBED_LISTS = ("callbacks", "errbacks", "chain")


def refusal(headers, payload) -> str | None:
    """Why this message cannot be run as a task, or None if it can.

    `headers` are the AMQP application headers; `payload` is the decoded body (the
    caller decodes it, so a body that is not JSON stays Celery's decode error).
    """
    return _header_refusal(headers) or _body_refusal(payload)


def _header_refusal(headers) -> str | None:
    if not isinstance(headers, Mapping):
        return "Its headers are not a table."
    task = headers.get("task")
    if task is None:
        return "Not a task message (no task header): Celery protocol 1 and foreign messages are refused."
    if not isinstance(task, str) or not task.strip():
        return f"Its task header is {_shown(task)}, not a task name."
    task_id = headers.get("id")
    if not isinstance(task_id, str):
        return f"Its id header is {_shown(task_id)}, not a job id (a UUID string)."
    try:
        uuid.UUID(task_id)
    except ValueError:
        return f"Its id header {_shown(task_id)} is not a UUID: every job is named by one."
    for name in _OPTIONAL_TEXT_HEADERS:
        value = headers.get(name)
        if value is not None and not isinstance(value, str):
            return f"Its {name} header is {_shown(value)}, not text."
    retries = headers.get("retries")
    if retries is not None and not (_is_int(retries) and 0 <= retries <= 1_000_000):
        return f"Its retries header is {_shown(retries)}, not a count of retries."
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is None or (name == "expires" and _is_number(value)):
            continue
        try:
            maybe_iso8601(value)
        except (AttributeError, ValueError, TypeError, OverflowError):
            return f"Its {name} header is {_shown(value)}, not an ISO 8601 time."
    timelimit = headers.get("timelimit")
    if timelimit is not None and not (
        isinstance(timelimit, (list, tuple))
        and len(timelimit) == 2
        and all(v is None or (_is_number(v) and 0 <= v < 10**9) for v in timelimit)
    ):
        return f"Its timelimit header is {_shown(timelimit)}, not a pair of soft and hard limits in seconds."
    ignore_result = headers.get("ignore_result")
    if ignore_result is not None and not isinstance(ignore_result, bool):
        return f"Its ignore_result header is {_shown(ignore_result)}, not true or false."
    return None


def _body_refusal(payload) -> str | None:
    if not isinstance(payload, (list, tuple)) or len(payload) != 3:
        return f"Its body is {_shown(payload)}, not the [args, kwargs, embed] triple of Celery's protocol 2."
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)):
        return f"Its args are {_shown(args)}, not a list."
    if not isinstance(kwargs, Mapping):
        return f"Its kwargs are {_shown(kwargs)}, not a mapping of names to values."
    bad = next((k for k in kwargs if not isinstance(k, str)), None)
    if bad is not None:
        return f"Its kwargs hold the key {_shown(bad)}, not a parameter name."
    if embed is not None:
        if not isinstance(embed, Mapping):
            return f"Its embed is {_shown(embed)}, not a mapping."
        for name in _EMBED_LISTS:
            value = embed.get(name)
            if value is not None and not (
                isinstance(value, (list, tuple)) and all(isinstance(s, Mapping) for s in value)
            ):
                return f"Its embed's {name} is {_shown(value)}, not a list of signatures."
        chord = embed.get("chord")
        if chord is not None and not isinstance(chord, Mapping):
            return f"Its embed's chord is {_shown(chord)}, not a signature."
    return _value_refusal(args, "args") or _value_refusal(kwargs, "kwargs")


def _value_refusal(value, where: str) -> str | None:
    """Values the ledger (PostgreSQL's jsonb) cannot hold, found without recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            reason = unstorable_text(item)
            if reason:
                return f"Its {where} hold {reason}, which the job ledger cannot store."
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"Its {where} hold {item!r}, which is not a JSON number."
        elif isinstance(item, (list, tuple, Mapping)):
            if depth >= MAX_NESTING:
                return f"Its {where} are nested deeper than {MAX_NESTING} levels."
            children = [*item.keys(), *item.values()] if isinstance(item, Mapping) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _shown(value) -> str:
    """A short, printable picture of a value for an operator's sentence."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}" if not isinstance(value, str) else text
