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

from jobs import ledger, topology
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


class ConfirmTimeout(Exception):
    """RabbitMQ did not confirm a batch in time (a memory or disk alarm, a dead link)."""


class _ConfirmChannel:
    """A connection and a channel in confirm mode, kept between publishes.

    Every delivery tag is tracked until RabbitMQ acks it (singly or with `multiple`),
    nacks it, or returns it as unroutable: a batch succeeds only when each of its own
    messages is acked and none came back.
    """

    def __init__(self):
        app = _celery_app()
        # No heartbeats: nothing would send them while the process is idle, and the
        # broker would close the connection; a dead one is detected on next use.
        self.connection = app.connection_for_write(heartbeat=0)
        self.connection.ensure_connection(max_retries=0)
        self.channel = self.connection.channel()
        self.channel.confirm_select()
        self.next_tag = 1
        self.unconfirmed: set[int] = set()
        self.failed: set[int] = set()
        self.returned: set[str] = set()
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)
        self.channel.events["basic_return"].add(self._on_return)

    def _settle(self, delivery_tag: int, multiple: bool) -> set[int]:
        tags = {t for t in self.unconfirmed if t <= delivery_tag} if multiple else {delivery_tag}
        self.unconfirmed -= tags
        return tags

    def _on_ack(self, delivery_tag, multiple):
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag, multiple):
        self.failed |= self._settle(delivery_tag, multiple)

    def _on_return(self, exc, exchange, routing_key, message):
        # An unroutable message (no such queue) is returned, then acked: not delivered.
        self.returned.add(message.properties.get("correlation_id"))

    def publish(self, messages: list[tuple[amqp.Message, str]], timeout: float) -> None:
        """Publishes every (message, queue) and waits for all confirms; raises unless all were stored."""
        deadline = time.monotonic() + timeout
        tags = set()
        for message, queue in messages:
            # py-amqp's plain publish (in confirm mode its publish waits message by
            # message), mandatory through the jobs exchange: a message no queue takes
            # comes back instead of being confirmed and dropped.
            self.channel._basic_publish(
                message, exchange=topology.JOBS_EXCHANGE, routing_key=queue, mandatory=True,
                timeout=max(0.1, deadline - time.monotonic()),
            )  # fmt: skip
            tags.add(self.next_tag)
            self.unconfirmed.add(self.next_tag)
            self.next_tag += 1
        while tags & self.unconfirmed:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                waiting = len(tags & self.unconfirmed)
                raise ConfirmTimeout(
                    f"RabbitMQ had not confirmed {waiting} of {len(messages)} in {timeout}s"
                ) from None
        nacked, self.failed = tags & self.failed, self.failed - tags
        ids = {m.properties.get("correlation_id") for m, _ in messages}
        returned, self.returned = ids & self.returned, self.returned - ids
        if nacked:
            raise amqp.exceptions.MessageNacked(
                f"RabbitMQ refused (nacked) {len(nacked)} message(s) of the batch"
            )
        if returned:
            raise UnroutableJob(f"{len(returned)} message(s) reached no queue (is the topology declared?)")

    def close(self):
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


class UnroutableJob(Exception):
    """RabbitMQ returned a message: no queue is bound for it."""


# One kept channel per process, used under a lock: threads of a web server take turns
# (a publish takes milliseconds) instead of each opening a connection of its own.
_lock = threading.Lock()
_shared: _ConfirmChannel | None = None


def _channel() -> _ConfirmChannel:
    global _shared
    if _shared is None:
        _shared = _ConfirmChannel()
    return _shared


def _drop_channel() -> None:
    global _shared
    channel, _shared = _shared, None
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
        with _lock:
            try:
                _channel().publish(messages, timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS)
            except (ConnectionError, OSError, amqp.exceptions.AMQPError):
                # A connection kept from an earlier publish may have died (broker
                # restart): one fresh attempt, then give up.
                _drop_channel()
                _channel().publish(messages, timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the jobs pending
        with _lock:
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
