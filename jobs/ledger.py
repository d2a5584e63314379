"""Moves jobs between ledger states, and the lease that keeps one copy running.

`transition` is the one function that changes `Job.state`. It is a conditional
UPDATE: two processes racing to move the same job cannot both win, and a move the
table in jobs.models does not allow is refused rather than written.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator

from django.db import connection

from jobs.models import ALLOWED_TRANSITIONS, Job, JobState


class IllegalTransition(ValueError):
    pass


def sources_of(target: str) -> list[str]:
    return [state for state, targets in ALLOWED_TRANSITIONS.items() if target in targets]


def transition(
    job_ids: uuid.UUID | str | Iterable[uuid.UUID | str],
    target: JobState,
    *,
    only_from: Iterable[JobState] | None = None,
    where: dict | None = None,
    **fields,
) -> int:
    """Moves the given jobs to `target` where the move is allowed; returns how many moved.

    `only_from` narrows the allowed sources further (for example, cancel only what
    has not started); `where` adds conditions (for example, the attempt a worker
    runs, so a run that lost its lease cannot overwrite a newer one). Extra `fields`
    are written in the same UPDATE (F() allowed).
    """
    sources = sources_of(target)
    if only_from is not None:
        wanted = set(only_from)
        illegal = wanted - set(sources)
        if illegal:
            raise IllegalTransition(f"A job cannot move from {sorted(illegal)} to {target}.")
        sources = [s for s in sources if s in wanted]
    if isinstance(job_ids, (str, uuid.UUID)):
        job_ids = [job_ids]
    rows = Job.objects.filter(pk__in=list(job_ids), state__in=sources, **(where or {}))
    return rows.update(state=target, **fields)


def _lock_key(job_id: uuid.UUID | str) -> int:
    # PostgreSQL advisory locks take a signed 64-bit key: the UUID's first 8 bytes.
    return int.from_bytes(uuid.UUID(str(job_id)).bytes[:8], "big", signed=True)


@contextlib.contextmanager
def lease(job_id: uuid.UUID | str) -> Iterator[bool]:
    """Holds the job's lease while the block runs; yields whether it was taken.

    The lease is a session advisory lock on this process's database connection.
    It vanishes with the connection of a worker that dies, so a redelivered copy
    can tell "the previous run is dead" (lease free) from "it is still running
    elsewhere" (lease held), which a ledger field alone cannot.
    """
    key = _lock_key(job_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        taken = cursor.fetchone()[0]
    try:
        yield taken
    finally:
        if taken:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except Exception:  # noqa: BLE001
                # A lease must never outlive its job on a reused connection.
                connection.close()
