"""The outbox relay: publishes `pending` jobs that the commit-time publish missed.

Broker down at enqueue, a web process killed between commit and publish, a retry
whose new copy could not be sent, a deferred job whose time has come: all of them
wait as `pending` rows, and the relay sends them. Its loop also runs the rescue
(jobs/rescue.py), for jobs whose messages RabbitMQ lost after they were sent.
"""

from __future__ import annotations

import datetime
import logging
from time import monotonic, sleep

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.publisher import publish_jobs
from jobs.rescue import rescue_lost_jobs

logger = logging.getLogger(__name__)


def relay_pending_jobs(batch_size: int = 500, grace_seconds: float | None = None) -> int:
    """Publishes one batch of due pending jobs; returns how many were published.

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


def run_relay_forever(interval: float | None = None, stop=lambda: False) -> None:
    """The long-running relay loop (manage.py relay), with a rescue pass (jobs.rescue)
    at the start and every JOBS_RESCUE_INTERVAL_SECONDS after it (0: never)."""
    interval = settings.JOBS_RELAY_INTERVAL_SECONDS if interval is None else interval
    rescue_every = settings.JOBS_RESCUE_INTERVAL_SECONDS
    next_rescue = monotonic()
    while not stop():
        _one_pass("relay", relay_until_drained, interval)
        if rescue_every > 0 and monotonic() >= next_rescue:
            next_rescue = monotonic() + rescue_every
            _one_pass("rescue", rescue_lost_jobs, rescue_every)
        sleep(interval)


def _one_pass(name: str, step, again_in: float) -> None:
    try:
        step()
    except Exception:  # noqa: BLE001 - the loop must outlive a database or broker outage
        logger.exception("%s pass failed; trying again in %.1fs", name, again_in)
        connection.close()
