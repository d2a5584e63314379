"""The one base class of every job: ledger, lease, retries, poison cap, logging.

A task body stays a few lines (unpack ids, call a service); everything that every
job needs happens here, around it. The Celery app uses this class for every task
(`Celery(task_cls="jobs.base:JobTask")`).

What happens to one delivery of a job's message:

No copy of a message waits inside a worker: whatever must wait (a retry's
backoff, a rate limit's delay, a busy lease) is written to the ledger and the copy
is acknowledged; the relay (jobs.relay) publishes the job when it is due.

0. Over a rate limit? The job waits in the ledger until the limit allows it.
1. Take the job's lease (jobs.ledger.Lease) and, in the same round trip, start the
   job if it is waiting. Held elsewhere? Another copy runs right now: ack this
   one, and the relay looks again soon whether that run is still alive.
2. Read the ledger row (a message the ledger never saw, from beat or `.delay()`,
   gets a row now). Finished already (a redelivery or a duplicate publish)? Ack,
   run nothing. Retrying, and its backoff not over (a duplicate copy)? Ack it: the
   relay publishes the retry when it is due.
3. Still `started` although the lease was free? The run before this one died with
   its worker. Count it; at JOBS_MAX_LOST_RUNS, the job is `dead` and the message
   is rejected into the dead-letter queue instead of killing another worker.
4. Mark `started`, attempts + 1, run the task body.
5. Success: `succeeded`. A declared transient error: `retrying` until the backoff's
   end (`run_after`, exponential backoff with jitter), when the relay publishes it
   again. `self.retry()` in a body does the same. Anything else, or
   retries exhausted, or the soft time limit: `dead`, and the raised error makes
   Celery reject the message into the dead-letter queue.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
import time
import traceback

from celery import Task
from celery.exceptions import (
    Ignore,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskPredicate,
)
from celery.utils.time import maybe_make_aware
from django.conf import settings
from django.db import DatabaseError, DataError, InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone

from jobs import ledger, ratelimit
from jobs.models import FINISHED_STATES, Job, JobState
from jobs.topology import PriorityClass, Workload

logger = logging.getLogger("jobs")


class TransientJobError(Exception):
    """Raise from a task body to ask for a retry with backoff, whatever the task declares."""


class PermanentJobError(Exception):
    """Raise from a task body to end the job `dead` at once, with this message as its error."""


def backoff_seconds(retry_number: int, base: float, maximum: float, jitter: bool = True) -> float:
    """Exponential backoff (base * 2^n, capped at maximum), with "equal jitter".

    Half the delay is fixed and half random, so a burst of failures spreads out
    without a retry ever coming back at once.
    """
    delay = min(maximum, base * (2 ** max(retry_number, 0)))
    if not jitter:
        return delay
    return delay / 2 + random.uniform(0, delay / 2)


class JobTask(Task):
    """Base class of every job. Subclass attributes a task may set:

    queue: its workload queue (jobs.topology.Workload).
    priority_class: its default priority class; enqueue may override.
    transient_errors: exception types that are retried with backoff.
    max_retries, retry_backoff, retry_backoff_max, retry_jitter: the retry policy.
    global_rate_limit: at most that many starts per period across every worker;
        jobs over it are delayed to the next period (JOBS_QUEUE_RATE_LIMITS does the
        same per queue).
    """

    queue: str = Workload.DEFAULT.value
    priority_class: PriorityClass = PriorityClass.NORMAL
    transient_errors: tuple[type[BaseException], ...] = ()
    global_rate_limit: str | None = None  # "10/s", "300/m": across all workers (jobs.ratelimit)
    launchable: bool = False  # offered by the admin's job launcher (jobs.launcher.launchable_tasks)
    max_retries = 5
    retry_backoff: float = 1.0
    retry_backoff_max: float = 600.0
    retry_jitter = True

    def __call__(self, *args, **kwargs):
        request = self.request
        if request.called_directly or request.is_eager:
            return self.run(*args, **kwargs)
        job_id = request.id
        lease = ledger.Lease(job_id)
        try:
            self._respect_rate_limits(job_id)
            # The hot path: one round trip takes the lease and starts a waiting job.
            job = lease.take_and_start(request.hostname or "")
            if not lease.held:
                # Another copy runs right now. Should that run die without a message
                # left to run it again, the relay's look at its lease sends a new one.
                # Not started yet (the other copy is deciding, or ending a run): the
                # job waits in the ledger a little, and the relay sends it then.
                busy = settings.JOBS_LEASE_BUSY_RETRY_SECONDS
                if not ledger.recheck_lease_later(job_id, busy):
                    ledger.defer(job_id, timezone.now() + datetime.timedelta(seconds=busy))
                self._log(job_id, "lease busy; another copy is running, acknowledged")
                raise Ignore()
            if job is None:
                job = self._begin(job_id, args, kwargs)
                if job is None:
                    raise Ignore()
            return self._run_and_record(job, args, kwargs, lease)
        except (DatabaseError, InterfaceError) as exc:
            # The ledger is unreachable: keep the message in RabbitMQ and try again,
            # once the ledger answers (or after a while), so that an outage costs each
            # message one redelivery, not one a second: a quorum queue counts them
            # against its delivery limit. A run already done is absorbed by the
            # handler's own idempotency.
            logger.warning("job=%s task=%s ledger unavailable (%s); requeueing", job_id, self.name, exc)
            _wait_for_the_ledger(settings.JOBS_LEDGER_WAIT_SECONDS)
            raise Reject(f"ledger unavailable: {exc}", requeue=True) from exc
        except TaskPredicate:
            raise  # Retry, Reject, Ignore: already decided, and the ledger written
        except Exception as exc:
            # Anything raised outside the task body (a soft time limit while waiting on
            # a lock, a bug) makes Celery reject the message into the dead-letter
            # queue: the ledger must say dead too, or the job would look alive forever.
            if not getattr(exc, "_jobs_recorded", False):
                self._force_dead(job_id, exc)
            raise
        finally:
            lease.release()

    # -- phases ---------------------------------------------------------------------

    def _begin(self, job_id: str, args, kwargs) -> Job | None:
        """The slow path, under the lease: a finished job (skip), a run lost with its
        worker (count it, maybe dead-letter it), a message the ledger never saw."""
        job = self._ledger_row(job_id, args, kwargs)
        if job.state in FINISHED_STATES:
            self._log(job_id, f"already {job.state}; acknowledged without running")
            return None
        wait = (job.run_after - timezone.now()).total_seconds() if job.run_after else 0.0
        if job.state == JobState.RETRYING and wait > 0:
            # Another copy of its message, come before the retry's backoff ended.
            self._log(job_id, f"a copy came {wait:.2f}s before the retry is due; the relay sends it then")
            return None
        if job.state == JobState.STARTED:
            lost = job.lost_runs + 1
            if lost >= settings.JOBS_MAX_LOST_RUNS:
                error = (
                    f"Its worker died during {lost} runs (JOBS_MAX_LOST_RUNS is "
                    f"{settings.JOBS_MAX_LOST_RUNS}); dead-lettered as poison."
                )
                ledger.transition(
                    job_id,
                    JobState.DEAD,
                    lost_runs=lost,
                    last_error=error,
                    last_traceback="",
                    finished_at=timezone.now(),
                )
                logger.error("job=%s task=%s state=dead reason=poison lost_runs=%d", job_id, self.name, lost)
                self._call_on_dead(job, error)
                raise Reject(error, requeue=False)
            if not Job.objects.filter(pk=job_id, state=JobState.STARTED, attempts=job.attempts).update(
                lost_runs=lost
            ):
                return None  # it moved meanwhile (finished by the run we thought lost)
            logger.warning(
                "job=%s task=%s previous run died with its worker; running again", job_id, self.name
            )
        started_at = timezone.now()
        moved = ledger.transition(
            job_id,
            JobState.STARTED,
            attempts=F("attempts") + 1,
            started_at=started_at,
            finished_at=None,
            worker=self.request.hostname or "",
        )
        if not moved:
            # Cancelled (or finished) between the read and the update.
            return None
        # What the UPDATE just wrote, without reading the row again: under the lease
        # nothing else writes these fields.
        job.state, job.attempts, job.started_at = JobState.STARTED, job.attempts + 1, started_at
        return job

    def _respect_rate_limits(self, job_id) -> None:
        limits = [(f"task:{self.name}", self.global_rate_limit)]
        limits.append((f"queue:{self.queue}", settings.JOBS_QUEUE_RATE_LIMITS.get(str(self.queue))))
        for name, rate in limits:
            if not rate:
                continue
            wait = ratelimit.seconds_until_allowed(name, rate)
            if wait:
                # Only a job that waits can wait in the ledger. Any other (a run that died
                # with its worker, a finished job's redelivery) goes on to the lease,
                # which decides: acking this copy would leave it with no message.
                if ledger.defer(job_id, timezone.now() + datetime.timedelta(seconds=wait)):
                    self._log(job_id, f"over the {rate} limit of {name}; waits {wait:.2f}s in the ledger")
                    raise Ignore()
                return

    def _ledger_row(self, job_id: str, args, kwargs) -> Job:
        delivery = self.request.delivery_info or {}
        job, _ = Job.objects.get_or_create(
            pk=job_id,
            defaults={
                "task_name": self.name,
                "args": list(args),
                "kwargs": dict(kwargs),
                "queue": delivery.get("routing_key") or self.queue,
                "priority": delivery.get("priority") or self.priority_class.value,
                "state": JobState.QUEUED,
                "queued_at": timezone.now(),
            },
        )
        return job

    def _run_and_record(self, job: Job, args, kwargs, lease: ledger.Lease):
        started = time.monotonic()
        # The count lives in the ledger: every copy the relay sends says retries=0.
        self.request.retries = job.retries
        try:
            result = self.run(*args, **kwargs)
        except Retry as exc:
            # The task body called self.retry() (see `retry`): nothing was sent, and
            # the ledger schedules the retry like any other.
            cause = exc.exc or exc
            limit = getattr(exc, "_jobs_max_retries", None)
            limit = self.max_retries if limit is None else limit
            if limit is not None and job.retries >= limit:
                dead = (
                    cause
                    if cause is not exc
                    else MaxRetriesExceededError(f"{self.name} retried itself too often")
                )
                self._record_dead(job, dead, started, reason="retries exhausted")
                dead._jobs_recorded = True
                raise dead from None
            countdown = _seconds_until(exc.when, self.app.timezone)
            if countdown is None:
                countdown = float(self.default_retry_delay or 0)
            self._record_retry(job, cause, started, countdown=countdown)
            raise
        except SoftTimeLimitExceeded as exc:
            self._record_dead(job, exc, started, reason="soft time limit exceeded")
            exc._jobs_recorded = True
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified here
            # A lost database connection inside the body is transient for every job:
            # the next attempt reconnects.
            retryable = isinstance(
                exc, (TransientJobError, OperationalError, InterfaceError, *self.transient_errors)
            ) and not isinstance(exc, PermanentJobError)
            # The count lives in the ledger, not the message: a copy re-sent by the
            # relay or a duplicate cannot start it again from zero.
            if retryable and job.retries < self.max_retries:
                countdown = backoff_seconds(
                    job.retries, self.retry_backoff, self.retry_backoff_max, self.retry_jitter
                )
                self._record_retry(job, exc, started, countdown=countdown)
                raise Retry(exc=exc, when=countdown) from exc
            reason = "retries exhausted" if retryable else "permanent error"
            self._record_dead(job, exc, started, reason=reason)
            exc._jobs_recorded = True  # the outer handler must not write this run's end again
            if isinstance(exc, (DatabaseError, InterfaceError)):
                # Not "the ledger is unavailable": the job failed, and its message
                # goes to the dead-letter queue like any failure.
                raise Reject(f"{_describe(exc)}", requeue=False) from exc
            raise
        try:
            moved = lease.succeed_and_release(job, _json_or_none(result))
        except DataError:
            # The result could not be stored; the job's success matters more.
            moved = lease.succeed_and_release(job, None)
        except (OperationalError, InterfaceError):
            # The connection died with the lease on it; record the outcome on a new one.
            connection.close()
            moved = 0
        if not moved:
            # Not the running attempt as the row reads: its start may have been lost
            # with a crash of PostgreSQL (see _write_outcome), or a newer attempt
            # owns the row, which _write_outcome then leaves alone.
            self._write_outcome(
                job, JobState.SUCCEEDED, result=_json_or_none(result), finished_at=timezone.now()
            )
        self._log(job.id, "succeeded", started=started, attempt=job.attempts)
        return result

    def _end_run(self, job: Job, target: JobState, exc: BaseException, **fields) -> None:
        """Writes this run's failure (only if it is still the running attempt)."""
        self._write_outcome(job, target, **_error_fields(exc), **fields)

    def _write_outcome(self, job: Job, target: JobState, **fields) -> int:
        """Ends this run in the ledger, if it is still the running attempt.

        The start was committed asynchronously (jobs.ledger.Lease): if PostgreSQL
        itself crashed during the run, the row may read as still waiting, one attempt
        behind. Then the start is written again first, so the outcome of a run that
        did happen is not lost.
        """
        moved = self._write_ledger(
            job.id, target, only_from=[JobState.STARTED], where={"attempts": job.attempts}, **fields
        )
        if moved:
            return moved
        restarted = self._write_ledger(
            job.id,
            JobState.STARTED,
            only_from=[JobState.PENDING, JobState.QUEUED, JobState.RETRYING],
            where={"attempts": job.attempts - 1},
            attempts=job.attempts,
            started_at=job.started_at or timezone.now(),
            worker=self.request.hostname or "",
        )
        if not restarted:
            return 0  # another attempt owns the row now: this run's outcome is stale
        logger.warning(
            "job=%s task=%s its start was lost with a database crash; written again", job.id, self.name
        )
        return self._write_ledger(
            job.id, target, only_from=[JobState.STARTED], where={"attempts": job.attempts}, **fields
        )

    def _record_retry(self, job: Job, exc: BaseException, started: float, countdown: float | None = None):
        # With its backoff's end as `run_after`: the relay publishes the retry then, and
        # no other copy of the job's message (a relay duplicate, a resend) starts the
        # next attempt before.
        due = None if countdown is None else timezone.now() + datetime.timedelta(seconds=countdown)
        self._end_run(job, JobState.RETRYING, exc, retries=job.retries + 1, run_after=due)
        try:
            ledger.notify_due()
        except (OperationalError, InterfaceError):
            pass  # the relay's own pass finds the retry a little later
        extra = f" next_in_s={countdown:.2f}" if countdown is not None else ""
        logger.warning(
            "job=%s task=%s attempt=%d state=retrying duration_ms=%.1f error=%s%s",
            job.id,
            self.name,
            job.attempts,
            (time.monotonic() - started) * 1000,
            _describe(exc),
            extra,
        )

    def _record_dead(self, job: Job, exc: BaseException, started: float, reason: str):
        self._end_run(job, JobState.DEAD, exc)
        logger.error(
            "job=%s task=%s attempt=%d state=dead reason=%s duration_ms=%.1f error=%s",
            job.id,
            self.name,
            job.attempts,
            reason,
            (time.monotonic() - started) * 1000,
            _describe(exc),
        )
        self._call_on_dead(job, _describe(exc))

    def _write_ledger(self, job_id, target: JobState, **kwargs) -> int:
        """ledger.transition, retried on a fresh connection if the database dropped ours.

        The job's own work is done (or failed) at this point: losing its outcome to a
        killed connection would make it run again.
        """
        for attempt, pause in enumerate((0.2, 0.5, 1.0, 2.0, 4.0, None)):
            try:
                return ledger.transition(job_id, target, **kwargs)
            except (OperationalError, InterfaceError):
                if pause is None:
                    raise
                logger.warning(
                    "job=%s task=%s ledger write failed; reconnecting (%d)", job_id, self.name, attempt + 1
                )
                connection.close()
                time.sleep(pause)
        raise AssertionError("unreachable: the last pause is None")

    def _force_dead(self, job_id, exc: BaseException) -> None:
        try:
            moved = ledger.transition(
                job_id,
                JobState.DEAD,
                only_from=[JobState.PENDING, JobState.QUEUED, JobState.STARTED, JobState.RETRYING],
                **_error_fields(exc),
            )
        except Exception:  # noqa: BLE001 - the original error matters more
            logger.exception("job=%s task=%s could not be marked dead", job_id, self.name)
            return
        if moved:
            logger.error(
                "job=%s task=%s state=dead reason=error outside the task body error=%s",
                job_id,
                self.name,
                _describe(exc),
            )
            job = Job.objects.filter(pk=job_id).first()
            if job is not None:
                self._call_on_dead(job, _describe(exc))

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None, **options):
        """Celery's `self.retry()`, kept in the ledger: nothing is published now; the job
        is `retrying` until `countdown` (or `eta`) and the relay publishes it then. The
        ledger counts the retries, against the task's `max_retries`."""
        request = self.request
        if request.called_directly or request.is_eager:
            return super().retry(args, kwargs, exc, throw, eta, countdown, **options)
        when = eta if eta is not None else countdown
        retry = Retry(exc=exc, when=when if when is not None else self.default_retry_delay)
        retry._jobs_max_retries = options.get("max_retries")  # autoretry_for's retry_kwargs, say
        raise retry

    def on_dead(self, job: Job, error: str) -> None:
        """Hook for a task class: runs once the job is marked dead, whichever way it
        died: its body failed, it was poison, an error outside its body, or RabbitMQ
        dead-lettered its message (then in the dead-letter keeper, see
        `ended_dead`)."""

    def _call_on_dead(self, job: Job, error: str) -> None:
        try:
            self.on_dead(job, error)
        except Exception:  # noqa: BLE001 - a hook must not change how the job ends
            logger.exception("job=%s task=%s on_dead hook failed", job.id, self.name)

    def _log(self, job_id, message: str, started: float | None = None, attempt: int | None = None):
        parts = [f"job={job_id}", f"task={self.name}"]
        if attempt is not None:
            parts.append(f"attempt={attempt}")
        if started is not None:
            parts.append(f"duration_ms={(time.monotonic() - started) * 1000:.1f}")
        logger.info("%s %s", " ".join(parts), message)


def _wait_for_the_ledger(longest: float) -> None:
    """Returns once PostgreSQL answers on a new connection, or after `longest` seconds."""
    deadline = time.monotonic() + longest
    pause = 0.5
    while True:
        connection.close()
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        try:
            connection.ensure_connection()
            return
        except (DatabaseError, InterfaceError):
            if time.monotonic() >= deadline:
                connection.close()
                return
        pause = min(pause * 2, 5.0)


def ended_dead(job: Job, error: str) -> None:
    """Runs the `on_dead` hook of `job`'s task, for a job marked dead outside a worker's
    run of it (the dead-letter keeper). Nothing if no such task is registered here."""
    from jobs.services import EnqueueError, resolve_task

    try:
        task = resolve_task(job.task_name)
    except EnqueueError:
        return
    except Exception:  # noqa: BLE001 - a hook must not change how the job ends
        logger.exception("job=%s task=%s its task could not be loaded for on_dead", job.id, job.task_name)
        return
    if isinstance(task, JobTask):
        task._call_on_dead(job, error)


def _seconds_until(when, tz) -> float | None:
    """A Retry's `when` (seconds, or the eta as a datetime, naive ones in the app's
    time zone as the worker reads them) as seconds from now; None if it has none."""
    if isinstance(when, datetime.datetime):
        return max(0.0, (maybe_make_aware(when, tz) - timezone.now()).total_seconds())
    return float(when) if isinstance(when, (int, float)) else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _error_fields(exc: BaseException) -> dict:
    """What the ledger records of a run that ended in `exc`."""
    return {
        "last_error": _describe(exc),
        "last_traceback": _traceback(exc),
        "last_error_class": _class_path(exc),
        "finished_at": timezone.now(),
    }


def _class_path(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-20000:]


def _json_or_none(value):
    """The value if PostgreSQL's jsonb can store it (no NaN/Infinity, no NUL), else None."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return None if "\\u0000" in text else value
