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
migrates it, messages included (also from classic to quorum); the broker's side of
that (declare, verify, migrate) is `jobs.broker.queues`.
"""

from __future__ import annotations

import enum

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
    from jobs import conf  # read before Django is set up: with its defaults

    name = conf.get("JOBS_QUEUE_TYPE")
    try:
        return QueueType(name)
    except ValueError:
        raise ValueError(f"JOBS_QUEUE_TYPE is {name!r}; use classic or quorum.") from None


def workload_queue_arguments(kind: QueueType | None = None) -> dict:
    kind = kind or queue_type()
    if kind is QueueType.QUORUM:
        from jobs import conf  # read before Django is set up: with its defaults

        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": conf.get("JOBS_QUORUM_DELIVERY_LIMIT"),
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
