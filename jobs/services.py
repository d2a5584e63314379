"""Writes of the platform: enqueue a job, retry a dead one, cancel a waiting or running one."""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import re
import uuid
from collections.abc import Iterable

from celery import Task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs import ledger, tracing
from jobs import tags as job_tags
from jobs.app import celery_app
from jobs.broker.publisher import publish_jobs
from jobs.errors import CancelRefused
from jobs.models import ACTIVE_STATES, FINISHED_STATES, Job, JobState
from jobs.storable import find_unstorable, unstorable_text
from jobs.topology import WORKLOAD_QUEUES, PriorityClass

logger = logging.getLogger("jobs")


class EnqueueError(ValueError):
    """A job that cannot be enqueued; the message says why and what to do."""


def resolve_task(task: Task | str) -> Task:
    """Returns the registered task for a task object or its name."""
    app = celery_app()
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not name:
        raise EnqueueError(f"{task!r} is not a job: pass a task or a registered task name.")
    if name not in app.tasks:
        # Tasks modules are imported lazily in a web process; import them once.
        app.loader.import_default_modules()
    try:
        return app.tasks[name]
    except KeyError:
        raise EnqueueError(
            f"No job is registered as {name!r}; check the name or its app's tasks.py."
        ) from None


# json.dumps makes a new encoder for each call with any option set.
_strict_json = json.JSONEncoder(allow_nan=False).encode

# PostgreSQL's text and jsonb hold neither NUL nor half of a UTF-16 surrogate pair: the
# INSERT would fail with a DataError and abort the caller's transaction. In ASCII JSON
# such characters show only as the escapes \u0000 and \ud800-\udfff, so one search of
# the JSON clears almost every payload; a hit (also a valid pair, an emoji, or a literal
# backslash before "u0000") is looked at closely by jobs.storable.find_unstorable.
_MAYBE_UNSTORABLE = re.compile(r"\\u(?:0000|d[89a-f])")


def _refuse_unstorable(task: Task, what: str, reason: str) -> None:
    raise EnqueueError(
        f"{what} of job {task.name!r} holds {reason}, which the job ledger (PostgreSQL) "
        "cannot store; remove it or pass an id instead."
    )


_KEY_MAX_LENGTH = min(Job._meta.get_field("key").max_length, Job._meta.get_field("unique_key").max_length)


def _check_key(task: Task, value, what: str) -> None:
    if not isinstance(value, str):
        return  # None: no key
    reason = unstorable_text(value)
    if reason:
        _refuse_unstorable(task, f"The {what} {value!r}", reason)
    if len(value) > _KEY_MAX_LENGTH:  # the column's limit: a longer one fails the INSERT
        raise EnqueueError(
            f"The {what} of job {task.name!r} is {len(value):,} characters long; the limit is "
            f"{_KEY_MAX_LENGTH}. Use a shorter key (a hash of the long one, say)."
        )


def _check_payload(
    task: Task, args: tuple, kwargs: dict, signature: inspect.Signature | None = None, bind: bool = True
) -> tuple[str, str]:
    """Raises EnqueueError unless the arguments fit the task, are JSON within the size
    limit and hold only text PostgreSQL can store (no NUL, no lone surrogate, in any
    string or dict key at any depth); returns the JSON of `args` and of `kwargs`
    (ASCII: JSON's escapes)."""
    if bind:
        try:
            (signature or inspect.signature(task.run)).bind(*args, **kwargs)
        except TypeError as exc:
            raise EnqueueError(f"Arguments do not fit job {task.name!r}: {exc}.") from None
    try:
        args_json, kwargs_json = _strict_json(args), _strict_json(kwargs)
    except (TypeError, ValueError) as exc:
        raise EnqueueError(
            f"Arguments of {task.name!r} must be JSON (ids, strings, numbers, lists, dicts): {exc}."
        ) from None
    except RecursionError:
        raise EnqueueError(
            f"Arguments of {task.name!r} nest lists or dicts too deep to encode; pass ids instead."
        ) from None
    if "\\u" in args_json and _MAYBE_UNSTORABLE.search(args_json):
        found = find_unstorable(list(args), "args")
        if found:
            _refuse_unstorable(task, *found)
    if "\\u" in kwargs_json and _MAYBE_UNSTORABLE.search(kwargs_json):
        for name, value in kwargs.items():
            reason = unstorable_text(name)
            if reason:
                _refuse_unstorable(task, f"The keyword {name!r}", reason)
            found = find_unstorable(value, name)
            if found:
                _refuse_unstorable(task, *found)
    size = len(args_json) + len(kwargs_json) + 4  # as the list [args, kwargs]
    limit = settings.JOBS_MAX_PAYLOAD_BYTES
    if size > limit:
        raise EnqueueError(
            f"Arguments of {task.name!r} are {size:,} bytes; the limit is {limit:,}. "
            "Pass ids and let the job load the data."
        )
    return args_json, kwargs_json


def enqueue(
    task: Task | str,
    *args,
    priority: PriorityClass | str | None = None,
    key: str | None = None,
    unique_key: str | None = None,
    unique_states: tuple[str, ...] = ACTIVE_STATES,
    run_after: datetime.datetime | None = None,
    expires: datetime.datetime | float | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    tags: list[str] | None = None,
    **kwargs,
) -> Job:
    """Records a job in the caller's transaction and publishes it after commit.

    Promises:
    - A rolled-back transaction publishes nothing; outside a transaction the job is
      published at once.
    - It never fails or waits because of the broker or a worker: if publishing
      fails, the job stays `pending` and the relay publishes it later.
    - With `key` (an idempotency key, forever), enqueuing the same key again (even
      concurrently) returns the job that key already names, and publishes nothing new.
    - With `unique_key`, enqueuing while a job with that key is in `unique_states`
      (by default: pending, queued, started or retrying) returns that job; once it
      has finished, the key is free again. Concurrent callers are serialized on a
      transaction-scoped advisory lock, so two of them never both insert.
    - `run_after` defers the job: the relay publishes it once that time has come.
    - `expires` (a datetime, or seconds from now) is its deadline to start: a job not
      started by then never runs, and ends `cancelled` as expired (JobExpired).
    - `tags` (up to 10 short labels such as "customer:7") let operators find the job
      and act on all that match in the admin.
    - `soft_time_limit` and `time_limit` (seconds) replace the task's own limits for
      this job: past the soft one its body gets SoftTimeLimitExceeded and the job ends
      `dead`; past the hard one its process is killed and the job ends `dead`.
    - Bad input (unknown task, arguments that do not fit or are not JSON, too
      large, text PostgreSQL cannot store: NUL or a lone surrogate in any string,
      dict key, `key` or `unique_key`) raises EnqueueError before anything is
      written, so the caller's transaction stays usable.
    """
    return enqueue_call(
        task, args, kwargs, priority=priority, key=key, unique_key=unique_key, unique_states=unique_states,
        run_after=run_after, expires=expires, soft_time_limit=soft_time_limit, time_limit=time_limit, tags=tags,
    )  # fmt: skip


def enqueue_call(
    task: Task | str,
    args: tuple,
    kwargs: dict,
    *,
    priority: PriorityClass | str | None = None,
    key: str | None = None,
    unique_key: str | None = None,
    unique_states: tuple[str, ...] = ACTIVE_STATES,
    run_after: datetime.datetime | None = None,
    expires: datetime.datetime | float | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    tags: list[str] | None = None,
    queue: str | None = None,
    signature: inspect.Signature | None = None,
) -> Job:
    """`enqueue`, with the task's arguments apart from the options, so that a task's own
    keyword argument may be called `priority` or `key` (Django's task backend uses it).
    `queue` sends this job to another workload queue than the task's; `signature` is
    what the arguments must fit, if not the task's `run`."""
    task = resolve_task(task)
    _check_payload(task, args, kwargs, signature)
    _check_key(task, key, "idempotency key")
    _check_key(task, unique_key, "unique_key")
    queue = _checked_queue(task, queue)
    priority_class = _priority_class(task, priority)
    options = _run_options(task, expires, soft_time_limit, time_limit, run_after, tags)
    if key is not None:
        existing = Job.objects.filter(key=key).first()
        if existing is not None:
            return existing
    if unique_key is None:
        return _record_and_publish(
            task, args, kwargs, queue, priority_class, key, unique_key, run_after, options
        )
    with transaction.atomic():
        with transaction.get_connection().cursor() as cursor:
            # Held until the caller's transaction ends: the next caller with this
            # key waits, then sees this job (or, after a rollback, none).
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", [f"unique:{unique_key}"])
        existing = Job.objects.filter(unique_key=unique_key, state__in=unique_states).first()
        if existing is not None:
            return existing
        return _record_and_publish(
            task, args, kwargs, queue, priority_class, key, unique_key, run_after, options
        )


def _checked_queue(task: Task, queue: str | None = None) -> str:
    """The workload queue a job of `task` goes to (`queue`, else the task's); refuses one
    outside the topology."""
    queue = str(task.queue if queue is None else queue)
    if queue not in WORKLOAD_QUEUES:
        raise EnqueueError(f"Job {task.name!r} names queue {queue!r}, which is not in the topology.")
    return queue


def _priority_class(task: Task, priority: PriorityClass | str | None) -> PriorityClass:
    """The priority class a job of `task` gets."""
    try:
        return PriorityClass.parse(priority) if priority is not None else task.priority_class
    except ValueError as exc:
        raise EnqueueError(str(exc)) from None


def after_commit(func, *args, **kwargs) -> None:
    """Calls func(*args, **kwargs) once the current transaction commits (at once outside one);
    an exception it raises is logged, never raised into the caller, whose transaction
    has committed by then.

    A closure, not a functools.partial: Django logs a failing robust callback by its
    `__qualname__`, which a partial lacks, and that AttributeError would escape.
    """

    def call():
        func(*args, **kwargs)

    call.__qualname__ = f"after_commit({func.__qualname__})"
    transaction.on_commit(call, robust=True)


def _run_options(task, expires, soft_time_limit, time_limit, run_after=None, tags=None) -> dict:
    """A job's own deadline, time limits and tags, checked: the ledger columns they fill."""

    def seconds(name: str, value) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**9:
            raise EnqueueError(
                f"Job {task.name!r}: {name} must be a number of seconds above 0, not {value!r}."
            )
        return float(value)

    soft, hard = seconds("soft_time_limit", soft_time_limit), seconds("time_limit", time_limit)
    if soft is not None and hard is not None and soft >= hard:
        raise EnqueueError(
            f"Job {task.name!r}: soft_time_limit ({soft:g}s) must be below time_limit ({hard:g}s)."
        )
    if isinstance(expires, datetime.datetime):
        if timezone.is_naive(expires):
            raise EnqueueError(f"Job {task.name!r}: expires must be an aware datetime (with a time zone).")
        expires_at = expires
    elif expires is None:
        expires_at = None
    else:
        expires_at = timezone.now() + datetime.timedelta(seconds=seconds("expires", expires))
    if expires_at is not None and run_after is not None and run_after >= expires_at:
        raise EnqueueError(
            f"Job {task.name!r}: run_after ({run_after.isoformat()}) is not before expires "
            f"({expires_at.isoformat()}); the job could never start."
        )
    try:
        tags = job_tags.checked(tags)
    except ValueError as exc:
        raise EnqueueError(f"Job {task.name!r}: {exc}.") from None
    return {"soft_time_limit": soft, "time_limit": hard, "expires_at": expires_at, "tags": tags}


def _record_and_publish(
    task, args, kwargs, queue, priority_class, key, unique_key, run_after, options
) -> Job:
    job_id = uuid.uuid4()
    with tracing.enqueuing(task.name, queue, job_id) as traceparent:
        job = Job(
            id=job_id,
            task_name=task.name,
            args=list(args),
            kwargs=kwargs,
            queue=queue,
            priority=priority_class.value,
            key=key,
            unique_key=unique_key or "",
            run_after=run_after,
            traceparent=traceparent,
            **options,
        )
        if key is None:
            ledger.record(job)  # a fresh uuid: nothing to collide with, no savepoint
        else:
            try:
                with transaction.atomic():
                    ledger.record(job)
            except IntegrityError:
                # Another transaction took the key first (the insert waited for it to commit).
                return Job.objects.get(key=key)
        if run_after is None or run_after <= timezone.now():
            after_commit(publish_jobs, [job])
        return job


def enqueue_many(
    task: Task | str,
    calls: Iterable[tuple | list | dict],
    *,
    priority: PriorityClass | str | None = None,
    run_after: datetime.datetime | None = None,
    expires: datetime.datetime | float | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    tags: list[str] | None = None,
    publish_batch_size: int = 1000,
) -> list[Job]:
    """Records many jobs of one task with one COPY; publishes them after commit.

    Each call is a tuple or list of positional arguments, or a dict of keyword
    arguments. Every payload is checked before anything is written, as enqueue
    checks it (one bad call raises EnqueueError and writes nothing). After commit
    the jobs are published in chunks of `publish_batch_size`, with the confirms of
    one chunk coming in while the next is sent; a chunk that fails stays pending for
    the relay, like any job. `expires`, `soft_time_limit`, `time_limit` and `tags` are
    enqueue's, for every job of the call.
    """
    task = resolve_task(task)
    _checked_queue(task)
    priority_class = _priority_class(task, priority)
    options = _run_options(task, expires, soft_time_limit, time_limit, run_after, tags)
    if not isinstance(publish_batch_size, int) or publish_batch_size < 1:
        raise EnqueueError(
            f"publish_batch_size must be a whole number of 1 or more, not {publish_batch_size!r}."
        )
    with tracing.enqueuing(task.name, str(task.queue)) as traceparent:
        signature = inspect.signature(task.run)
        new_job = ledger.job_factory(
            task_name=task.name, queue=task.queue, priority=priority_class.value, run_after=run_after,
            traceparent=traceparent, **options,
        )  # fmt: skip
        jobs, payloads = [], []
        # Whether arguments fit the signature depends only on their count and keyword
        # names: one check per shape, not per call.
        fitting_shapes = set()
        for n, call in enumerate(calls):
            args, kwargs = ((), dict(call)) if isinstance(call, dict) else (tuple(call), {})
            shape = (len(args), tuple(kwargs))
            try:
                payloads.append(
                    _check_payload(task, args, kwargs, signature, bind=shape not in fitting_shapes)
                )
                fitting_shapes.add(shape)
            except EnqueueError as exc:
                raise EnqueueError(f"Call {n}: {exc}") from None
            jobs.append(new_job(id=uuid.uuid4(), args=list(args), kwargs=kwargs))
        ledger.record_many(jobs, payloads)
        tracing.enqueued(len(jobs))
        if run_after is None or run_after <= timezone.now():
            after_commit(publish_jobs, jobs, chunk_size=publish_batch_size)
        return jobs


def retry_job(job_id: uuid.UUID | str) -> bool:
    """Starts a new attempt of a dead job (same ledger row, same id); False if not dead.

    The job goes back to `pending` and is published after commit, like a new one.
    """
    return bool(retry_dead_jobs([job_id]))


def resend_queued_jobs(job_ids: Iterable[uuid.UUID | str]) -> int:
    """Publishes the messages of `queued` jobs again; returns how many were queued.

    For messages lost in RabbitMQ while their jobs waited: a queue purged or deleted
    by hand, a broker that lost its disk. Nothing in RabbitMQ says which messages it
    still holds, so this is the operator's call (the admin action, `manage.py
    jobs_resend`); jobs.rescue does the same on its own for jobs whose messages look
    lost. Safe if a message was not lost after all: the worker runs a job once and
    acknowledges the other copy without running it. The jobs go back to `pending`
    and are published after commit (the relay sends any that are not); a job among
    `job_ids` in any other state is left as it is (a deferred one is not published
    early).
    """
    ids = [str(job_id) for job_id in job_ids]
    if not ids:
        return 0
    with transaction.atomic():
        moved = ledger.queued_back_to_pending(ids)
        if moved:
            after_commit(_publish_pending, moved)
    return len(moved)


def _publish_pending(job_ids) -> None:
    publish_jobs(list(Job.objects.filter(pk__in=list(job_ids), state=JobState.PENDING)))


CANCELLED = "cancelled"
STOPPING = "stopping"


def cancel(job_id: uuid.UUID | str, by: str = "") -> str:
    """Cancels a job; `by` says who asked (the admin passes the user's name).

    - Waiting (pending, queued or waiting to retry): it is `cancelled` now, and its
      message, if already in RabbitMQ, is acknowledged without running. Returns
      "cancelled".
    - Running: it is asked to stop, and returns "stopping". Its body sees it at its
      next checkpoint (`self.cancel_requested()`, `jobs.checkpoint()`) and the job
      ends `cancelled`; a body that does not stop within JOBS_CANCEL_GRACE_SECONDS is
      stopped by its worker (the prefork pool process running it is terminated), and
      the job ends `cancelled` too, not retried and not dead-lettered.
    - Finished, or unknown: raises CancelRefused, whose message says why.
    """
    try:
        job_id = uuid.UUID(str(job_id))
    except ValueError:
        raise CancelRefused(f"{job_id!r} is not a job id.") from None
    for _ in range(3):  # a job may move between the writes (started, say): look again
        with transaction.atomic():
            if ledger.cancel(job_id, by):
                return CANCELLED
            if ledger.request_stop(job_id, by):
                after_commit(ask_workers_to_stop, str(job_id))
                return STOPPING
        state = Job.objects.filter(pk=job_id).values_list("state", flat=True).first()
        if state is None:
            raise CancelRefused(f"There is no job {job_id}.")
        if state in FINISHED_STATES:
            raise CancelRefused(f"Job {job_id} is {state} already: a finished job cannot be cancelled.")
        if state == JobState.STARTED:
            return STOPPING  # asked already: the first request's grace period runs
    raise CancelRefused(f"Job {job_id} kept changing state ({state} now) while being cancelled; try again.")


def ask_workers_to_stop(job_id: str, grace: float | None = None) -> None:
    """Tells every worker to stop the job's run if it is still running after `grace`
    seconds (JOBS_CANCEL_GRACE_SECONDS by default; jobs.remote_control.jobs_stop). A
    worker that misses it (disconnected) is asked again by the relay
    (jobs.rescue.stop_ignored_cancels)."""
    grace = settings.JOBS_CANCEL_GRACE_SECONDS if grace is None else grace
    try:
        celery_app().control.broadcast("jobs_stop", arguments={"job_id": job_id, "grace": grace})
    except Exception as exc:  # noqa: BLE001 - the ledger holds the request; the checkpoints still see it
        logger.warning("job=%s could not tell the workers to stop it (%s)", job_id, exc)


def retry_dead_jobs(job_ids: list) -> int:
    """retry_job for many dead jobs at once (a batch of the admin's bulk action): one
    UPDATE, then the retried ones are published after commit; returns how many."""
    with transaction.atomic():
        moved = ledger.retry_dead(job_ids)
        if moved:
            after_commit(_publish_retried, list(job_ids))
    return moved


def _publish_retried(job_ids) -> None:
    # retry_dead clears run_after: a pending job among them with one is not a retry.
    publish_jobs(list(Job.objects.filter(pk__in=job_ids, state=JobState.PENDING, run_after__isnull=True)))


def cancel_waiting_jobs(job_ids: list, by: str = "") -> int:
    """Cancels the waiting jobs among `job_ids` (the admin's bulk action, a batch a
    call), in one UPDATE; returns how many."""
    return ledger.cancel(job_ids, by)


def cancel_job(job_id: uuid.UUID | str) -> bool:
    """jobs.cancel as a yes or no: True if the job is cancelled or stopping."""
    try:
        return bool(cancel(job_id))
    except CancelRefused:
        return False


def prune_jobs(
    older_than: datetime.timedelta,
    states: tuple[str, ...] = (JobState.SUCCEEDED, JobState.CANCELLED),
    batch_size: int = 10_000,
) -> int:
    """Deletes finished jobs created more than `older_than` ago, in batches; returns how many
    (jobs.ledger.prune says how)."""
    return ledger.prune(older_than, states, batch_size)
