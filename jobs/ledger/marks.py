"""The publisher's mark: published jobs become `queued`, inline or from a side connection."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterable

import psycopg2
from django.conf import settings
from django.db import connection
from django.utils import timezone

from jobs.ledger.statements import Statement
from jobs.ledger.states import sources_of
from jobs.models import Job, JobState

_TABLE = Job._meta.db_table

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
