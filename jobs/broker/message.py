"""A job's message: Celery's protocol 2, JSON, as a plain `send_task` of its row.

`jobs/tests/test_broker_message.py` compares it with Celery's own builder
(`app.amqp.as_task_v2`), header by header.
"""

from __future__ import annotations

import functools
import json

import amqp
from celery.utils.nodenames import anon_nodename

from jobs.models import Job

# The body's third part: a job has no canvas (no callbacks, chain or chord).
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# Celery cuts argsrepr and kwargsrepr to this many characters (its argsrepr_maxsize).
_REPR_MAX = 1024


@functools.cache
def _origin() -> str:
    return anon_nodename()


def build_message(job: Job, traceparent: str | None = None) -> amqp.Message:
    """The message of a ledger row, ready for the jobs exchange: persistent, with the
    job's priority, its id as Celery's task id and correlation id, and the trace
    context its run continues (`traceparent`: the publish span's, else the row's).

    Only the headers whose value says something are written. The others that
    `as_task_v2` writes (shadow, eta, expires, group, group_index, parent_id,
    timelimit, replaced_task_nesting, stamped_headers, stamps) would all be empty,
    and Celery's worker reads each of them with that same empty default: a row's
    delay is kept in the ledger (the relay publishes it when due), not in an eta;
    time limits are the task's own unless the job has its own (`timelimit`); a deadline
    is the ledger's (`expires_at`, checked when the job would start), never Celery's
    `expires`, which would discard the message with the ledger none the wiser. Each header costs a publish its bytes and its
    serialization.
    """
    task_id = str(job.id)
    args, kwargs = list(job.args), dict(job.kwargs)
    headers = {
        "lang": "py",
        "task": job.task_name,
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "argsrepr": repr(tuple(args))[:_REPR_MAX],
        "kwargsrepr": repr(kwargs)[:_REPR_MAX],
        "origin": _origin(),
        # The ledger keeps the outcome; no result backend is written.
        "ignore_result": True,
    }
    if job.soft_time_limit is not None or job.time_limit is not None:
        # This job's own limits, as Celery reads them: [hard, soft], None for the task's.
        # Its own hard limit caps its soft one (Celery's pool arms the hard limit only
        # once the soft one has passed): the body is interrupted then, and killed if it
        # has not ended.
        soft = job.soft_time_limit
        if job.time_limit is not None and (soft is None or soft > job.time_limit):
            soft = job.time_limit
        headers["timelimit"] = [job.time_limit, soft]
    traceparent = job.traceparent if traceparent is None else traceparent
    if traceparent:
        headers["traceparent"] = traceparent  # W3C trace context, as OpenTelemetry propagates it
    body = json.dumps([args, kwargs, _EMBED]).encode()
    return amqp.Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=headers,
        delivery_mode=2,
        priority=job.priority,
        correlation_id=task_id,
        reply_to="",
    )
