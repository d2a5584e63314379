"""Publishes ledger rows to RabbitMQ, with publisher confirms.

A publish that fails leaves the job `pending` for the relay; it never raises into
the caller. After a failure this process stops trying for a few seconds, so that a
burst of requests during a broker outage does not pay a connection attempt each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from django.conf import settings
from django.utils import timezone

from jobs import ledger
from jobs.models import Job, JobState

logger = logging.getLogger(__name__)

# Seconds this process leaves publishing to the relay after a failed publish.
BROKER_DOWN_BACKOFF = 3.0
_broker_down_until = 0.0


def _celery_app():
    from project.celery import app

    return app


def broker_marked_down() -> bool:
    return time.monotonic() < _broker_down_until


def publish_jobs(jobs: Sequence[Job], *, force: bool = False) -> list[Job]:
    """Publishes `jobs` and marks the published ones `queued`; returns those published.

    Publishing stops at the first failure: the rest stay `pending` and the relay
    sends them later. With `force`, a recent failure does not stop the attempt
    (the relay uses it to probe the broker).
    """
    global _broker_down_until
    if not jobs or (broker_marked_down() and not force):
        return []
    app = _celery_app()
    published: list[Job] = []
    try:
        with app.producer_or_acquire() as producer:
            for job in jobs:
                app.send_task(
                    job.task_name,
                    args=job.args,
                    kwargs=job.kwargs,
                    task_id=str(job.id),
                    queue=job.queue,
                    priority=job.priority,
                    producer=producer,
                    retry=False,
                    timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS,
                    confirm_timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS,
                )
                published.append(job)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the job pending
        _broker_down_until = time.monotonic() + BROKER_DOWN_BACKOFF
        logger.warning(
            "publish failed; %d job(s) stay pending for the relay: %s: %s",
            len(jobs) - len(published),
            exc.__class__.__name__,
            str(exc)[:200],
        )
    # Only rows still pending at the attempt that was published move: a worker may
    # already have started one (or started, failed and put it back to pending).
    now = timezone.now()
    by_attempts: dict[int, list] = {}
    for job in published:
        by_attempts.setdefault(job.attempts, []).append(job.id)
    for attempts, ids in by_attempts.items():
        ledger.transition(
            ids, JobState.QUEUED, only_from=[JobState.PENDING], where={"attempts": attempts}, queued_at=now
        )
    return published
