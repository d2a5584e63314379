"""bench/drain.py's tuned bare Celery: its own app, no Django, Celery's settings for
at-least-once delivery and nothing else (acks late, requeue when a pool process dies,
publisher confirms, prefetch 1, JSON, persistent messages, no result backend), task
events off (Celery's default) and, on the command line, WARNING logs.

    celery -A bench.drain_celery worker -l WARNING -c 2
"""

import os

from celery import Celery, signals
from kombu import Queue

from bench import counter

QUEUE = "bench_drain_celery"

app = Celery(
    "bench_drain",
    broker=os.environ.get("BENCH_DRAIN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    set_as_current=False,
)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_delivery_mode="persistent",
    task_ignore_result=True,
    result_backend=None,
    worker_send_task_events=False,
    task_send_sent_event=False,
    task_queues=[Queue(QUEUE, durable=True)],
    task_default_queue=QUEUE,
)


@app.task(name="bench.drain.celery_noop")
def noop() -> None:
    counter.bump()


@signals.worker_ready.connect(dispatch_uid="bench.drain_celery.ready")
def _ready(**_) -> None:
    counter.ready()
