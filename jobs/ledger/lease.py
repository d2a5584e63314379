"""A job's lease: the PostgreSQL advisory lock that keeps one copy of a job running.

The lease is a session advisory lock on the job id, held by the worker process while
the job runs. It vanishes with a dead worker's connection, so a redelivered copy can
tell "the previous run is dead" (lease free) from "it is still running elsewhere"
(lease held), which a ledger field alone cannot. Taking it starts the job, and giving
it back records the success, each in one round trip.
"""

from __future__ import annotations

import json
import uuid

from django.db import connection
from django.utils import timezone

from jobs.ledger.rows import job_factory
from jobs.ledger.statements import Statement
from jobs.ledger.states import sources_of
from jobs.models import Job, JobState


def lock_key(job_id: uuid.UUID | str) -> int:
    """The lease's advisory lock key: the job id's first 8 bytes, as PostgreSQL's signed bigint."""
    return int.from_bytes(uuid.UUID(str(job_id)).bytes[:8], "big", signed=True)


def held_lease_keys() -> set[int]:
    """The lock keys of every lease a run holds now, read from pg_locks without taking any.

    A bigint advisory lock shows there as classid (the key's high 32 bits), objid (its
    low 32 bits) and objsubid 1.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' "
            "AND objsubid = 1 AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        held = set()
        for high, low in cursor.fetchall():
            key = (high << 32) | low
            held.add(key - (1 << 64) if key >= 1 << 63 else key)
    return held


def without_a_live_run(jobs: list[Job]) -> list[Job]:
    """The jobs among `jobs` whose lease no run holds."""
    held = held_lease_keys()
    return [job for job in jobs if lock_key(job.id) not in held]


_TABLE = Job._meta.db_table
_WAITING = [s for s in sources_of(JobState.STARTED) if s != JobState.STARTED]

# Takes the lease and, if the job waits, starts it: one round trip. In autocommit
# ($6 true) the start commits without waiting for its WAL flush (see Lease).
_TAKE_AND_START = Statement(
    "jobs_take_and_start",
    "bigint, timestamptz, text, uuid, text[], boolean",
    f"WITH lease AS (SELECT pg_try_advisory_lock($1) AS taken, "
    f"set_config('synchronous_commit', CASE WHEN $6 THEN 'off' "
    f"ELSE current_setting('synchronous_commit') END, true) AS commit_mode), "
    f"started AS (UPDATE {_TABLE} SET state = '{JobState.STARTED}', attempts = attempts + 1, "
    f"started_at = $2, queued_at = coalesce(queued_at, $2), finished_at = NULL, worker = $3 "
    f"WHERE id = $4 AND state = ANY($5) AND (SELECT taken FROM lease) "
    # A retrying job waits out its backoff, whichever copy of its message comes.
    f"AND (state <> '{JobState.RETRYING}' OR run_after IS NULL OR run_after <= $2) "
    f"RETURNING attempts, lost_runs, retries, task_name, args, kwargs, queue, priority) "
    f"SELECT lease.taken, started.* FROM lease LEFT JOIN started ON true",
)

# Marks the run succeeded (if it is still the running attempt) and releases the
# lease. The unlock is evaluated over the UPDATE's result, so it runs after the row
# is written (and row-locked until commit): a copy that takes the lease next waits
# for this commit and then sees `succeeded`. This commit is synchronous, and flushes
# the start's WAL with its own.
_SUCCEED_AND_RELEASE = Statement(
    "jobs_succeed_and_release",
    "jsonb, timestamptz, uuid, integer, bigint",
    f"WITH done AS (UPDATE {_TABLE} SET state = '{JobState.SUCCEEDED}', result = $1, finished_at = $2 "
    f"WHERE id = $3 AND state = '{JobState.STARTED}' AND attempts = $4 RETURNING 1) "
    f"SELECT d.n, pg_advisory_unlock($5) FROM (SELECT count(*) AS n FROM done) d",
)


_started_job = job_factory(state=JobState.STARTED)


class Lease:
    """A job's lease as the worker holds it: taken with the job's start, given back
    with its success, each in a single round trip on the hot path.

    The start commits asynchronously (`synchronous_commit` off for that one
    transaction): it is visible to every other session at once, and its WAL is
    flushed by the success write's synchronous commit, or by PostgreSQL's WAL writer
    within a fraction of a second. Only a crash of PostgreSQL itself in that window
    can lose it. The job then reads `queued` again, one attempt behind (never
    `pending`: the publisher's mark is synchronous, so the relay does not send it
    again), and the run's outcome write (jobs.ledger.runs.end_run) writes the start
    again before the outcome. The success is committed synchronously before the
    message is acknowledged, as every other end of a run is.
    """

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
        # A worker may start a job before its publisher marked it queued (they race):
        # it was queued by then at the latest.
        now = timezone.now()
        row = _TAKE_AND_START.fetchone(
            [self.key, now, worker, str(self.job_id), _WAITING, connection.get_autocommit()]
        )
        taken, attempts, lost_runs, retries, task_name, args, kwargs, queue, priority = row
        self.held = bool(taken)
        if attempts is None:
            return None
        return _started_job(
            id=uuid.UUID(str(self.job_id)), attempts=attempts, lost_runs=lost_runs,
            retries=retries, started_at=now,
            task_name=task_name, args=_json(args), kwargs=_json(kwargs), queue=queue, priority=priority,
        )  # fmt: skip

    def succeed_and_release(self, job: Job, result) -> int:
        """Marks this run succeeded (if it is still the running attempt) and releases the lease."""
        moved, _ = _SUCCEED_AND_RELEASE.fetchone(
            [
                None if result is None else json.dumps(result),
                timezone.now(),
                str(job.id),
                job.attempts,
                self.key,
            ]
        )
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
