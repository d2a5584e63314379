"""The process's publishing: ledger rows to RabbitMQ, with publisher confirms, many in
flight at once, and one raw message when an operator replays it.

A batch is published on one channel in confirm mode (`ConfirmChannel`) without
waiting message by message, in chunks whose confirms come in while the next chunk is
sent (at most MAX_CHUNKS_IN_FLIGHT unconfirmed); RabbitMQ's `multiple` acks cover many
at once. A chunk that is not fully confirmed in time leaves its jobs `pending` for the
relay, and `publish_jobs` never raises into the caller. After a failure this process
stops trying for a few seconds, so a burst of requests during a broker outage does
not pay a connection attempt each.

Messages are `build_message(job)`'s and go mandatory through the jobs exchange to the
job's workload queue: a message no queue takes comes back as an error instead of
being dropped.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

import amqp
from django.conf import settings
from django.db import connection as db_connection
from django.db import transaction
from django.utils import timezone

from jobs import ledger, topology, tracing
from jobs.broker.confirms import ConfirmChannel, Unroutable
from jobs.broker.message import build_message
from jobs.models import Job

logger = logging.getLogger(__name__)

# Seconds this process leaves publishing to the relay after a failed publish.
BROKER_DOWN_BACKOFF = 3.0
_broker_down_until = 0.0


def broker_marked_down() -> bool:
    """Whether a publish of this process failed within the last BROKER_DOWN_BACKOFF seconds."""
    return time.monotonic() < _broker_down_until


# Chunks of a publish sent and not yet confirmed, at most.
MAX_CHUNKS_IN_FLIGHT = 8

# One kept channel per process, used under a lock: threads of a web server take turns
# (a publish takes milliseconds) instead of each opening a connection of its own.
_lock = threading.Lock()
_shared: ConfirmChannel | None = None


class _LeftForTheRelay(Exception):
    """This publish leaves its jobs to the relay, though the broker did not fail it."""


class PublisherBusy(Exception):
    """Another thread held the process's publisher for longer than a publish may wait."""


@contextlib.contextmanager
def _holding_publisher(timeout: float, force: bool):
    """Holds the process's publisher for this thread, waiting at most `timeout` for
    it: a thread whose publish is stuck on a stalled broker must not make every
    other thread's enqueue wait its turn behind it. A publish that failed while this
    one waited (the broker marked down) ends this one too, unless `force`.

    A failure under the publisher marks the broker down and drops the channel before
    the publisher is let go: the next thread to hold it sees the mark, and never
    gets the failed channel.
    """
    global _broker_down_until
    if not _lock.acquire(timeout=timeout):
        raise _LeftForTheRelay(f"another thread held the publisher for over {timeout:g}s")
    try:
        if broker_marked_down() and not force:
            raise _LeftForTheRelay("a publish in another thread has just failed")
        try:
            yield
        except _LeftForTheRelay:
            raise
        except BaseException:
            # Interrupted too (a signal mid-read): the channel may hold half a frame.
            _broker_down_until = time.monotonic() + BROKER_DOWN_BACKOFF
            _drop_channel()
            raise
    finally:
        _lock.release()


def _channel() -> ConfirmChannel:
    global _shared
    if _shared is not None and _shared.broken:
        _drop_channel()
    if _shared is None:
        _shared = ConfirmChannel(settings.JOBS_PUBLISH_TIMEOUT_SECONDS)
    return _shared


def _drop_channel() -> None:
    global _shared
    channel, _shared = _shared, None
    if channel is not None:
        channel.close()


def _send(messages: Sequence[tuple[amqp.Message, str, str]], timeout: float, first: bool):
    """Sends on the process's channel; returns (channel, tags). The `first` send of a
    publish that fails gets one fresh connection: a connection kept from an earlier
    publish may have died (a broker restart)."""
    channel = _channel()
    try:
        return channel, channel.send(messages, timeout)
    except (ConnectionError, OSError, amqp.exceptions.AMQPError):
        if not first:
            raise
        _drop_channel()
        channel = _channel()
        return channel, channel.send(messages, timeout)


def publish_jobs(jobs: Sequence[Job], *, force: bool = False, chunk_size: int = 1000) -> list[Job]:
    """Publishes `jobs` and marks them `queued`; returns those published, in order.

    Messages go out in chunks of `chunk_size` without stopping for RabbitMQ between
    chunks: the confirms of one chunk come in while the next is sent, and a chunk is
    marked queued once every message of it is confirmed. A chunk that RabbitMQ does
    not confirm within JOBS_PUBLISH_TIMEOUT_SECONDS of its sending counts as failed,
    and so does every chunk after it: those jobs stay pending for the relay, and if
    some of them did reach RabbitMQ, the worker side runs each job once anyway. Any
    broker failure is logged, never raised. With `force`, a recent failure does not
    stop the attempt (the relay uses it to probe the broker).
    """
    if not jobs or (broker_marked_down() and not force):
        return []
    timeout, exchange = settings.JOBS_PUBLISH_TIMEOUT_SECONDS, topology.JOBS_EXCHANGE
    # Before the first send: a worker that defers one of these jobs does so later.
    began = timezone.now()
    published: list[Job] = []
    in_flight: collections.deque = collections.deque()  # (channel, chunk, tags, deadline)
    # A publish of several chunks marks them from a second connection while it sends;
    # not inside a transaction, whose row locks that connection would wait on.
    marks = _MarksOnTheSide() if len(jobs) > chunk_size and db_connection.get_autocommit() else None
    mark_jobs = marks.mark_jobs if marks else _mark_queued

    def mark_queued(confirmed: Sequence[Job]) -> None:
        mark_jobs(confirmed, began)

    try:
        for start in range(0, len(jobs), chunk_size):
            chunk = jobs[start : start + chunk_size]
            with tracing.publishing(chunk) as carried:
                messages = [
                    (build_message(job, carried.get(job.traceparent)), exchange, job.queue) for job in chunk
                ]
                with _holding_publisher(timeout, force):
                    _check_in_flight_channel(in_flight)
                    channel, tags = _send(messages, timeout, first=not (in_flight or published))
                    in_flight.append((channel, chunk, tags, time.monotonic() + timeout))
                    # send() took in the confirms that had come before it wrote. Waits for
                    # the oldest chunk once enough are unconfirmed: a publish of a million
                    # jobs keeps a bounded number of messages, and of RabbitMQ's work.
                    confirmed = _take_confirmed(in_flight, wait=len(in_flight) >= MAX_CHUNKS_IN_FLIGHT)
            published += confirmed
            mark_queued(confirmed)
        while in_flight:
            with _holding_publisher(timeout, force):
                confirmed = _take_confirmed(in_flight, wait=True)
            published += confirmed
            mark_queued(confirmed)
    except _LeftForTheRelay as exc:
        logger.warning("%d job(s) stay pending for the relay: %s", len(jobs) - len(published), exc)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the jobs pending
        # A failure under the publisher has marked the broker down already; one while
        # marking jobs queued (the database's, outside it) does not.
        logger.warning(
            "publish failed; %d job(s) stay pending for the relay: %s: %s",
            len(jobs) - len(published),
            exc.__class__.__name__,
            str(exc)[:200],
        )
    finally:
        if marks:
            marks.close()
    return published


def publish_message(message: amqp.Message, exchange: str, routing_key: str) -> None:
    """Publishes one message as it is (a dead letter's copy), mandatory, and returns
    once RabbitMQ has confirmed it; raises if it did not (down, refused, no queue
    bound for `routing_key`, no confirm within JOBS_PUBLISH_TIMEOUT_SECONDS).

    On the process's channel, like every publish: an operator's replay is tried even
    while this process leaves its jobs to the relay after a failed publish.
    """
    timeout = settings.JOBS_PUBLISH_TIMEOUT_SECONDS
    refused: Exception | None = None
    try:
        with _holding_publisher(timeout, force=True):
            channel, tags = _send([(message, exchange, routing_key)], timeout, first=True)
            try:
                channel.settle(tags, [message.properties.get("correlation_id")], time.monotonic() + timeout)
            except (Unroutable, amqp.exceptions.MessageNacked) as exc:
                # The broker answered: the channel is sound, and stays.
                refused = exc
    except _LeftForTheRelay as exc:
        raise PublisherBusy(str(exc)) from None
    if refused is not None:
        raise refused


class _MarksOnTheSide:
    """Marks confirmed chunks queued from a second connection (ledger.BackgroundMarks)
    while the next chunk is sent; after a failure there, marks inline instead."""

    def __init__(self):
        try:
            self.marks: ledger.BackgroundMarks | None = ledger.BackgroundMarks()
        except Exception as exc:  # noqa: BLE001 - marking inline is as correct, only slower
            logger.warning("no second database connection to mark jobs queued (%s); marking inline", exc)
            self.marks = None

    def mark_jobs(self, jobs: Sequence[Job], published_since) -> None:
        if self.marks is not None:
            try:
                for attempts, ids in _by_attempts(jobs).items():
                    self.marks.mark(ids, attempts, published_since)
                return
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
        _mark_queued(jobs, published_since)

    def close(self) -> None:
        if self.marks is not None:
            try:
                self.marks.close()
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        # What was sent on it may not be marked: those jobs stay pending, and the
        # relay sends them again; the worker side runs each job once.
        logger.warning("marking published jobs queued on the side failed; marking inline: %s", exc)
        marks, self.marks = self.marks, None
        try:
            marks.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


def _check_in_flight_channel(in_flight: collections.deque) -> None:
    """Chunks still unconfirmed on a channel that is no longer the process's were
    sent on one that another thread's failed publish closed (and marked the broker
    down): they are left to the relay, and the channel now in use is left alone."""
    if in_flight and in_flight[0][0] is not _shared:
        raise _LeftForTheRelay("another thread's failed publish closed the channel these were sent on")


def _take_confirmed(in_flight: collections.deque, wait: bool) -> list[Job]:
    """Pops the chunks at the head of `in_flight` that are wholly confirmed (waiting for
    the first one if `wait`); returns their jobs. Raises if a chunk failed."""
    confirmed: list[Job] = []
    while in_flight:
        _check_in_flight_channel(in_flight)
        channel, chunk, tags, deadline = in_flight[0]
        if not channel.settle(tags, (str(job.id) for job in chunk), deadline if wait else None):
            break
        in_flight.popleft()
        confirmed += chunk
        wait = False  # only the head is waited for; the rest are taken if already in
    return confirmed


def _by_attempts(jobs: Sequence[Job]) -> dict[int, list]:
    # Only rows still pending at the attempt that was published move: a worker may
    # already have started one (or started, failed and put it back to pending).
    groups: dict[int, list] = {}
    for job in jobs:
        groups.setdefault(job.attempts, []).append(job.id)
    return groups


def _mark_queued(jobs: Sequence[Job], published_since) -> None:
    try:
        for attempts, ids in _by_attempts(jobs).items():
            ledger.mark_queued(ids, attempts, published_since)
    except Exception as exc:  # noqa: BLE001 - the broker took them; only the mark is missing
        # They stay pending, and the relay sends them again; the worker side runs
        # each job once. Not a broker failure: later publishes go on. Inside a
        # transaction (the relay's), the failed statement has aborted it: say so, so
        # that it ends in a rollback rather than a COMMIT that PostgreSQL refuses.
        if not db_connection.get_autocommit():
            transaction.set_rollback(True)
        logger.warning(
            "%d job(s) published but not marked queued; the relay will send them again: %s: %s",
            len(jobs),
            exc.__class__.__name__,
            str(exc)[:200],
        )
