"""Dead letters: the keeper that records them, and replay and discard.

The keeper consumes the dead-letter queue into PostgreSQL and acks each message only
after its row is committed, so a keeper that dies loses nothing. It reads raw bytes
and never deserializes a body (a pickle stays a string of bytes).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import math
import time
import uuid

import amqp
from amqp.exceptions import PreconditionFailed
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from jobs import ledger, services, task_message, topology
from jobs.app import celery_app
from jobs.base import ended_dead
from jobs.broker import publisher, queues
from jobs.models import DeadLetter, DeadLetterState, Job
from jobs.storable import unstorable_text

logger = logging.getLogger(__name__)

# Headers that describe a message's deaths; a replayed copy starts without them.
_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")


class ReplayError(ValueError):
    """A dead letter that cannot be replayed; the message says why."""


class _Storable:
    """Turns a message's headers and properties into what PostgreSQL can hold.

    Text columns and jsonb refuse NUL and lone UTF-16 surrogates; such a string is
    kept JSON-escaped (a NUL reads as the six characters \\u0000) and `escaped`
    says that it happened, so the record can say so.
    """

    def __init__(self) -> None:
        self.escaped = False

    def text(self, value, limit: int | None = None) -> str:
        text = value if isinstance(value, str) else str(value)
        if unstorable_text(text):
            self.escaped = True
            text = json.dumps(text)[1:-1]
        return text[:limit] if limit is not None else text

    def plain(self, value):
        """Header values as JSON (x-death holds datetimes; AMQP tables may hold bytes)."""
        if isinstance(value, dict):
            return {self.text(k): self.plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.plain(v) for v in value]
        if isinstance(value, datetime.datetime):
            return value.isoformat()
        if isinstance(value, bytes):
            return self.text(value.decode(errors="replace"))
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, float) and not math.isfinite(value):
            return repr(value)
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.text(value)


def _body_text(body: bytes) -> tuple[str, str, bool]:
    """(text, encoding, held NUL): the body as text if PostgreSQL can hold it as it is,
    else as base64."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64", False
    if "\x00" in text:
        return base64.b64encode(body).decode("ascii"), "base64", True
    return text, "utf-8", False


def _explain(headers: dict, properties: dict, body: bytes, reason: str, job: Job | None) -> str:
    """Why this message is dead, in a sentence, when the ledger has no better error."""
    if job is not None and job.last_error:
        return job.last_error
    if reason == "delivery_limit":
        deliveries = headers.get("x-delivery-count")
        return (
            f"RabbitMQ dead-lettered it after {deliveries or 'too many'} deliveries, the quorum queue's "
            "delivery limit (JOBS_QUORUM_DELIVERY_LIMIT): its worker died during each run, or it was "
            "requeued that often."
        )
    content_type = properties.get("content_type") or ""
    task = headers.get("task")
    if content_type and content_type != "application/json":
        return (
            f"Refused: content type {content_type} is not accepted (JSON only); the body was never decoded."
        )
    if not task:
        return "Not a task message (no task header): a foreign publisher or a malformed message."
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return "The body could not be decoded as JSON."
    refused = task_message.refusal(headers, payload)
    if refused:
        return f"Refused by the worker: {refused}"
    app = celery_app()
    if task not in app.tasks:
        return f"No job is registered as {task!r} on the workers."
    return f"Dead-lettered by RabbitMQ ({reason or 'no reason given'})."


def record_dead_letter(body: bytes, headers: dict, properties: dict, delivery_info: dict) -> DeadLetter:
    """Records one message of the dead-letter queue, whatever its bytes; commits before returning.

    A message seen again while its row is still open (the same task id) updates that
    row: last seen, death count, times seen. A job the ledger still thinks alive (a
    message rejected before the job could run, such as an unknown task name) is
    marked dead. What PostgreSQL cannot hold is stored escaped (headers) or as base64
    (the body), and the record's error says so.
    """
    headers = headers or {}
    store = _Storable()
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    routing_keys = death.get("routing-keys") or [delivery_info.get("routing_key", "")]
    identity = store.text(
        headers.get("id") or properties.get("message_id") or hashlib.sha256(body).hexdigest()
    )
    if len(identity) > 255:
        identity = hashlib.sha256(identity.encode()).hexdigest()
    job_id = _as_uuid(headers.get("id"))
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.filter(pk=job_id).first() if job_id else None
        reason = store.text(death.get("reason") or "", 32)
        if job is not None and not job.is_finished:
            why = store.text(_explain(headers, properties, body, reason, None))
            moved = ledger.mark_dead(job.id, last_error=f"Dead-lettered by RabbitMQ: {why}", finished_at=now)
            job.refresh_from_db()
            if moved:
                # The app's own record of the job (an email's status) ends with it.
                transaction.on_commit(lambda job=job: ended_dead(job, job.last_error))
        text, encoding, held_nul = _body_text(body)
        count = death.get("count")
        fields = {
            "job": job,
            "task_name": store.text(headers.get("task") or "", 200),
            "queue": store.text(death.get("queue") or headers.get("x-first-death-queue") or "", 200),
            "exchange": store.text(death.get("exchange") or "", 200),
            "routing_key": store.text(
                routing_keys[0] if isinstance(routing_keys, list) and routing_keys else "", 200
            ),
            "reason": reason,
            "death_count": min(count, 2**31 - 1) if isinstance(count, int) and count > 0 else 1,
            "error": store.text(_explain(headers, properties, body, reason, job)),
            "headers": store.plain(headers),
            "properties": store.plain(properties),
            "body": text,
            "body_encoding": encoding,
            "last_seen": now,
        }
        notes = []
        if store.escaped:
            notes.append("some of its header values held NUL or invalid text and are stored JSON-escaped")
        if held_nul:
            notes.append("its body holds NUL bytes and is stored as base64")
        if notes:
            fields["error"] += f" (Stored as received, except that {' and '.join(notes)}.)"
        existing = (
            DeadLetter.objects.select_for_update()
            .filter(identity=identity, state=DeadLetterState.OPEN)
            .first()
        )
        if existing is not None:
            for name, value in fields.items():
                setattr(existing, name, value)
            existing.times_seen += 1
            existing.save()
            return existing
        return DeadLetter.objects.create(identity=identity, first_seen=now, **fields)


def _as_uuid(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def replay(dead_letter_id: int, by: str) -> DeadLetter:
    """Republishes a dead letter to its original queue; one replay however many ask.

    A job's dead letter becomes a new attempt of the same job (the ledger row goes
    back to pending and is published after commit, like any job). A message the
    ledger never knew is republished as it was, less its death headers. The row is
    locked while this runs: of two concurrent replays, the second finds it replayed
    and raises ReplayError.
    """
    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().filter(pk=dead_letter_id).first()
        if letter is None:
            raise ReplayError(f"Dead letter {dead_letter_id} does not exist.")
        if letter.state != DeadLetterState.OPEN:
            raise ReplayError(
                f"Dead letter {dead_letter_id} was already {letter.state} by {letter.resolved_by}."
            )
        if letter.job_id is not None:
            if not services.retry_job(letter.job_id):
                state = Job.objects.filter(pk=letter.job_id).values_list("state", flat=True).first()
                raise ReplayError(
                    f"Job {letter.job_id} is {state}, not dead: it was retried or finished since. "
                    "Discard this dead letter instead."
                )
        else:
            if not letter.queue:
                raise ReplayError(f"Dead letter {dead_letter_id} has no original queue to go back to.")
            _republish_raw(letter)
        letter.state = DeadLetterState.REPLAYED
        letter.replay_count += 1
        letter.resolved_by = by
        letter.resolved_at = timezone.now()
        letter.save(update_fields=["state", "replay_count", "resolved_by", "resolved_at"])
        return letter


def _republish_raw(letter: DeadLetter) -> None:
    """Publishes the letter's message again, as it was less its death headers, straight
    to its original queue; raises ReplayError if RabbitMQ did not take it."""
    body = base64.b64decode(letter.body) if letter.body_encoding == "base64" else letter.body.encode()
    headers = {k: v for k, v in (letter.headers or {}).items() if k not in _DEATH_HEADERS}
    props = letter.properties or {}
    message = amqp.Message(
        body,
        content_type=props.get("content_type") or "application/octet-stream",
        content_encoding=props.get("content_encoding") or "binary",
        application_headers=headers,
        priority=props.get("priority") or 0,
        delivery_mode=2,
    )
    try:
        publisher.publish_message(message, exchange="", routing_key=letter.queue)
    except Exception as exc:  # noqa: BLE001 - every way of not being published reads the same
        raise ReplayError(
            f"Dead letter {letter.pk} was not replayed: RabbitMQ did not take its copy for queue "
            f"{letter.queue!r} ({exc.__class__.__name__}: {str(exc)[:200]}). It stays open; try again "
            "once RabbitMQ is reachable and the queue exists (manage.py jobs_topology)."
        ) from exc


def discard(dead_letter_id: int, by: str) -> bool:
    """Marks an open dead letter discarded, with who and when; False if not open."""
    return bool(
        DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetterState.OPEN).update(
            state=DeadLetterState.DISCARDED, resolved_by=by, resolved_at=timezone.now()
        )
    )


def _record_whatever_it_holds(
    body: bytes, headers: dict, properties: dict, delivery_info: dict
) -> DeadLetter:
    """record_dead_letter, falling back to the body alone if its headers cannot be kept.

    A data error is never a reason to requeue: requeued, the same message would fail
    again at once, for ever, and keep every dead letter behind it from being seen.
    """
    try:
        return record_dead_letter(body, headers, properties, delivery_info)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:  # noqa: BLE001 - odd headers must not block the queue
        logger.exception("dead letter with unreadable headers; recording its body only")
        letter = record_dead_letter(body, {}, {}, {})
        note = f" Its headers could not be recorded ({exc.__class__.__name__})."
        DeadLetter.objects.filter(pk=letter.pk).update(error=letter.error + note)
        letter.error += note
        return letter


def run_keeper(stop=lambda: False, prefetch: int = 20) -> None:
    """Consumes the dead-letter queue into DeadLetter rows until `stop()` is true."""
    from kombu import Consumer

    app = celery_app()

    def on_message(message) -> None:
        body = message.body
        if isinstance(body, str):  # py-amqp decoded it by its content_encoding; keep the bytes
            body = body.encode(message.content_encoding or "utf-8")
        try:
            letter = _record_whatever_it_holds(
                body,
                dict(message.headers or {}),
                dict(message.properties or {}),
                dict(message.delivery_info or {}),
            )
        except (OperationalError, InterfaceError) as exc:
            # The database is away: keep the message in the queue and try again. Only
            # this; a message the database refuses (a data error) is recorded below.
            logger.warning("dead letter not recorded (%s); requeued, retrying", exc.__class__.__name__)
            connection.close()
            message.requeue()
            time.sleep(1.0)
            return
        message.ack()
        logger.info(
            "dead letter %s recorded: task=%s queue=%s reason=%s job=%s",
            letter.pk, letter.task_name or "-", letter.queue or "-", letter.reason or "-", letter.job_id or "-",
        )  # fmt: skip

    while not stop():
        try:
            with app.connection_for_read(heartbeat=30) as conn:
                conn.ensure_connection(max_retries=3)
                channel = conn.channel()
                channel.basic_qos(0, prefetch, False)
                queue = topology.dead_letter_queue()(channel)
                queue.declare()
                with Consumer(channel, queues=[queue], on_message=on_message, no_ack=False):
                    logger.info("dead-letter keeper consuming %s", topology.DEAD_LETTER_QUEUE)
                    while not stop():
                        try:
                            conn.drain_events(timeout=1.0)
                        except TimeoutError:
                            conn.heartbeat_check()
        except Exception as exc:  # noqa: BLE001 - the keeper outlives broker restarts
            if stop():
                return
            if isinstance(exc, PreconditionFailed):  # the dead-letter queue drifted
                report = queues.QueueReport(
                    topology.DEAD_LETTER_QUEUE, "drift", getattr(exc, "reply_text", "")
                )
                logger.error("dead-letter keeper cannot consume: %s", queues.drift_advice(report))
                time.sleep(10.0)
                continue
            logger.warning("dead-letter keeper stopped consuming (%r); reconnecting", exc, exc_info=True)
            time.sleep(2.0)
