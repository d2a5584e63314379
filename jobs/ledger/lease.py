"""A job's lease: the PostgreSQL advisory lock that keeps one copy of a job running.

The lease is a session advisory lock on the job id, held by the worker process while
the job runs. It vanishes with a dead worker's connection, so a redelivered copy can
tell "the previous run is dead" (lease free) from "it is still running elsewhere"
(lease held), which a ledger field alone cannot. Taking it starts the job, and giving
it back records the success, each in one round trip.
"""

from __future__ import annotations

import contextlib
import json
import uuid

from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from jobs.ledger.rows import job_factory
from jobs.ledger.session import ledger_session
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

# Takes the lease and, if the job waits, starts it: one round trip, on the ledger
# session (autocommit). The start commits without waiting for its WAL flush (see Lease).
_TAKE_AND_START = Statement(
    "jobs_take_and_start",
    "bigint, timestamptz, text, uuid, text[]",
    f"WITH lease AS (SELECT pg_try_advisory_lock($1) AS taken, "
    f"set_config('synchronous_commit', 'off', true) AS commit_mode), "
    f"started AS (UPDATE {_TABLE} SET state = '{JobState.STARTED}', attempts = attempts + 1, "
    f"started_at = $2, queued_at = coalesce(queued_at, $2), finished_at = NULL, worker = $3 "
    f"WHERE id = $4 AND state = ANY($5) AND (SELECT taken FROM lease) "
    # A retrying job waits out its backoff, whichever copy of its message comes.
    f"AND (state <> '{JobState.RETRYING}' OR run_after IS NULL OR run_after <= $2) "
    # A job past its deadline to start, or asked to stop, is not started: the caller
    # ends it (expired, cancelled).
    f"AND (expires_at IS NULL OR expires_at > $2) AND cancel_requested_at IS NULL "
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
    with its success, each in a single round trip on the hot path, on the ledger's
    own session (jobs.ledger.session), which no task body can close.

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
        with _on_the_session() as session:
            row = _TAKE_AND_START.fetchone([self.key, now, worker, str(self.job_id), _WAITING], session)
        taken, *started = row
        self.held = bool(taken)
        return None if started[0] is None else _started(self.job_id, now, *started)

    def succeed_and_release(self, job: Job, result) -> int:
        """Marks this run succeeded (if it is still the running attempt) and releases the lease."""
        params = [None if result is None else json.dumps(result), timezone.now(), str(job.id), job.attempts]
        with _on_the_session() as session:
            moved, _ = _SUCCEED_AND_RELEASE.fetchone([*params, self.key], session)
        self.held = False
        return moved

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _unlock([self.key])


@contextlib.contextmanager
def _on_the_session():
    """The ledger session; if it fails for its connection, that connection is closed,
    and so is Django's: both went to the same PostgreSQL, which may have restarted, and
    the next job's body must not meet a dead connection either."""
    session = ledger_session()
    try:
        yield session
    except (OperationalError, InterfaceError):
        session.close()
        connection.close()
        raise


def _fetchall_on_the_session(sql: str, params: dict) -> list[tuple]:
    """Runs one unprepared statement on the ledger session; its rows."""
    with _on_the_session() as session:
        db = session.connection()
        with db.wrap_database_errors, db.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()


def _started(job_id, now, attempts, lost_runs, retries, task_name, args, kwargs, queue, priority) -> Job:
    """The started job, from what a start statement returned (RETURNING's columns)."""
    return _started_job(
        id=uuid.UUID(str(job_id)), attempts=attempts, lost_runs=lost_runs, retries=retries, started_at=now,
        task_name=task_name, args=_json(args), kwargs=_json(kwargs), queue=queue, priority=priority,
    )  # fmt: skip


def _json(value):
    # Django's psycopg2 backend hands jsonb back as text.
    return json.loads(value) if isinstance(value, str) else value


# The batch forms of the two statements above, for a throughput queue's batch of jobs
# (jobs.throughput): every lease taken and every waiting job started in one round
# trip; every success recorded in one synchronous commit, and then its lease given
# back. Unprepared (one of each per batch), on the ledger session, whose planner
# guard makes them index lookups too. A batch holds each job once: an advisory lock is
# re-entrant, and a second copy of a job in the same batch would take it again.
_TAKE_AND_START_MANY = (
    f"WITH wanted AS (SELECT w.id, w.key, pg_try_advisory_lock(w.key) AS taken, "
    f"set_config('synchronous_commit', 'off', true) AS commit_mode "
    f"FROM unnest(%(ids)s::uuid[], %(keys)s::bigint[]) AS w(id, key)), "
    f"started AS (UPDATE {_TABLE} j SET state = '{JobState.STARTED}', attempts = j.attempts + 1, "
    f"started_at = %(now)s, queued_at = coalesce(j.queued_at, %(now)s), finished_at = NULL, worker = %(worker)s "
    f"FROM wanted WHERE j.id = wanted.id AND wanted.taken AND j.state = ANY(%(waiting)s) "
    f"AND (j.state <> '{JobState.RETRYING}' OR j.run_after IS NULL OR j.run_after <= %(now)s) "
    f"AND (j.expires_at IS NULL OR j.expires_at > %(now)s) AND j.cancel_requested_at IS NULL "
    f"RETURNING j.id, j.attempts, j.lost_runs, j.retries, j.task_name, j.args, j.kwargs, j.queue, j.priority) "
    f"SELECT wanted.id, wanted.taken, started.attempts, started.lost_runs, started.retries, started.task_name, "
    f"started.args, started.kwargs, started.queue, started.priority "
    f"FROM wanted LEFT JOIN started ON started.id = wanted.id"
)

# The unlocks are a subquery correlated with the UPDATE's count, so they are evaluated
# after every row is written (and row-locked until the commit), as in
# _SUCCEED_AND_RELEASE.
_SUCCEED_AND_RELEASE_MANY = (
    f"WITH done AS (UPDATE {_TABLE} j SET state = '{JobState.SUCCEEDED}', result = v.result::jsonb, "
    f"finished_at = %(now)s "
    f"FROM unnest(%(ids)s::uuid[], %(attempts)s::integer[], %(results)s::text[]) AS v(id, attempts, result) "
    f"WHERE j.id = v.id AND j.state = '{JobState.STARTED}' AND j.attempts = v.attempts RETURNING j.id) "
    f"SELECT d.ids, (SELECT count(*) FROM unnest(%(keys)s::bigint[]) AS k(key) "
    f"WHERE d.n >= 0 AND pg_advisory_unlock(k.key)) "
    f"FROM (SELECT array_agg(id::text) AS ids, count(*) AS n FROM done) d"
)


class Leases:
    """The leases of a batch of jobs, as a throughput queue's worker holds them: taken
    with the jobs' start in one round trip, given back with their successes in one
    commit. Each job's Lease is `leases[job_id]`, for the one-job paths."""

    def __init__(self, job_ids: list[str]):
        if len(set(job_ids)) != len(job_ids):
            raise ValueError("a batch holds each job once")
        self.leases = {job_id: Lease(job_id) for job_id in job_ids}

    def __getitem__(self, job_id: str) -> Lease:
        return self.leases[job_id]

    def take_and_start(self, worker: str) -> dict[str, Job]:
        """Takes every lease it can and starts every job that simply waits; returns
        those jobs by id. The others (lease busy, or in any other state: their lease
        given back here) are the caller's to run one by one."""
        now = timezone.now()
        params = {
            "ids": list(self.leases), "keys": [lease.key for lease in self.leases.values()], "now": now,
            "worker": worker, "waiting": _WAITING,
        }  # fmt: skip
        rows = _fetchall_on_the_session(_TAKE_AND_START_MANY, params)
        started, not_started = {}, []
        for job_id, taken, *row in rows:
            job_id = str(job_id)
            self.leases[job_id].held = bool(taken)
            if not taken:
                continue
            if row[0] is None:
                not_started.append(job_id)
                continue
            started[job_id] = _started(job_id, now, *row)
        self.release(not_started)
        return started

    def succeed_and_release(self, successes: list[tuple[Job, object]]) -> set[str]:
        """Marks each (job, result) succeeded, if it is still that job's running
        attempt, in one commit, and gives back their leases; returns the ids moved."""
        if not successes:
            return set()
        ids = [str(job.id) for job, _ in successes]
        params = {
            "ids": ids,
            "attempts": [job.attempts for job, _ in successes],
            "results": [None if result is None else json.dumps(result) for _, result in successes],
            "now": timezone.now(),
            "keys": [self.leases[job_id].key for job_id in ids],
        }
        ((moved, _),) = _fetchall_on_the_session(_SUCCEED_AND_RELEASE_MANY, params)
        for job_id in ids:
            self.leases[job_id].held = False
        return set(moved or ())

    def release(self, job_ids=None) -> None:
        """Gives back the leases of `job_ids` (every one still held, by default)."""
        held = [
            lease
            for job_id, lease in self.leases.items()
            if lease.held and (job_ids is None or job_id in job_ids)
        ]
        if not held:
            return
        for lease in held:
            lease.held = False
        _unlock([lease.key for lease in held])


def _unlock(keys: list[int]) -> None:
    """Gives back the advisory locks `keys` on the ledger session."""
    session = ledger_session()
    raw = session.db.connection
    if raw is None or raw.closed:
        return  # the connection is gone, and the locks with it
    try:
        with raw.cursor() as cursor:
            cursor.execute("SELECT count(pg_advisory_unlock(k)) FROM unnest(%s::bigint[]) AS k", [keys])
    except Exception:  # noqa: BLE001
        session.close()  # a lease must never outlive its job on a reused connection
