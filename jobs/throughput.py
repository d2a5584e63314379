"""Throughput queues: short jobs run in batches, with the ledger written once a batch.

An opt-in per workload queue (`JOBS_THROUGHPUT_QUEUES`, e.g. `cache=16`) for short
jobs, such as cache invalidations. A worker that consumes only throughput queues takes
up to N messages per pool process from RabbitMQ (its prefetch is N times its
processes: jobs.consumer), and its main process hands them to a pool process N at a
time (or those that came within JOBS_THROUGHPUT_FLUSH_SECONDS), instead of one by one.
The pool process (`run_batch`):

1. takes every job's lease and starts every waiting job in one statement
   (jobs.ledger.Leases);
2. runs the bodies one after another, each as JobTask runs one: a failure is retried
   or ends dead on its own at once, as anywhere;
3. records every success in one synchronous commit, and then gives their leases back;
4. returns each message's verdict (ack, reject into the dead-letter queue, requeue),
   which the main process carries out only then: nothing is acknowledged before its
   job's outcome is durable.

A job of the batch that is not simply waiting (its lease busy, finished already, a
retry's early copy, a run that died with its worker) or a second copy of a job in the
same batch runs through the one-job path (JobTask.__call__), which decides it. Every
promise holds as for a job run alone: one live run per job (the lease), no finished
job run again (the start only moves waiting rows), nothing acknowledged before its
outcome is committed. A pool process that dies mid-batch has every message of its
batch requeued; the lease rules sort the copies out.

What it costs: an urgent job in the same queue may wait behind up to N-1 short jobs
of its pool process's batch, and the task's soft time limit covers a whole batch (the
longest limit among its tasks). Celery's task signals (task_prerun, task_postrun) are
not sent for a batch's jobs; Flower still sees every job, from events the main process
sends.
"""

from __future__ import annotations

import logging
import time

from celery.exceptions import Ignore, Reject, Retry
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections

from jobs import ledger
from jobs.app import celery_app

logger = logging.getLogger("jobs")

ACK, REJECT, REQUEUE = "ack", "reject", "requeue"


def batch_size(queue: str) -> int:
    """How many jobs of `queue` a batch holds; 0 if it is not a throughput queue."""
    return int(settings.JOBS_THROUGHPUT_QUEUES.get(str(queue), 0) or 0)


# -- the worker's main process ---------------------------------------------------------


class Batcher:
    """The main process's buffer of one throughput queue's messages."""

    def __init__(self, consumer, queue: str, size: int):
        self.consumer, self.queue, self.size = consumer, queue, size
        self.buffer: list[tuple] = []
        self.timer = None

    def add(self, item: dict, ack, reject) -> None:
        self.buffer.append((item, ack, reject))
        self._event(
            "task-received", item, name=item["task"], args=repr(item["args"]), kwargs=repr(item["kwargs"])
        )
        if len(self.buffer) >= self.size:
            self.flush()
        elif self.timer is None:
            self.timer = self.consumer.timer.call_after(settings.JOBS_THROUGHPUT_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.buffer = self.buffer, []
        if not batch:
            return
        items = [item for item, _, _ in batch]
        started = time.monotonic()
        app = self.consumer.app

        def accepted(pid, time_accepted):
            for item in items:
                self._event("task-started", item, pid=pid)

        def settled(verdicts):
            runtime = time.monotonic() - started
            for (item, ack, reject), verdict in zip(batch, verdicts, strict=True):
                self._carry_out(verdict, ack, reject)
                kind = "task-succeeded" if verdict == ACK else "task-failed"
                self._event(kind, item, runtime=runtime)

        def lost(exc_info):
            # The pool process died (or the batch could not be sent): every message
            # goes back to RabbitMQ; a job whose outcome was written is skipped then.
            logger.error(
                "a batch of %d %s jobs was lost with its pool process; requeued", len(batch), self.queue
            )
            for _item, ack, reject in batch:
                self._carry_out(REQUEUE, ack, reject)

        soft = max(
            (getattr(app.tasks.get(item["task"]), "soft_time_limit", None) or 0 for item in items), default=0
        )
        self.consumer.pool.apply_async(
            run_batch,
            args=(items,),
            callback=settled,
            error_callback=lost,
            accept_callback=accepted,
            soft_timeout=soft or app.conf.task_soft_time_limit,
            timeout=app.conf.task_time_limit,
        )

    def _carry_out(self, verdict: str, ack, reject) -> None:
        errors = self.consumer.connection_errors
        if verdict == ACK:
            ack(logger, errors)
        else:
            reject(logger, errors, verdict == REQUEUE)

    def _event(self, kind: str, item: dict, **fields) -> None:
        dispatcher = self.consumer.event_dispatcher
        if dispatcher is not None and dispatcher.enabled:
            dispatcher.send(kind, uuid=item["id"], **fields)


def strategy(task, app, consumer):
    """The consumer's handler of `task`'s messages on a throughput queue (Celery calls
    a task's strategy for each of its messages), or None if its queue is not one."""
    size = batch_size(task.queue)
    if not size:
        return None
    batchers = consumer.__dict__.setdefault("_jobs_batchers", {})
    queue = str(task.queue)
    batcher = batchers.get(queue) or batchers.setdefault(queue, Batcher(consumer, queue, size))
    hostname = consumer.hostname

    def on_message(message, body, ack, reject, callbacks, **kwargs):
        args, task_kwargs, _embed = body if body is not None else message.decode()
        headers = message.headers or {}
        item = {
            "id": headers["id"],
            "task": task.name,
            "args": list(args),
            "kwargs": dict(task_kwargs),
            "hostname": hostname,
            "delivery_info": dict(message.delivery_info or {}),
            "traceparent": headers.get("traceparent", ""),
        }
        batcher.add(item, ack, reject)

    return on_message


# -- a pool process ---------------------------------------------------------------------


def run_batch(items: list[dict]) -> list[str]:
    """Runs a batch of jobs in a pool process; returns each message's verdict."""
    app = celery_app()
    verdicts: list[str | None] = [None] * len(items)
    first, again = {}, []  # a job's first copy in the batch, and any later copy
    for index, item in enumerate(items):
        if item["id"] in first:
            again.append(index)
        else:
            first[item["id"]] = index
    try:
        _run_batch(app, items, first, verdicts)
        for index in again:
            verdicts[index] = _run_alone(app.tasks[items[index]["task"]], items[index])
    finally:
        close_old_connections()  # as Celery's Django fixup does after each task
    return verdicts


def _run_batch(app, items: list[dict], first: dict, verdicts: list) -> None:
    ready = []
    for job_id, index in first.items():
        task = app.tasks[items[index]["task"]]
        try:
            task._respect_rate_limits(job_id)
        except Ignore:
            verdicts[index] = ACK  # it waits in the ledger for its turn
            continue
        ready.append(job_id)
    leases = ledger.Leases(ready)
    try:
        started = leases.take_and_start(items[0]["hostname"])
    except (DatabaseError, InterfaceError) as exc:
        logger.warning("a batch of %d jobs: ledger unavailable (%s); requeueing", len(ready), exc)
        from jobs.base import _wait_for_the_ledger

        _wait_for_the_ledger(settings.JOBS_LEDGER_WAIT_SECONDS)
        for job_id in ready:
            verdicts[first[job_id]] = REQUEUE
        return
    successes = []
    try:
        for job_id in ready:
            index = first[job_id]
            item, job = items[index], started.get(job_id)
            task = app.tasks[item["task"]]
            if job is None:
                verdicts[index] = _run_alone(task, item)
                continue
            run = ledger.Run(job, leases[job_id], item["hostname"])
            verdicts[index] = _verdict(task, item, task._run, run, item["args"], item["kwargs"], successes)
        try:
            ledger.end_runs_succeeded(leases, successes)
        except (DatabaseError, InterfaceError) as exc:
            logger.error("a batch's successes could not be recorded (%s); their messages are requeued", exc)
            for run, _ in successes:
                verdicts[first[str(run.job.id)]] = REQUEUE
    finally:
        leases.release()


def _run_alone(task, item: dict) -> str:
    """A job the batch does not start itself, through the one-job path."""
    return _verdict(task, item, task, *item["args"], **item["kwargs"])


def _verdict(task, item: dict, call, *args, **kwargs) -> str:
    """Runs `call(*args, **kwargs)` under `item`'s request, and says what becomes of its message."""
    task.push_request(
        id=item["id"], hostname=item["hostname"], delivery_info=item["delivery_info"], args=item["args"],
        kwargs=item["kwargs"], retries=0, is_eager=False, called_directly=False,
        traceparent=item.get("traceparent", ""),
    )  # fmt: skip
    try:
        call(*args, **kwargs)
    except (Ignore, Retry):
        return ACK  # skipped, or its retry waits in the ledger
    except Reject as exc:
        return REQUEUE if exc.requeue else REJECT
    except Exception:  # noqa: BLE001 - recorded dead by the run: its message is dead-lettered
        return REJECT
    finally:
        task.pop_request()
    return ACK
