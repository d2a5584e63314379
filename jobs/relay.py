"""The outbox relay: publishes the jobs that wait in the ledger, when they are due.

- `pending` jobs the commit-time publish missed: broker down at enqueue, a web
  process killed between commit and publish;
- `pending` jobs whose `run_after` has come: deferred at enqueue, or put back by a
  worker over a rate limit;
- `retrying` jobs whose backoff is over: no worker holds a copy while it waits;
- `started` jobs whose lease a second copy found busy: if no run holds it any more,
  the job is sent again.

Writes that make a job due soon NOTIFY the relay (jobs.ledger.notify_due), and it
sleeps only until the next due time, so a backoff of a fraction of a second is
served on time. Its loop also runs the rescue (jobs/rescue.py), for jobs whose
messages RabbitMQ lost after they were sent.
"""

from __future__ import annotations

import datetime
import logging
import select
from time import monotonic, sleep

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min, Q
from django.utils import timezone

from jobs import ledger
from jobs.broker.publisher import publish_jobs
from jobs.models import Job, JobState
from jobs.rescue import rescue_lost_jobs, stop_ignored_cancels

logger = logging.getLogger(__name__)


def relay_pending_jobs(batch_size: int = 500, grace_seconds: float | None = None) -> int:
    """Publishes one batch of due pending and retrying jobs; returns how many were published.

    Rows are claimed with FOR UPDATE SKIP LOCKED, so several relays never publish
    the same row at the same moment. Rows younger than the grace period are left to
    the publish-on-commit path that is probably sending them right now. A row
    published but not marked (a crash in between) is sent again next time and
    absorbed by the worker side, which runs a job once.
    """
    if grace_seconds is None:
        grace_seconds = settings.JOBS_RELAY_GRACE_SECONDS
    now = timezone.now()
    cutoff = now - datetime.timedelta(seconds=grace_seconds)
    with transaction.atomic():
        due = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(state=JobState.PENDING)
            .filter(Q(run_after__isnull=True, created_at__lte=cutoff) | Q(run_after__lte=now))
            .order_by("created_at")[:batch_size]
        )
        if len(due) < batch_size:
            due += list(
                Job.objects.select_for_update(skip_locked=True)
                .filter(state=JobState.RETRYING, run_after__lte=now)
                .order_by("run_after")[: batch_size - len(due)]
            )
        if not due:
            return 0
        published = publish_jobs(due, force=True)
    if published:
        logger.info("relay published %d pending job(s)", len(published))
    return len(published)


def relay_until_drained(batch_size: int = 500, grace_seconds: float | None = None) -> int:
    """Runs batches until nothing due is left or the broker refuses; returns the total."""
    total = 0
    while True:
        sent = relay_pending_jobs(batch_size=batch_size, grace_seconds=grace_seconds)
        total += sent
        if sent < batch_size:
            return total


def recheck_leases(batch_size: int = 500) -> int:
    """Looks at the started jobs whose lease a second copy found busy, once their look
    is due (jobs.ledger.recheck_lease_later); returns how many were sent again.

    A run that still holds the lease is looked at again later. One that no longer does
    died without a message left to run the job again (its copy was the one that found
    the lease busy): the job is published, and the worker counts the lost run.
    """
    now = timezone.now()
    looks = list(Job.objects.filter(delayed_until__lte=now).order_by("delayed_until")[:batch_size])
    if not looks:
        return 0
    started = [job for job in looks if job.state == JobState.STARTED]
    ledger.end_lease_rechecks(job.id for job in looks if job.state != JobState.STARTED)
    lost = ledger.without_a_live_run(started)
    lost_ids = {job.id for job in lost}
    again = now + datetime.timedelta(seconds=settings.JOBS_LEASE_BUSY_RETRY_SECONDS)
    ledger.recheck_leases_at((job.id for job in started if job.id not in lost_ids), again)
    sent = publish_jobs(lost, force=True)
    if sent:
        ledger.end_lease_rechecks(job.id for job in sent)
        logger.warning(
            "relay sent again %d started job(s) whose run died after a copy found it busy", len(sent)
        )
    return len(sent)


def seconds_until_next_due(limit: float) -> float:
    """Seconds until the next job the relay must look at falls due (at most `limit`)."""
    now = timezone.now()
    times = [
        Job.objects.filter(state=JobState.RETRYING, run_after__gt=now).aggregate(t=Min("run_after"))["t"],
        Job.objects.filter(state=JobState.PENDING, run_after__gt=now).aggregate(t=Min("run_after"))["t"],
        Job.objects.filter(delayed_until__gt=now).aggregate(t=Min("delayed_until"))["t"],
    ]
    soonest = min((t for t in times if t is not None), default=None)
    if soonest is None:
        return limit
    return max(0.0, min(limit, (soonest - now).total_seconds()))


class DueSignal:
    """Waits for a NOTIFY on jobs.ledger.DUE_CHANNEL, or a timeout, on a connection of its own.

    Without that connection (the database away), it sleeps out the timeout instead,
    and tries to listen again next time.
    """

    def __init__(self):
        self._conn = None

    def wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            conn = self._listening()
            if select.select([conn], [], [], seconds)[0]:
                conn.poll()
                conn.notifies.clear()
        except Exception:  # noqa: BLE001 - a lost connection only costs the wake-up
            self.close()
            sleep(seconds)

    def _listening(self):
        if self._conn is None:
            import psycopg2

            params = connection.get_connection_params()
            self._conn = psycopg2.connect(**params)
            self._conn.autocommit = True
            with self._conn.cursor() as cursor:
                cursor.execute(f"LISTEN {ledger.DUE_CHANNEL}")
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


def run_relay_forever(interval: float | None = None, stop=lambda: False, wake=None) -> None:
    """The long-running relay loop (manage.py relay), with a rescue pass (jobs.rescue:
    lost messages, and stops a worker missed) at the start and every
    JOBS_RESCUE_INTERVAL_SECONDS after it (0: never).

    Between passes it waits for the next due time, at most `interval`, or until a
    writer NOTIFYs that something is due sooner (`wake`, for tests: a function of
    the seconds to wait).
    """
    interval = settings.JOBS_RELAY_INTERVAL_SECONDS if interval is None else interval
    rescue_every = settings.JOBS_RESCUE_INTERVAL_SECONDS
    next_rescue = monotonic()
    signal = None
    if wake is None:
        signal = DueSignal()
        wake = signal.wait
    try:
        while not stop():
            _one_pass("relay", relay_until_drained, interval)
            _one_pass("lease recheck", recheck_leases, interval)
            if rescue_every > 0 and monotonic() >= next_rescue:
                next_rescue = monotonic() + rescue_every
                _one_pass("rescue", rescue_lost_jobs, rescue_every)
                _one_pass("stops", stop_ignored_cancels, rescue_every)
            wake(_next_wait(interval))
    finally:
        if signal is not None:
            signal.close()


def _next_wait(interval: float) -> float:
    try:
        return seconds_until_next_due(interval)
    except Exception:  # noqa: BLE001 - the passes log the outage; wait the whole interval
        connection.close()
        return interval


def _one_pass(name: str, step, again_in: float) -> None:
    try:
        step()
    except Exception:  # noqa: BLE001 - the loop must outlive a database or broker outage
        logger.exception("%s pass failed; trying again in %.1fs", name, again_in)
        connection.close()
