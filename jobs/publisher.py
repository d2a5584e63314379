"""Publishes ledger rows to RabbitMQ with publisher confirms, many in flight at once.

A batch is published on one channel in confirm mode without waiting message by
message; then one wait collects RabbitMQ's acks (its `multiple` acks cover many).
A batch that is not fully confirmed in time leaves its jobs `pending` for the relay,
and it never raises into the caller. After a failure this process stops trying for
a few seconds, so a burst of requests during a broker outage does not pay a
connection attempt each.

Messages are Celery's own (protocol 2, JSON), built by the app's amqp helper, and
go through the default exchange straight to the job's workload queue, as Celery
publishes them.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Sequence

import amqp
from celery.utils.nodenames import anon_nodename
from django.conf import settings
from django.utils import timezone

from jobs import ledger
from jobs.models import Job, JobState

logger = logging.getLogger(__name__)

# Seconds this process leaves publishing to the relay after a failed publish.
BROKER_DOWN_BACKOFF = 3.0
_broker_down_until = 0.0
_local = threading.local()


def _celery_app():
    from project.celery import app

    return app


def broker_marked_down() -> bool:
    return time.monotonic() < _broker_down_until


class ConfirmTimeout(Exception):
    """RabbitMQ did not confirm a batch in time (a memory or disk alarm, a dead link)."""


class _ConfirmChannel:
    """A connection and a channel in confirm mode, kept per thread between publishes."""

    def __init__(self):
        app = _celery_app()
        # No heartbeats: nothing would send them while the process is idle, and the
        # broker would close the connection; a dead one is detected on next use.
        self.connection = app.connection_for_write(heartbeat=0)
        self.connection.ensure_connection(max_retries=0)
        self.channel = self.connection.channel()
        self.channel.confirm_select()
        self.acked = 0
        self.nacked = False
        self.published = 0
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)

    def _on_ack(self, delivery_tag, multiple):
        self.acked = max(self.acked, delivery_tag)

    def _on_nack(self, delivery_tag, multiple):
        self.nacked = True

    def publish(self, messages: list[tuple[amqp.Message, str]], timeout: float) -> None:
        """Publishes every (message, queue) and waits for all confirms; raises if not all came."""
        first = self.published + 1
        for message, queue in messages:
            # py-amqp's plain publish: in confirm mode it would wait message by message.
            self.channel._basic_publish(message, exchange="", routing_key=queue)
            self.published += 1
        deadline = time.monotonic() + timeout
        while self.acked < self.published and not self.nacked:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                confirmed = max(0, self.acked - first + 1)
                raise ConfirmTimeout(
                    f"RabbitMQ confirmed {confirmed} of {len(messages)} in {timeout}s"
                ) from None
        if self.nacked:
            raise amqp.exceptions.MessageNacked("RabbitMQ refused (nacked) a message of the batch")

    def close(self):
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


def _channel() -> _ConfirmChannel:
    channel = getattr(_local, "channel", None)
    if channel is None:
        channel = _local.channel = _ConfirmChannel()
    return channel


def _drop_channel() -> None:
    channel = getattr(_local, "channel", None)
    _local.channel = None
    if channel is not None:
        channel.close()


@functools.cache
def _origin() -> str:
    return anon_nodename()


def build_message(job: Job) -> amqp.Message:
    """The Celery message (protocol 2, JSON) of a ledger row.

    The body and the headers a plain `send_task` carries, built directly and without
    the headers whose value would be empty: at bulk rates Celery's generic builder and
    the AMQP header table were most of the cost of publishing. Every test runs its
    jobs through real workers with these messages.
    """
    task_id = str(job.id)
    args, kwargs = list(job.args), dict(job.kwargs)
    # Celery's worker reads every other protocol-2 header with a default (None, 0,
    # no time limit), and the AMQP header table is most of the cost of a publish.
    headers = {
        "lang": "py",
        "task": job.task_name,
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "argsrepr": repr(tuple(args))[:1024],
        "kwargsrepr": repr(kwargs)[:1024],
        "origin": _origin(),
        "ignore_result": True,
    }
    body = json.dumps([args, kwargs, _EMBED]).encode()
    return amqp.Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=headers,
        delivery_mode=2,
        priority=job.priority,
        correlation_id=task_id,
        reply_to="",
    )


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def publish_jobs(jobs: Sequence[Job], *, force: bool = False) -> list[Job]:
    """Publishes `jobs` and marks them `queued`; returns those published (all or none).

    With `force`, a recent failure does not stop the attempt (the relay uses it to
    probe the broker). A publish that RabbitMQ does not confirm within
    JOBS_PUBLISH_TIMEOUT_SECONDS counts as failed: the jobs stay pending, and if some
    did reach RabbitMQ, the worker side runs each job once anyway.
    """
    global _broker_down_until
    if not jobs or (broker_marked_down() and not force):
        return []
    try:
        messages = [(build_message(job), job.queue) for job in jobs]
        try:
            _channel().publish(messages, timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS)
        except (ConnectionError, OSError, amqp.exceptions.AMQPError):
            # A connection kept from an earlier publish may have died (broker restart):
            # one fresh attempt, then give up.
            _drop_channel()
            _channel().publish(messages, timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the jobs pending
        _drop_channel()
        _broker_down_until = time.monotonic() + BROKER_DOWN_BACKOFF
        logger.warning(
            "publish failed; %d job(s) stay pending for the relay: %s: %s",
            len(jobs),
            exc.__class__.__name__,
            str(exc)[:200],
        )
        return []
    _mark_queued(jobs)
    return list(jobs)


def _mark_queued(jobs: Sequence[Job]) -> None:
    # Only rows still pending at the attempt that was published move: a worker may
    # already have started one (or started, failed and put it back to pending).
    now = timezone.now()
    by_attempts: dict[int, list] = {}
    for job in jobs:
        by_attempts.setdefault(job.attempts, []).append(job.id)
    for attempts, ids in by_attempts.items():
        ledger.transition(
            ids, JobState.QUEUED, only_from=[JobState.PENDING], where={"attempts": attempts}, queued_at=now
        )
