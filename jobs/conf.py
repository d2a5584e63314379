"""The platform's settings and their defaults, in one place.

A project sets any of them in its settings module (`JOBS_CANCEL_GRACE_SECONDS = 30`);
the others hold these defaults, put on `django.conf.settings` when the app is ready
(`apply_defaults`). Code that runs before Django is set up (jobs.topology, which a
project's Celery app reads while the project package is imported) reads them with
`get`. docs/configuration.md says what each one does.

Not django-appconf: it puts the defaults on the settings when its class is imported,
which in a project whose package imports its Celery app happens while Django is
still loading the settings module, onto a settings object that is then replaced.
"""

from __future__ import annotations

import copy

from django.conf import settings

DEFAULTS: dict[str, object] = {
    # The Celery app the platform uses ("package.module:app", jobs.app); None: Celery's current app.
    "JOBS_CELERY_APP": None,
    # The worker's task events go out without publisher confirms (jobs/consumer.py): they
    # feed Flower, and the ledger is the durable record. True confirms each (a round trip).
    "JOBS_CONFIRM_TASK_EVENTS": False,
    # Throughput queues (jobs/throughput.py), e.g. {"cache": 16}: their jobs run in batches
    # of that many a pool process, the ledger written once a batch.
    "JOBS_THROUGHPUT_QUEUES": {},
    # The longest a throughput queue's message waits in the worker for its batch to fill.
    "JOBS_THROUGHPUT_FLUSH_SECONDS": 0.005,
    # A job whose worker died during this many of its runs is dead-lettered as poison.
    "JOBS_MAX_LOST_RUNS": 3,
    # "classic" (one node) or "quorum" (a cluster): see jobs/topology.py.
    "JOBS_QUEUE_TYPE": "classic",
    # Quorum queues only: RabbitMQ dead-letters a message delivered this often.
    "JOBS_QUORUM_DELIVERY_LIMIT": 20,
    # A worker that finds PostgreSQL away waits up to this long for it before it requeues.
    "JOBS_LEDGER_WAIT_SECONDS": 60.0,
    # Seconds before a copy that found the job's lease taken looks again.
    "JOBS_LEASE_BUSY_RETRY_SECONDS": 5.0,
    # A running job asked to cancel that has not stopped after this long is stopped.
    "JOBS_CANCEL_GRACE_SECONDS": 10.0,
    # A body's cancel checks read the ledger at most this often.
    "JOBS_CANCEL_CHECK_SECONDS": 0.5,
    # The admin's actions on every job a filter matches change this many jobs a transaction.
    "JOBS_BULK_ACTION_BATCH": 1000,
    # A body's progress reports are written to the ledger at most this often.
    "JOBS_PROGRESS_SECONDS": 1.0,
    # A link to a job's trace, {trace_id} replaced (the admin's job page); "": the id alone.
    "JOBS_TRACE_URL": "",
    # Seconds a publish may wait for RabbitMQ's confirm; past it the job stays pending.
    "JOBS_PUBLISH_TIMEOUT_SECONDS": 5.0,
    # Rate limits per workload queue across all workers, e.g. {"emails": "20/s"}.
    "JOBS_QUEUE_RATE_LIMITS": {},
    # Largest JSON payload (args + kwargs) that enqueue accepts.
    "JOBS_MAX_PAYLOAD_BYTES": 256 * 1024,
    # The relay leaves rows this young to the publish-on-commit path.
    "JOBS_RELAY_GRACE_SECONDS": 5.0,
    # Longest wait between relay passes (it wakes sooner for a job due sooner).
    "JOBS_RELAY_INTERVAL_SECONDS": 2.0,
    # The rescue (jobs/rescue.py): a job queued, started or due this long ago, in a queue
    # with no ready message, has lost its message and is sent again.
    "JOBS_RESCUE_AFTER_SECONDS": 900.0,
    # Seconds between the relay's rescue passes; 0 turns them off.
    "JOBS_RESCUE_INTERVAL_SECONDS": 60.0,
    # The Redis of global rate limits (jobs/ratelimit.py); None: the REDIS_URL setting,
    # else Redis on localhost.
    "JOBS_REDIS_URL": None,
    # Bearer token for /metrics (jobs.metrics); None: the METRICS_TOKEN setting, else
    # only staff sessions may read it.
    "JOBS_METRICS_TOKEN": None,
}


def get(name: str):
    """The setting `name` (one of DEFAULTS): the project's, else its default."""
    return getattr(settings, name, DEFAULTS[name])


def apply_defaults() -> None:
    """Gives every platform setting the project leaves unset its default."""
    for name, value in DEFAULTS.items():
        if not hasattr(settings, name):
            setattr(settings, name, copy.deepcopy(value))
