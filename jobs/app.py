"""The Celery app the platform runs on, found in one place.

`JOBS_CELERY_APP` names it ("package.module:app"); unset, it is Celery's current
app, the one a Django project's `celery.py` creates and its package imports. The
platform never imports the project itself, so `jobs` can live in any project.
"""

from __future__ import annotations

import functools

from celery import Celery, current_app
from celery.utils.imports import symbol_by_name
from django.conf import settings


@functools.cache
def celery_app() -> Celery:
    """The project's Celery app (see the module docstring)."""
    name = getattr(settings, "JOBS_CELERY_APP", None)
    if name:
        return symbol_by_name(name)
    return current_app._get_current_object()


# What the platform needs of its Celery app: `configure` sets these over the project's
# own CELERY_* settings. docs/architecture.md#rabbitmq-topology says why each holds.
PLATFORM_CELERY_SETTINGS = {
    # The ledger (jobs.models.Job) is the result store; no Celery result backend.
    "result_backend": None,
    "task_ignore_result": True,
    # JSON only: a pickle message is rejected (and dead-lettered) without being decoded.
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_default_delivery_mode": "persistent",
    # At-least-once: ack after the job, requeue when the worker dies, reject (and so
    # dead-letter) on failure, one message per process at a time.
    "task_acks_late": True,
    "task_acks_on_failure_or_timeout": False,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    # No "task-sent" event: it would be a second confirmed publish for every enqueue.
    # Flower still sees every job from the worker's received/started/succeeded events.
    "task_send_sent_event": False,
    # Dead-letters messages it cannot run instead of acking them or stopping (jobs/consumer.py).
    "worker_consumer": "jobs.consumer:DeadLetteringConsumer",
}
# Publisher confirms (a publish returns once RabbitMQ has taken the message), and a
# publisher that cannot connect gives up at once (the job waits for the relay); the
# project's other transport options stay.
_TRANSPORT_OPTIONS = {"confirm_publish": True, "max_retries": 0}


def configure(app: Celery) -> None:
    """Makes `app` (a project's Celery app, made with `task_cls="jobs.base:JobTask"`)
    run the platform: its settings (PLATFORM_CELERY_SETTINGS, over the project's), its
    queues, exchange and routes (jobs.topology). Call it after `config_from_object`."""
    from django.core.exceptions import ImproperlyConfigured

    from jobs import topology

    if app.task_cls in ("celery.app.task:Task", "celery.app.task.Task"):
        raise ImproperlyConfigured(
            'The Celery app runs jobs on the platform\'s base class: make it with Celery("...", '
            'task_cls="jobs.base:JobTask").'
        )
    app.conf.update(PLATFORM_CELERY_SETTINGS)
    topology.configure_app(app)

    def transport_options(sender, **kwargs):
        # Once the project's settings are read: merged into its own options.
        sender.conf.broker_transport_options = {
            **(sender.conf.broker_transport_options or {}),
            **_TRANSPORT_OPTIONS,
        }

    app.on_after_configure.connect(transport_options, sender=app, weak=False)
