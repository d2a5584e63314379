"""Publishes ledger rows to RabbitMQ with publisher confirms, many in flight at once.

A batch is published on one channel in confirm mode without waiting message by
message, in chunks whose confirms come in while the next chunk is sent (at most
MAX_CHUNKS_IN_FLIGHT unconfirmed); RabbitMQ's `multiple` acks cover many at once.
A chunk that is not fully confirmed in time leaves its jobs `pending` for the relay,
and a publish never raises into the caller. After a failure this process stops
trying for a few seconds, so a burst of requests during a broker outage does not pay
a connection attempt each.

Messages are Celery's own (protocol 2, JSON), as `build_message` makes them, framed
by JobFrames, and go mandatory through the jobs exchange to the job's workload
queue: a message no queue takes comes back as an error instead of being dropped.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Sequence

import amqp
from celery.utils.nodenames import anon_nodename
from django.conf import settings
from django.db import connection as db_connection
from django.db import transaction
from django.utils import timezone

from jobs import frames, ledger, topology
from jobs.app import celery_app
from jobs.models import Job

logger = logging.getLogger(__name__)

# Seconds this process leaves publishing to the relay after a failed publish.
BROKER_DOWN_BACKOFF = 3.0
_broker_down_until = 0.0


def broker_marked_down() -> bool:
    return time.monotonic() < _broker_down_until


class ConfirmTimeout(Exception):
    """RabbitMQ did not confirm a batch in time (a memory or disk alarm, a dead link)."""


# Chunks of a publish sent and not yet confirmed, at most.
MAX_CHUNKS_IN_FLIGHT = 8

# Bytes per socket write of a publish, each of which the broker must take in time.
_WRITE_SIZE = 256 * 1024


class _ConfirmChannel:
    """A connection and a channel in confirm mode, kept between publishes.

    Every delivery tag is tracked until RabbitMQ acks it (singly or with `multiple`),
    nacks it, or returns it as unroutable: a batch succeeds only when each of its own
    messages is acked and none came back.
    """

    def __init__(self, timeout: float):
        app = celery_app()
        # No heartbeats: nothing would send them while the process is idle, and the
        # broker would close the connection; a dead one is detected on next use.
        self.connection = app.connection_for_write(heartbeat=0)
        # Each node of a failover URL ("a;b;c") once, at once, each within
        # CELERY_BROKER_CONNECTION_TIMEOUT: a dead first node must not keep every
        # publish of this process on it.
        self.connection.ensure_connection(
            max_retries=len(self.connection.alt) - 1 if self.connection.alt else 0,
            interval_start=0,
            interval_step=0,
            interval_max=0,
        )
        # py-amqp's transport, which holds the socket (kombu's has none).
        self.transport = self.connection.connection.transport
        # Opening the channel waits for the broker's answers, with no timeout of its
        # own: a broker that hangs right after the handshake would hold this thread,
        # and the publisher, forever.
        try:
            with self.transport.having_timeout(timeout):
                self.channel = self.connection.channel()
                self.channel.confirm_select()
        except BaseException:
            self.close()
            raise
        self.frames = JobFrames(
            frames.PublishFrames(self.channel.channel_id, self.channel.connection.frame_max)
        )
        self.broken = False
        self.next_tag = 1
        self.settled_below = 1
        self.unconfirmed: set[int] = set()
        self.failed: set[int] = set()
        self.returned: set[str] = set()
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)
        self.channel.events["basic_return"].add(self._on_return)

    def _settle(self, delivery_tag: int, multiple: bool) -> set[int]:
        if not multiple:
            tags = {delivery_tag} & self.unconfirmed
        else:
            # Tags only grow: every tag below `settled_below` is settled already, so
            # a long publish costs one pass over its tags, not one per ack.
            tags = {t for t in range(self.settled_below, delivery_tag + 1) if t in self.unconfirmed}
            self.settled_below = max(self.settled_below, delivery_tag + 1)
        self.unconfirmed -= tags
        return tags

    def _on_ack(self, delivery_tag, multiple):
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag, multiple):
        self.failed |= self._settle(delivery_tag, multiple)

    def _on_return(self, exc, exchange, routing_key, message):
        # An unroutable message (no such queue) is returned, then acked: not delivered.
        self.returned.add(message.properties.get("correlation_id"))

    def send(self, jobs: Sequence[Job], timeout: float) -> set[int]:
        """Sends the message of each job to its queue without waiting for confirms;
        returns their delivery tags.

        Mandatory, through the jobs exchange: a message no queue takes comes back
        instead of being confirmed and dropped. The frames are what py-amqp would
        write one by one (JobFrames), and go out in large writes; the broker must
        take each write within `timeout` (a stalled broker fails the send, a slow
        but steady one does not).
        """
        connection = self.channel.connection
        if connection is None:
            raise amqp.exceptions.RecoverableConnectionError("publish: the channel is closed")
        # A connection the broker closed while this one sat idle (a restart) still
        # takes a small write: read what it said first, so that the caller's
        # reconnect sees the failure here and not after the write.
        self.poll()
        exchange, job_frames = topology.JOBS_EXCHANGE, self.frames
        data = memoryview(b"".join([job_frames(job, exchange, job.queue) for job in jobs]))
        try:
            for start in range(0, len(data), _WRITE_SIZE):
                with connection.transport.having_timeout(timeout):
                    connection.transport.write(data[start : start + _WRITE_SIZE])
        except BaseException as exc:
            # Cut off mid-stream, the broker may hold some of these messages and a
            # partial frame: tags would no longer match. This connection is done.
            self.broken = True
            if isinstance(exc, OSError):  # a timeout included (celery/py-amqp#452)
                raise amqp.exceptions.RecoverableConnectionError(f"publish: {exc}") from exc
            raise
        tags = set(range(self.next_tag, self.next_tag + len(jobs)))
        self.unconfirmed |= tags
        self.next_tag += len(jobs)
        return tags

    def poll(self) -> None:
        """Takes in the confirms that have arrived, without waiting."""
        try:
            while True:
                self.connection.drain_events(timeout=0)
        except TimeoutError:
            pass

    def settle(self, tags: set[int], jobs: Sequence[Job], deadline: float | None) -> bool:
        """Whether every one of `tags` is confirmed, waiting until `deadline` (None: not at
        all); raises if one was refused or returned, or the deadline passed."""
        while tags & self.unconfirmed:
            if deadline is None:
                return False
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                waiting = len(tags & self.unconfirmed)
                raise ConfirmTimeout(f"RabbitMQ had not confirmed {waiting} of {len(jobs)} in time") from None
        nacked, self.failed = tags & self.failed, self.failed - tags
        ids = {str(job.id) for job in jobs}
        returned, self.returned = ids & self.returned, self.returned - ids
        if nacked:
            raise amqp.exceptions.MessageNacked(
                f"RabbitMQ refused (nacked) {len(nacked)} message(s) of the batch"
            )
        if returned:
            raise UnroutableJob(f"{len(returned)} message(s) reached no queue (is the topology declared?)")
        return True

    def close(self):
        """Drops the connection without AMQP's closing handshake: it is closed after a
        failure, with the publisher held, and a broker that blocks publishers (a
        memory or disk alarm) would never answer Connection.Close. Over TLS, the
        socket's unwrap still waits for the broker: at most half a second."""
        try:
            if self.transport.sock is not None:
                self.transport.sock.settimeout(0.5)
            self.connection.collect()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


class UnroutableJob(Exception):
    """RabbitMQ returned a message: no queue is bound for it."""


# One kept channel per process, used under a lock: threads of a web server take turns
# (a publish takes milliseconds) instead of each opening a connection of its own.
_lock = threading.Lock()
_shared: _ConfirmChannel | None = None


class _LeftForTheRelay(Exception):
    """This publish leaves its jobs to the relay, though the broker did not fail it."""


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


def _channel() -> _ConfirmChannel:
    global _shared
    if _shared is not None and _shared.broken:
        _drop_channel()
    if _shared is None:
        _shared = _ConfirmChannel(settings.JOBS_PUBLISH_TIMEOUT_SECONDS)
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


class JobFrames:
    """The frames of `build_message(job)`, built from the job's fields directly.

    Building each message, then its frames, was a third of a bulk publish (33 us a
    message). Messages of jobs differ only in a few fields (the id, written three
    times, the argument reprs, the priority, the body), so the header frame is the
    bytes around those, made once per task name, with the fields put in between.
    A unit test compares the result with `PublishFrames.publish(build_message(job))`
    for jobs of every kind; a job this layout does not cover (a priority that is not
    a small int, an id that is not a UUID's 36 characters) goes the general way.
    """

    _FLAGS = frames.property_flags(
        ("content_type", "content_encoding", "application_headers", "delivery_mode", "priority",
         "correlation_id", "reply_to")
    )  # fmt: skip

    def __init__(self, publish_frames: frames.PublishFrames):
        self.frames = publish_frames
        self._around_ids: dict[str, tuple[bytes, bytes]] = {}
        # After the kwargsrepr: the origin and ignore_result headers.
        self._tail = frames.table_items({"origin": _origin(), "ignore_result": True})
        self._props_head = self._FLAGS + frames.shortstr("application/json") + frames.shortstr("utf-8")

    def __call__(self, job: Job, exchange: str, routing_key: str) -> bytes:
        priority, task_id = job.priority, str(job.id).encode()
        if type(priority) is not int or not 0 <= priority <= 255 or len(task_id) != 36:
            return self.frames.publish(build_message(job), exchange, routing_key, True)
        before_id, between_ids = self._around_ids.get(job.task_name) or self._pieces_around_ids(job.task_name)
        args, kwargs = list(job.args), dict(job.kwargs)
        argsrepr = repr(tuple(args))[:1024].encode("utf-8", "surrogatepass")
        kwargsrepr = repr(kwargs)[:1024].encode("utf-8", "surrogatepass")
        table = b"".join(
            (
                before_id, task_id, between_ids, task_id, _RETRIES_ARGSREPR, frames.LONG_LEN.pack(len(argsrepr)),
                argsrepr, _KWARGSREPR, frames.LONG_LEN.pack(len(kwargsrepr)), kwargsrepr, self._tail,
            )
        )  # fmt: skip
        body = json.dumps([args, kwargs, _EMBED]).encode()
        properties = b"".join(
            (
                self._props_head, frames.LONG_LEN.pack(len(table)), table,
                b"\x02", _OCTETS[priority], _ID_LEN, task_id, b"\x00",  # delivery mode, priority, ids, reply_to
            )
        )  # fmt: skip
        return self.frames.publish_raw(properties, body, exchange, routing_key, True)

    def _pieces_around_ids(self, task_name: str) -> tuple[bytes, bytes]:
        parts = (
            frames.table_items({"lang": "py", "task": task_name})
            + frames.shortstr("id")
            + b"S"
            + _ID_LONG_LEN,
            frames.shortstr("root_id") + b"S" + _ID_LONG_LEN,
        )
        self._around_ids[task_name] = parts
        return parts


_ID_LEN = bytes([36])  # a UUID's str
_ID_LONG_LEN = frames.LONG_LEN.pack(36)
_OCTETS = [bytes([n]) for n in range(256)]
_RETRIES_ARGSREPR = frames.table_items({"retries": 0}) + frames.shortstr("argsrepr") + b"S"
_KWARGSREPR = frames.shortstr("kwargsrepr") + b"S"


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
    timeout = settings.JOBS_PUBLISH_TIMEOUT_SECONDS
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
            with _holding_publisher(timeout, force):
                _check_in_flight_channel(in_flight)
                channel = _channel()
                try:
                    tags = channel.send(chunk, timeout)
                except (ConnectionError, OSError, amqp.exceptions.AMQPError):
                    if in_flight or published:
                        raise
                    # A connection kept from an earlier publish may have died (broker
                    # restart): one fresh attempt, then give up.
                    _drop_channel()
                    channel = _channel()
                    tags = channel.send(chunk, timeout)
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
        if not channel.settle(tags, chunk, deadline if wait else None):
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
