"""Moves jobs between ledger states, and the lease that keeps one copy running.

The lease is a PostgreSQL session advisory lock on the job id, held by the worker
process while the job runs. It vanishes with a dead worker's connection, so a
redelivered copy can tell "the previous run is dead" (lease free) from "it is still
running elsewhere" (lease held), which a ledger field alone cannot.

Every change of `Job.state` is made here, as a conditional UPDATE, so two processes
racing to move one job cannot both win: `transition` (checked against the table of
allowed moves in jobs.models) for most; named statements for the hot path (start,
success, the publisher's mark); `defer` for a wait (back to `pending`, or a retry
kept `retrying`). Other fields are still written from a few places outside
(enqueue's INSERT and COPY in jobs.services, a lost run's count in jobs.base).
"""

from __future__ import annotations

import datetime
import json
import re
import time
import uuid
import weakref
from collections.abc import Iterable

import psycopg2.errors
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Case, F, Value, When
from django.db.models.base import ModelState
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


# The relay LISTENs here: a write that makes a job due soon NOTIFYs it, so a short
# backoff does not wait for the relay's next pass.
DUE_CHANNEL = "jobs_due"


def notify_due() -> None:
    """Wakes the relay (jobs.relay) to look at what is due; delivered at commit."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [DUE_CHANNEL])


def defer(job_id: uuid.UUID | str, due: datetime.datetime) -> int:
    """Puts a job that has not started back in the ledger until `due`; the relay publishes
    it then. A waiting job reads `pending` again (a retry stays `retrying`); 0 if it moved
    on meanwhile (started by another copy, finished, cancelled)."""
    waiting = [JobState.PENDING, JobState.QUEUED, JobState.RETRYING]
    moved = Job.objects.filter(pk=job_id, state__in=waiting).update(
        state=Case(
            When(state=JobState.RETRYING, then=Value(JobState.RETRYING)), default=Value(JobState.PENDING)
        ),
        # Never sooner than a retry's own backoff end.
        run_after=Case(
            When(state=JobState.RETRYING, run_after__gt=due, then=F("run_after")), default=Value(due)
        ),
    )
    if moved:
        notify_due()
    return moved


def recheck_lease_later(job_id: uuid.UUID | str, seconds: float) -> int:
    """Asks the relay to look again in `seconds` whether a run still holds this started
    job's lease, and to publish it again if none does (jobs.relay.recheck_leases)."""
    return Job.objects.filter(pk=job_id, state=JobState.STARTED).update(
        delayed_until=timezone.now() + datetime.timedelta(seconds=seconds)
    )


def end_lease_rechecks(job_ids: Iterable[uuid.UUID | str]) -> int:
    """The relay looked at these jobs' leases for the last time (jobs.relay.recheck_leases)."""
    return Job.objects.filter(pk__in=list(job_ids)).update(delayed_until=None)


def recheck_leases_at(job_ids: Iterable[uuid.UUID | str], when: datetime.datetime) -> int:
    """The relay looks at these started jobs' leases again at `when`."""
    return Job.objects.filter(pk__in=list(job_ids), state=JobState.STARTED).update(delayed_until=when)


def mark_rescued(job_ids: Iterable[uuid.UUID | str]) -> int:
    """These jobs were sent again because their messages looked lost (jobs.rescue)."""
    return Job.objects.filter(pk__in=list(job_ids)).update(rescued_at=timezone.now())


def lock_key(job_id: uuid.UUID | str) -> int:
    # PostgreSQL advisory locks take a signed 64-bit key: the UUID's first 8 bytes.
    return int.from_bytes(uuid.UUID(str(job_id)).bytes[:8], "big", signed=True)


class Statement:
    """A server-side prepared statement, prepared once per database connection.

    The worker's hot path runs two statements per job; preparing them spares
    PostgreSQL parsing and planning each time, and executing them on the raw DB-API
    cursor spares Django's cursor wrapper. Errors still come out as Django's
    (`wrap_database_errors`), so callers catch what they always caught.

    A prepared statement's generic plan is made once, for the table as it was then,
    and kept: planned while the ledger was nearly empty, a lookup by id would be a
    sequential scan for the life of the connection, over however many rows the
    ledger grows to. So each EXECUTE runs with sequential scans disabled for its
    own implicit transaction (`SET LOCAL`, in the same round trip), and every plan
    made for it is an index plan. Inside a caller's transaction, where `SET LOCAL`
    would outlive the statement, a statement that looks rows up runs unprepared.
    """

    def __init__(self, name: str, types: str, sql: str, looks_up_rows: bool = True):
        self.name, self.types, self.sql, self.looks_up_rows = name, types, sql, looks_up_rows
        type_list = [t.strip() for t in types.split(",")]
        placeholders = ", ".join(["%s"] * len(type_list))
        self.execute_sql = f"EXECUTE {name}({placeholders})"
        if looks_up_rows:
            self.execute_sql = f"SET LOCAL enable_seqscan = off; {self.execute_sql}"
        # The same statement with client-side parameters, planned where it runs.
        self.plain_sql = re.sub(
            r"\$(\d+)", lambda m: f"%(p{m.group(1)})s::{type_list[int(m.group(1)) - 1]}", sql
        )

    def fetchone(self, params: list) -> tuple:
        db = connections[DEFAULT_DB_ALIAS]  # this thread's; `connection` looks it up per use
        db.close_if_health_check_failed()  # as Django's own cursors do
        db.ensure_connection()
        raw = db.connection  # the DB-API connection
        with db.wrap_database_errors:
            with raw.cursor() as cursor:
                autocommit = db.get_autocommit()
                if self.looks_up_rows and not autocommit:
                    cursor.execute(self.plain_sql, self.named(params))
                    return cursor.fetchone()
                names = _prepared.setdefault(raw, set())
                if self.name not in names:
                    self._prepare(cursor, names, autocommit)
                try:
                    cursor.execute(self.execute_sql, params)
                except psycopg2.errors.InvalidSqlStatementName:
                    # Deallocated behind our back (DISCARD ALL, a pooler handing out
                    # another server session): prepare again, and in autocommit retry.
                    names.discard(self.name)
                    if not autocommit:
                        raise
                    self._prepare(cursor, names, autocommit)
                    cursor.execute(self.execute_sql, params)
                return cursor.fetchone()

    @staticmethod
    def named(params: list) -> dict:
        """`params` as `plain_sql` takes them."""
        return {f"p{n}": value for n, value in enumerate(params, start=1)}

    def _prepare(self, cursor, names: set, autocommit: bool) -> None:
        # A new connection (or the first use of this one). PREPARE is not undone by
        # a rollback, so this happens once per connection.
        try:
            cursor.execute(f"PREPARE {self.name}({self.types}) AS {self.sql}")
        except psycopg2.errors.DuplicatePreparedStatement:
            # Prepared by an earlier call that was interrupted before it noted it.
            names.add(self.name)
            if not autocommit:
                raise  # the error has aborted the caller's transaction
            return
        names.add(self.name)


# Statement names prepared on each DB-API connection, forgotten with the connection.
# Keyed by the connection itself: Django gives each thread its own.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


# "state is pending or retrying", written so that the planner cannot use the relay's
# partial indexes on those rows for it: with statistics taken while few rows were
# pending (or a cached generic plan), it would pick one for a lookup by id and scan
# every pending row, thousands after a broker outage, instead of the primary key.
_IS_WAITING_BY_ID = f"coalesce(state, '') IN ('{JobState.PENDING}', '{JobState.RETRYING}')"

# Marks published jobs queued: only rows still waiting (pending, or retrying and due)
# at the attempt that was published move (a worker may already have started one, or
# started, failed and put it back), and none whose time a worker pushed back since
# (a rate limit's deferral: its copy was acknowledged, and the relay sends it later).
# A deferral comes after its copy was sent, so it is due after the publish began ($4),
# however late the mark; a job the relay sent was due before. Committed
# synchronously, unlike the worker's start: with both lost to a crash of PostgreSQL,
# a running job would read `pending` again, and the relay would publish a second
# copy while the first still runs.
_MARK_QUEUED = Statement(
    "jobs_mark_queued",
    "timestamptz, text[], integer, timestamptz",
    f"WITH moved AS (UPDATE {_TABLE} SET state = '{JobState.QUEUED}', queued_at = $1 "
    f"WHERE id = ANY($2::uuid[]) AND {_IS_WAITING_BY_ID} AND attempts = $3 "
    f"AND (run_after IS NULL OR run_after <= $4) RETURNING 1) "
    f"SELECT count(*) FROM moved",
)
assert {JobState.PENDING, JobState.RETRYING} <= set(sources_of(JobState.QUEUED))  # the table allows it


def mark_queued(job_ids: Iterable[uuid.UUID | str], attempts: int, published_since: datetime.datetime) -> int:
    """Moves the given jobs from `pending` or due `retrying` (at `attempts`) to `queued`,
    unless a worker deferred one since `published_since` (when their publish began);
    returns how many moved."""
    ids = [str(job_id) for job_id in job_ids]
    return _MARK_QUEUED.fetchone([timezone.now(), ids, attempts, published_since])[0]


class BackgroundMarks:
    """`mark_queued` on a second, asynchronous connection: PostgreSQL marks one chunk
    of a large publish while the publisher sends the next one to RabbitMQ.

    The connection is psycopg2's asynchronous kind (autocommit, one statement in
    flight, no thread): `mark` sends a statement and returns at once, and waits only
    if the previous one is still running. `close` waits for the last one. A failed
    mark is logged and leaves its jobs pending, for the relay to publish again.
    """

    def __init__(self):
        import psycopg2

        params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
        self.conn = psycopg2.connect(**params, async_=1)
        self._wait()
        # Kept for the connection's life: psycopg2 fails a poll whose statement's
        # cursor was garbage-collected ("the asynchronous cursor has disappeared").
        self.cursor = self.conn.cursor()
        self.busy = False

    def mark(
        self, job_ids: Iterable[uuid.UUID | str], attempts: int, published_since: datetime.datetime
    ) -> None:
        """Sends mark_queued's statement (unprepared: one per chunk) and returns at once."""
        self._finish()
        params = [timezone.now(), [str(i) for i in job_ids], attempts, published_since]
        self.cursor.execute(_MARK_QUEUED.plain_sql, _MARK_QUEUED.named(params))
        self.busy = True

    def close(self) -> None:
        """Waits for the last mark and closes the connection."""
        try:
            self._finish()
        finally:
            self.conn.close()

    def _finish(self) -> None:
        if self.busy:
            self.busy = False
            self._wait()

    def _wait(self) -> None:
        """Waits for the connection or its statement, at most JOBS_PUBLISH_TIMEOUT_SECONDS:
        a database that stops answering must not hold the publish up for ever."""
        import select

        import psycopg2.extensions as ext

        deadline = time.monotonic() + settings.JOBS_PUBLISH_TIMEOUT_SECONDS
        poller = select.poll()  # not select.select: it refuses descriptors over 1023
        while True:
            state = self.conn.poll()
            if state == ext.POLL_OK:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise psycopg2.OperationalError("the side connection did not answer in time")
            poller.register(self.conn.fileno(), select.POLLIN if state == ext.POLL_READ else select.POLLOUT)
            poller.poll(remaining * 1000)


def job_factory(**fixed):
    """Returns build(**values) -> an unsaved Job holding `fixed` and `values`.

    Once per job on the worker's hot path and in enqueue_many, so built as unpickling
    builds a model (`Model.__reduce__`): a new instance whose attributes are set at
    once, without Model.__init__ (Job(**kwargs) cost 21.6 us, Job(*row) 6.9, this
    about 1) and so without the pre_init and post_init signals, which nothing in the
    project listens to for Job. Every other field holds its default if that is a
    constant, else None (a computed default, such as created_at, would not be the
    row's).
    """
    fields = Job._meta.concrete_fields
    template = {
        f.attname: None if f.has_default() and callable(f.default) else f.get_default() for f in fields
    }
    unknown = set(fixed) - set(template)
    if unknown:
        raise TypeError(f"Job has no field(s) {sorted(unknown)}")
    template.update(fixed)
    new, names = Job.__new__, template.keys()

    def build(**values) -> Job:
        if not values.keys() <= names:
            raise TypeError(f"Job has no field(s) {sorted(values.keys() - names)}")
        job = new(Job)
        attributes = job.__dict__
        attributes.update(template)
        attributes.update(values)
        attributes["_state"] = ModelState()
        return job

    return build


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
    again), and the run's outcome write (`JobTask._write_outcome`) writes the start
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
