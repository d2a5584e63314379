"""A job's message is Celery's own: `build_message` against Celery's builder.

Celery's side is what `send_task` would hand kombu for the same call: the message of
`app.amqp.as_task_v2`, passed through `app.amqp.send_task_message` (which adds the
delivery mode, the priority and the serializer) to a producer that only records it,
and serialized as kombu would. A Celery upgrade that adds a header, or changes one,
fails here rather than in a worker.
"""

import json
import uuid

import pytest
from kombu import serialization
from kombu.entity import maybe_delivery_mode
from kombu.message import Message as KombuMessage

from jobs.app import celery_app
from jobs.broker.message import build_message
from jobs.models import Job
from jobs.tests import tasks  # noqa: F401 - registers the tasks the jobs name
from jobs.topology import PriorityClass

# The headers Celery writes that build_message leaves out, and the value Celery writes
# for a job: empty, each one. The worker reads a missing one as that same empty value
# (test_the_worker_reads_a_jobs_message_as_it_reads_celerys below proves it).
# - shadow, group, group_index, parent_id: a job is no renamed task, no group member,
#   no subtask (a job started by another job is a new root);
# - eta, expires: a job's delay lives in the ledger and the relay publishes it when
#   due; a job does not expire;
# - timelimit: the task's own time limits apply;
# - replaced_task_nesting, stamped_headers, stamps: a job has no canvas to replace or
#   stamp.
OMITTED = {
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "parent_id": None,
    "timelimit": [None, None],
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}


def jobs_of_every_shape() -> list[Job]:
    def job(**fields) -> Job:
        values = {
            "task_name": "tests.record",
            "queue": "default",
            "args": [],
            "kwargs": {},
            "priority": int(PriorityClass.NORMAL),
        }
        return Job(id=uuid.uuid4(), **{**values, **fields})

    return [
        job(),
        job(args=["/tmp/out", "hello"], priority=int(PriorityClass.URGENT)),
        job(args=[7, 2.5, True, None], kwargs={"invoice_id": 12}, priority=int(PriorityClass.BULK)),
        job(args=["Łódź ✓ \u00e9"], kwargs={"note": "naïve", "tags": ["a", "b"]}, queue="emails"),
        job(args=[{"nested": [1, {"deep": "x"}]}], kwargs={"n": {"m": None}}, task_name="tests.fail"),
        job(args=["x" * 3000], task_name="tests.sleep"),  # longer than a repr is kept
    ]


class RecordingProducer:
    """What Celery's send_task_message hands a kombu producer, kept."""

    def __init__(self):
        self.sent: dict = {}

    def publish(self, body, **options):
        self.sent = {"body": body, **options}


def celerys_message(job: Job) -> dict:
    """The message Celery would publish for this job: headers, properties, body bytes."""
    app = celery_app()
    message = app.amqp.as_task_v2(
        # args as a tuple, as `task.delay(*args)` passes them.
        str(job.id),
        job.task_name,
        tuple(job.args),
        dict(job.kwargs),
        ignore_result=True,
    )
    producer = RecordingProducer()
    app.amqp.send_task_message(
        producer, job.task_name, message, queue=job.queue, priority=job.priority, retry=False
    )
    sent = producer.sent
    content_type, content_encoding, body = serialization.dumps(
        sent.pop("body"), serializer=sent["serializer"]
    )
    return {
        "headers": sent["headers"],
        "properties": {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "delivery_mode": maybe_delivery_mode(sent["delivery_mode"]),
            "priority": sent["priority"],
            "correlation_id": sent["correlation_id"],
            "reply_to": sent["reply_to"],
        },
        "body": body.encode() if isinstance(body, str) else body,
    }


def ours(job: Job) -> dict:
    message = build_message(job)
    properties = dict(message.properties)
    return {"headers": properties.pop("application_headers"), "properties": properties, "body": message.body}


@pytest.mark.parametrize("job", jobs_of_every_shape(), ids=lambda job: f"{job.task_name}:{job.args!r:.30}")
def test_a_jobs_message_is_celerys_message_for_the_same_task_call(job):
    mine, celerys = ours(job), celerys_message(job)

    assert mine["properties"] == celerys["properties"]
    assert json.loads(mine["body"]) == json.loads(celerys["body"])
    assert mine["body"] == celerys["body"], "byte for byte, as Celery's serializer writes it"
    theirs = dict(celerys["headers"])
    for name, value in mine["headers"].items():
        celerys_value = theirs.pop(name)
        if name in ("argsrepr", "kwargsrepr") and "..." in celerys_value:
            # Display only (logs, events, Flower). Celery's saferepr abbreviates what
            # is nested deeper than task_repr_maxlevels, or longer than 1024
            # characters, with "..."; build_message's plain repr is cut at 1024.
            assert value == repr(tuple(job.args) if name == "argsrepr" else job.kwargs)[:1024]
            continue
        assert celerys_value == value, name
    assert theirs == OMITTED, "a header Celery writes that build_message leaves out must be listed in OMITTED"


def request_for(message: dict, job: Job):
    """The request Celery's worker makes of a delivery (celery.worker.request.Request)."""
    from celery.worker.request import Request

    app = celery_app()
    delivery = KombuMessage(
        body=message["body"],
        content_type=message["properties"]["content_type"],
        content_encoding=message["properties"]["content_encoding"],
        headers=message["headers"],
        properties={
            k: v for k, v in message["properties"].items() if k not in ("content_type", "content_encoding")
        },
        delivery_info={"exchange": "jobs", "routing_key": job.queue, "priority": job.priority},
        delivery_tag=1,
    )
    return Request(delivery, app=app, task=app.tasks[job.task_name], hostname="celery@test")


def empty_as_none(value):
    """An empty list or table, or a list of Nones (timelimit's [None, None]), reads
    as no value wherever Celery reads it."""
    if isinstance(value, (list, tuple)) and all(item is None for item in value):
        return None
    return value or None


@pytest.mark.parametrize("job", jobs_of_every_shape(), ids=lambda job: f"{job.task_name}:{job.args!r:.30}")
def test_the_worker_reads_a_jobs_message_as_it_reads_celerys(job):
    """Every header build_message leaves out comes to the same value in the worker's
    request, and in the task's `self.request`, as Celery's empty one. (argsrepr and
    kwargsrepr, display only, are compared above.)"""
    from celery.app.task import Context

    mine, celerys = request_for(ours(job), job), request_for(celerys_message(job), job)

    def seen(request):
        context = Context(request.request_dict, args=request.args, kwargs=request.kwargs)
        return {
            "name": request.name,
            "id": request.id,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "group": request.group,
            "group_index": request.group_index,
            "eta": request.eta,
            "expires": request.expires,
            "time_limits": tuple(request.time_limits),
            "ignore_result": request.ignore_result,
            "stamped_headers": request.stamped_headers,
            "stamps": request.stamps,
            "replaced_task_nesting": request.replaced_task_nesting,
            "args": request.args,
            "kwargs": request.kwargs,
            "correlation_id": request.correlation_id,
            "reply_to": request.reply_to,
            # The task's own view.
            **{
                f"task.request.{name}": empty_as_none(getattr(context, name))
                for name in (
                    "shadow",
                    "retries",
                    "eta",
                    "expires",
                    "group",
                    "parent_id",
                    "root_id",
                    "timelimit",
                    "callbacks",
                    "errbacks",
                    "chain",
                    "chord",
                    "stamps",
                    "stamped_headers",
                    "origin",
                )
            },  # fmt: skip
        }

    assert seen(mine) == seen(celerys)
