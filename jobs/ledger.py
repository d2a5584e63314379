"""Moves jobs between ledger states, and the lease that keeps one copy running.

The lease is a PostgreSQL session advisory lock on the job id, held by the worker
process while the job runs. It vanishes with a dead worker's connection, so a
redelivered copy can tell "the previous run is dead" (lease free) from "it is still
running elsewhere" (lease held), which a ledger field alone cannot.

`transition` is the one function that changes `Job.state`. It is a conditional
UPDATE: two processes racing to move the same job cannot both win, and a move the
table in jobs.models does not allow is refused rather than written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from django.db import connection
from django.utils import timezone

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
    job_ids = list(job_ids)
    if len(job_ids) == 1:
        rows = Job.objects.filter(pk=job_ids[0], state__in=sources, **(where or {}))
    else:
        # One array parameter, not thousands of placeholders, for a batch.
        rows = Job.objects.filter(state__in=sources, **(where or {})).extra(
            where=[f"{Job._meta.db_table}.id = ANY(%s::uuid[])"], params=[[str(i) for i in job_ids]]
        )
    return rows.update(state=target, **fields)


def lock_key(job_id: uuid.UUID | str) -> int:
    # PostgreSQL advisory locks take a signed 64-bit key: the UUID's first 8 bytes.
    return int.from_bytes(uuid.UUID(str(job_id)).bytes[:8], "big", signed=True)


class Lease:
    """A job's lease as the worker holds it: taken with the job's start, given back
    with its success, each in a single round trip on the hot path."""

    def __init__(self, job_id: uuid.UUID | str):
        self.job_id = job_id
        self.key = lock_key(job_id)
        self.held = False

    def take_and_start(self, worker: str) -> Job | None:
        """Takes the lease and, if the job waits (pending, queued or retrying), starts it.

        Returns the started job, or None when the lease was busy (see `held`) or the
        job is in any other state (finished, started by a dead run, unknown); the
        caller then looks at the row itself, under the lease if `held`.
        """
        waiting = [s for s in sources_of(JobState.STARTED) if s != JobState.STARTED]
        # A worker may start a job before its publisher marked it queued (they race):
        # it was queued by then at the latest.
        now = timezone.now()
        table = Job._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH lease AS (SELECT pg_try_advisory_lock(%s) AS taken), "
                f"started AS (UPDATE {table} SET state = %s, attempts = attempts + 1, started_at = %s, "
                f"queued_at = coalesce(queued_at, %s), finished_at = NULL, worker = %s "
                f"WHERE id = %s AND state = ANY(%s) AND (SELECT taken FROM lease) "
                f"RETURNING attempts, lost_runs, retries, task_name, args, kwargs, queue, priority) "
                f"SELECT lease.taken, started.* FROM lease LEFT JOIN started ON true",
                [self.key, JobState.STARTED, now, now, worker, str(self.job_id), waiting],
            )
            taken, attempts, lost_runs, retries, task_name, args, kwargs, queue, priority = cursor.fetchone()
        self.held = bool(taken)
        if attempts is None:
            return None
        return Job(
            id=uuid.UUID(str(self.job_id)), state=JobState.STARTED, attempts=attempts, lost_runs=lost_runs,
            retries=retries,
            task_name=task_name, args=_json(args), kwargs=_json(kwargs), queue=queue, priority=priority,
        )  # fmt: skip

    def succeed_and_release(self, job: Job, result) -> int:
        """Marks this run succeeded (if it is still the running attempt) and releases the lease."""
        table = Job._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                # The unlock is evaluated over the UPDATE's result, so it runs after the
                # row is written (and row-locked until commit): a copy that takes the
                # lease next waits for this commit and then sees `succeeded`.
                f"WITH done AS (UPDATE {table} SET state = %s, result = %s::jsonb, finished_at = %s "
                f"WHERE id = %s AND state = %s AND attempts = %s RETURNING 1) "
                f"SELECT d.n, pg_advisory_unlock(%s) FROM (SELECT count(*) AS n FROM done) d",
                [JobState.SUCCEEDED, None if result is None else json.dumps(result), timezone.now(),
                 str(job.id), JobState.STARTED, job.attempts, self.key],
            )  # fmt: skip
            moved = cursor.fetchone()[0]
        self.held = False
        return moved

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if connection.connection is None:
            return  # the connection is gone, and the lock with it
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        except Exception:  # noqa: BLE001
            # A lease must never outlive its job on a reused connection.
            connection.close()


def _json(value):
    # Django's psycopg2 backend hands jsonb back as text.
    return json.loads(value) if isinstance(value, str) else value
