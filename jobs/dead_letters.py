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
import time
import uuid

from django.db import DatabaseError, InterfaceError, connection, transaction
from django.utils import timezone

from jobs import ledger, services, topology
from jobs.models import DeadLetter, DeadLetterState, Job, JobState

logger = logging.getLogger(__name__)

# Headers that describe a message's deaths; a replayed copy starts without them.
_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")


class ReplayError(ValueError):
    """A dead letter that cannot be replayed; the message says why."""


def _plain(value):
    """Header values as JSON (x-death holds datetimes; AMQP tables may hold bytes)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _body_text(body: bytes) -> tuple[str, str]:
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def _explain(headers: dict, properties: dict, body: bytes, reason: str, job: Job | None) -> str:
    """Why this message is dead, in a sentence, when the ledger has no better error."""
    if job is not None and job.last_error:
        return job.last_error
    content_type = properties.get("content_type") or ""
    task = headers.get("task")
    if content_type and content_type != "application/json":
        return (
            f"Refused: content type {content_type} is not accepted (JSON only); the body was never decoded."
        )
    if not task:
        return "Not a task message (no task header): a foreign publisher or a malformed message."
    try:
        json.loads(body)
    except ValueError:
        return "The body could not be decoded as JSON."
    from project.celery import app

    if task not in app.tasks:
        return f"No job is registered as {task!r} on the workers."
    return f"Dead-lettered by RabbitMQ ({reason or 'no reason given'})."


def record_dead_letter(body: bytes, headers: dict, properties: dict, delivery_info: dict) -> DeadLetter:
    """Records one message of the dead-letter queue; commits before returning.

    A message seen again while its row is still open (the same task id) updates that
    row: last seen, death count, times seen. A job the ledger still thinks alive (a
    message rejected before the job could run, such as an unknown task name) is
    marked dead.
    """
    headers = headers or {}
    deaths = headers.get("x-death") or [{}]
    death = deaths[0]
    routing_keys = death.get("routing-keys") or [delivery_info.get("routing_key", "")]
    identity = str(headers.get("id") or properties.get("message_id") or hashlib.sha256(body).hexdigest())
    job_id = _as_uuid(headers.get("id"))
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.filter(pk=job_id).first() if job_id else None
        reason = str(death.get("reason") or "")
        if job is not None and not job.is_finished:
            ledger.transition(
                job.id,
                JobState.DEAD,
                last_error=f"Dead-lettered by RabbitMQ: {_explain(headers, properties, body, reason, None)}",
                finished_at=now,
            )
            job.refresh_from_db()
        text, encoding = _body_text(body)
        fields = {
            "job": job,
            "task_name": str(headers.get("task") or ""),
            "queue": str(death.get("queue") or headers.get("x-first-death-queue") or ""),
            "exchange": str(death.get("exchange") or ""),
            "routing_key": str(routing_keys[0] if routing_keys else ""),
            "reason": reason,
            "death_count": int(death.get("count") or 1),
            "error": _explain(headers, properties, body, reason, job),
            "headers": _plain(headers),
            "properties": _plain(properties),
            "body": text,
            "body_encoding": encoding,
            "last_seen": now,
        }
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
    from kombu import Producer

    from project.celery import app

    body = base64.b64decode(letter.body) if letter.body_encoding == "base64" else letter.body.encode()
    headers = {k: v for k, v in (letter.headers or {}).items() if k not in _DEATH_HEADERS}
    props = letter.properties or {}
    with app.connection_for_write() as conn:
        producer = Producer(conn.default_channel)
        producer.publish(
            body,
            exchange="",
            routing_key=letter.queue,
            content_type=props.get("content_type") or "application/octet-stream",
            content_encoding=props.get("content_encoding") or "binary",
            headers=headers,
            priority=props.get("priority") or 0,
            delivery_mode=2,
            timeout=5,
            confirm_timeout=5,
        )


def discard(dead_letter_id: int, by: str) -> bool:
    """Marks an open dead letter discarded, with who and when; False if not open."""
    return bool(
        DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetterState.OPEN).update(
            state=DeadLetterState.DISCARDED, resolved_by=by, resolved_at=timezone.now()
        )
    )


def run_keeper(stop=lambda: False, prefetch: int = 20) -> None:
    """Consumes the dead-letter queue into DeadLetter rows until `stop()` is true."""
    from kombu import Consumer

    from project.celery import app

    def on_message(message) -> None:
        body = message.body
        if isinstance(body, str):  # py-amqp decoded it by its content_encoding; keep the bytes
            body = body.encode(message.content_encoding or "utf-8")
        try:
            try:
                letter = record_dead_letter(
                    body,
                    dict(message.headers or {}),
                    dict(message.properties or {}),
                    dict(message.delivery_info or {}),
                )
            except (DatabaseError, InterfaceError):
                raise
            except Exception:  # noqa: BLE001 - odd headers must not block the queue
                logger.exception("dead letter with unreadable headers; recording its body only")
                letter = record_dead_letter(body, {}, {}, {})
        except (DatabaseError, InterfaceError) as exc:
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
            logger.warning("dead-letter keeper stopped consuming (%r); reconnecting", exc, exc_info=True)
            time.sleep(2.0)
