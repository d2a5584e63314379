"""The RabbitMQ topology of the platform, declared once.

Every workload has its own durable queue, whose rejected messages go to one
dead-letter exchange. One durable dead-letter queue is bound to that exchange; no
worker consumes it (the dead-letter keeper does). Worker `-Q` lists, compose services
and docs use `WORKLOAD_QUEUES`; nothing else spells a queue.

The queues are classic or quorum (`JOBS_QUEUE_TYPE`), and every one declares its type
explicitly, never inheriting the broker's default:

- classic (the default, for one node): priority queues of `MAX_PRIORITY` levels;
- quorum (RabbitMQ 3.8+, the only replicated type since 4.0, for a cluster):
  replicated; RabbitMQ's delivery limit (`JOBS_QUORUM_DELIVERY_LIMIT`) dead-letters a
  message delivered that often (a job that keeps killing its worker); dead-lettering
  is at-least-once (`x-dead-letter-strategy`, which needs `x-overflow:
  reject-publish`); priorities are two levels on RabbitMQ 4.0-4.2 (above 4 is high,
  served about 2:1 against low) and `x-max-priority` is not used.

A queue declared with other arguments drifts: `manage.py jobs_topology --fix`
migrates it, messages included (also from classic to quorum).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kombu import Exchange, Queue

JOBS_EXCHANGE = "jobs"
DEAD_LETTER_EXCHANGE = "jobs.dead"
DEAD_LETTER_QUEUE = "jobs.dead_letters"
MAX_PRIORITY = 10
QUEUE_VERSION = 2


class Workload(enum.StrEnum):
    """A workload queue: slow kinds of work cannot starve fast ones."""

    DEFAULT = "default"
    INVOICES = "invoices"  # CPU-heavy PDF rendering
    EMAILS = "emails"  # slow network I/O
    CACHE = "cache"  # fast invalidations


WORKLOAD_QUEUES: tuple[str, ...] = tuple(w.value for w in Workload)


class QueueType(enum.StrEnum):
    CLASSIC = "classic"
    QUORUM = "quorum"


class PriorityClass(enum.IntEnum):
    """Priority classes mapped onto RabbitMQ message priorities (higher runs first).

    Normal is 4, not 5: a quorum queue of RabbitMQ 4.0-4.2 knows two levels, above 4
    and the rest, so there urgent work still overtakes normal and bulk work.
    """

    BULK = 1
    NORMAL = 4
    URGENT = 9

    @classmethod
    def parse(cls, value: PriorityClass | str) -> PriorityClass:
        """Accepts a class or its name ("urgent"); anything else is a clear ValueError."""
        if isinstance(value, PriorityClass):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        names = ", ".join(p.name.lower() for p in cls)
        raise ValueError(f"Unknown priority {value!r}; use one of {names}.")


def jobs_exchange() -> Exchange:
    return Exchange(JOBS_EXCHANGE, type="direct", durable=True)


def dead_letter_exchange() -> Exchange:
    # Fanout: a dead letter keeps its original routing key, and all of them must
    # reach the one dead-letter queue whatever that key was.
    return Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True)


def queue_type() -> QueueType:
    """The type every queue of the topology is declared with (JOBS_QUEUE_TYPE)."""
    from django.conf import settings

    try:
        return QueueType(settings.JOBS_QUEUE_TYPE)
    except ValueError:
        raise ValueError(f"JOBS_QUEUE_TYPE is {settings.JOBS_QUEUE_TYPE!r}; use classic or quorum.") from None


def workload_queue_arguments(kind: QueueType | None = None) -> dict:
    kind = kind or queue_type()
    if kind is QueueType.QUORUM:
        from django.conf import settings

        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": settings.JOBS_QUORUM_DELIVERY_LIMIT,
        }
    return {
        "x-queue-type": "classic",
        "x-max-priority": MAX_PRIORITY,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        # Classic queue storage version 2 (RabbitMQ 3.10+, the default from 3.12)
        # confirms a persistent message faster, and every enqueue waits for that
        # confirm (docs/performance.md).
        "x-queue-version": QUEUE_VERSION,
    }


# Deliveries of one dead letter before a quorum dead-letter queue drops it: never, in
# practice. It has no dead-letter exchange of its own, and RabbitMQ 4's default limit
# (20) would drop a letter the keeper requeued that often (PostgreSQL away).
DEAD_LETTER_DELIVERY_LIMIT = 1_000_000


def dead_letter_queue_arguments(kind: QueueType | None = None) -> dict:
    # No x-queue-mode: RabbitMQ 3.12+ ignores it and 4.3 refuses it.
    kind = kind or queue_type()
    if kind is QueueType.QUORUM:
        return {"x-queue-type": "quorum", "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT}
    return {"x-queue-type": "classic"}


def workload_queues() -> list[Queue]:
    exchange = jobs_exchange()
    arguments = workload_queue_arguments()
    return [
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments)
        for name in WORKLOAD_QUEUES
    ]


def dead_letter_queue() -> Queue:
    return Queue(
        DEAD_LETTER_QUEUE,
        dead_letter_exchange(),
        routing_key="",
        durable=True,
        queue_arguments=dead_letter_queue_arguments(),
    )


def route_by_task_name(name, args, kwargs, options, task=None, **_):
    """Celery router: a message sent by task name alone (`send_task`, `celery call`)
    goes to that task's workload queue, as one sent from the task itself does."""
    if task is None:
        import django
        from celery import current_app
        from django.apps import apps

        if not apps.ready:  # a process that only sends (`celery call`): the tasks need Django
            django.setup()
        task = current_app.tasks.get(name)
        if task is None:  # its module not imported yet in this process
            current_app.loader.import_default_modules()
            task = current_app.tasks.get(name)
    queue = getattr(task, "queue", None)
    return {"queue": str(queue)} if queue in WORKLOAD_QUEUES else None


def configure_app(app) -> None:
    """Points a Celery app at this topology: its queues, exchange and default route."""
    app.conf.update(
        task_queues=workload_queues(),
        task_default_queue=Workload.DEFAULT.value,
        task_default_exchange=JOBS_EXCHANGE,
        task_default_exchange_type="direct",
        task_default_routing_key=Workload.DEFAULT.value,
        task_default_priority=PriorityClass.NORMAL.value,
        # Celery adds x-max-priority to every queue it declares when this is set: only
        # classic queues have it (the topology declares it itself).
        task_queue_max_priority=MAX_PRIORITY if queue_type() is QueueType.CLASSIC else None,
        task_create_missing_queues=False,
        task_routes=(route_by_task_name,),
    )


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
