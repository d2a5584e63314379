"""Events fan-out: publish once, every subscriber runs as its own job.

    @jobs.subscribe("invoice.issued")
    @app.task(name="emails.on_invoice_issued", queue=Workload.EMAILS)
    def email_issued_invoice(event_id: int, payload: dict) -> None: ...

    jobs.publish("invoice.issued", {"invoice_id": 42})   # inside the caller's transaction

Each subscriber job has its own retries and dead letter, so one failing subscriber
never holds back the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.db import transaction

from jobs import ledger
from jobs.app import celery_app
from jobs.models import Event

_subscribers: dict[str, list[str]] = {}


def subscribe(event_name: str) -> Callable:
    """Registers the decorated task as a subscriber of `event_name`.

    The task is called with (event_id, payload). Subscribers register when their
    app's tasks module is imported (the worker and jobs.publish import them all).
    """

    def register(task):
        names = _subscribers.setdefault(event_name, [])
        if task.name not in names:
            names.append(task.name)
        return task

    return register


def subscribers(event_name: str) -> list[str]:
    app = celery_app()
    app.loader.import_default_modules()
    return list(_subscribers.get(event_name, []))


def publish(event_name: str, payload: dict | None = None) -> Event:
    """Records the event and enqueues one job per subscriber, in the caller's transaction.

    A rolled-back transaction publishes nothing; after commit every subscriber job is
    published like any job (and kept pending for the relay if the broker is down).
    """
    from jobs.services import EnqueueError, enqueue

    payload = payload or {}
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EnqueueError(f"The payload of event {event_name!r} must be JSON: {exc}.") from None
    with transaction.atomic():
        event = Event.objects.create(name=event_name, payload=payload)
        for task_name in subscribers(event_name):
            job = enqueue(task_name, event.id, payload, key=f"event:{event.id}:{task_name}")
            ledger.link_to_event([job.id], event)
    return event
