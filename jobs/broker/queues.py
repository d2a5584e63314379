"""Broker administration of the topology that `jobs.topology` declares.

`declare` makes it exist; `verify` reports, queue by queue, whether RabbitMQ's queue
has the declared arguments (a queue declared otherwise drifts); `recreate` migrates
a drifted queue to them with its messages. Workers, the dead-letter keeper and
`manage.py jobs_topology` call these; nothing here publishes a job.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.topology import dead_letter_exchange, dead_letter_queue, jobs_exchange, workload_queues


def declare(connection) -> None:
    """Declares exchanges and every queue on `connection` (idempotent).

    Raises kombu/amqp PreconditionFailed when a queue exists with other arguments;
    `verify` turns that into a readable drift report.
    """
    channel = connection.default_channel
    dead_letter_exchange()(channel).declare()
    dead_letter_queue()(channel).declare()
    jobs_exchange()(channel).declare()
    for queue in workload_queues():
        queue(channel).declare()


@dataclass(frozen=True)
class QueueReport:
    name: str
    status: str  # "ok", "created" or "drift"
    detail: str = ""


FIX_DRIFT = "python manage.py jobs_topology --fix"


def drift_advice(report: QueueReport) -> str:
    """What an operator reads when a queue drifted: which, how, and the command that fixes it."""
    return (
        f"RabbitMQ's queue {report.name!r} was declared with other arguments than this release "
        f"declares ({report.detail}). Stop the workers and the dead-letter keeper, then run "
        f"`{FIX_DRIFT}`: it migrates the queue to the declared arguments with its messages."
    )


def verify(connection, names: list[str] | None = None) -> list[QueueReport]:
    """Declares what is missing and reports, per queue (of `names`, else all), ok /
    created / drift.

    RabbitMQ refuses to redeclare a queue with other arguments (PRECONDITION_FAILED,
    which also closes the channel), so each queue is tried on a channel of its own
    and a refusal is reported with the server's own explanation.
    """
    from amqp.exceptions import NotFound, PreconditionFailed

    for exchange in (dead_letter_exchange(), jobs_exchange()):
        channel = connection.channel()
        try:
            exchange(channel).declare()
        except PreconditionFailed as exc:
            return [QueueReport(exchange.name, "drift", _reply_text(exc))]
        finally:
            _close_quietly(channel)

    reports = []
    for queue in [*workload_queues(), dead_letter_queue()]:
        if names is not None and queue.name not in names:
            continue
        channel = connection.channel()
        try:
            channel.queue_declare(queue.name, passive=True)
            existed = True
        except NotFound:
            existed = False
            channel = connection.channel()
        try:
            queue(channel).declare()
            reports.append(QueueReport(queue.name, "ok" if existed else "created"))
        except PreconditionFailed as exc:
            reports.append(QueueReport(queue.name, "drift", _reply_text(exc)))
        finally:
            _close_quietly(channel)
    return reports


def recreate(connection, name: str) -> int:
    """Migrates queue `name` to the declared arguments, keeping its messages.

    A durable holding queue takes over the queue's binding first, so messages
    published during the migration are kept, not dropped as unroutable. Then the old
    queue is drained into it (with publisher confirms), deleted only when empty,
    declared anew, and the messages moved back. Returns how many messages were
    carried over. Stop the workers that consume `name` first.
    """
    by_name = {q.name: q for q in [*workload_queues(), dead_letter_queue()]}
    if name not in by_name:
        raise ValueError(f"{name!r} is not a queue of the topology; known: {', '.join(by_name)}.")
    queue = by_name[name]
    exchange, routing_key = queue.exchange.name, queue.routing_key or ""
    holding = f"{name}.migrating"
    channel = connection.channel()
    try:
        channel.queue_declare(holding, durable=True, auto_delete=False)
        channel.queue_bind(holding, exchange, routing_key)
        channel.queue_unbind(name, exchange, routing_key)
        moved = _move_all(channel, name, holding)
        _delete_empty(channel, name)
        # A fresh channel for the new queue: RabbitMQ 3.10's channel keeps the deleted
        # queue's type, and a publish to a queue of the same name but another type
        # (classic to quorum) on it fails with INTERNAL_ERROR.
        _close_quietly(channel)
        channel = connection.channel()
        queue(channel).declare()
        channel.queue_unbind(holding, exchange, routing_key)
        _move_all(channel, holding, name)
        _delete_empty(channel, holding)
        return moved
    finally:
        _close_quietly(channel)


def _delete_empty(channel, name: str) -> None:
    # Quorum queues refuse queue.delete's if-empty flag: look, then delete. Nothing
    # publishes to `name` meanwhile: its binding went to the holding queue first.
    _, messages, _ = channel.queue_declare(name, passive=True)
    if messages:
        raise RuntimeError(f"queue {name!r} still holds {messages} message(s); not deleting it")
    channel.queue_delete(name)


def _move_all(channel, source: str, target: str) -> int:
    # Through the default exchange, straight to the target queue by name; the
    # message keeps its properties (priority, headers, persistence).
    moved = 0
    while (message := channel.basic_get(source, no_ack=False)) is not None:
        channel.basic_publish_confirm(message, exchange="", routing_key=target)
        channel.basic_ack(message.delivery_tag)
        moved += 1
    return moved


def _reply_text(exc: Exception) -> str:
    return getattr(exc, "reply_text", None) or str(exc)


def _close_quietly(channel) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - the channel may already be closed by the server
        pass
