"""The one base class of every job: a Celery adapter that calls the ledger once before
the body and once after.

A task body stays a few lines (unpack ids, call a service); everything that every
job needs happens here, around it. The Celery app uses this class for every task
(`Celery(task_cls="jobs.base:JobTask")`). One delivery of a job's message:

1. Over a rate limit (jobs.ratelimit)? The job waits in the ledger until the limit
   allows it, and this copy is acknowledged.
2. Admit (jobs.ledger.admit): take the job's lease and start the job. Or skip this
   copy (another copy runs, the job finished, a retry's copy came early), or end a
   job whose worker died during too many runs `dead` as poison.
3. Run the body.
4. End the run (jobs.ledger.end_run): `succeeded`; `retrying` until its backoff's
   end (the task's RetryPolicy, jobs.retry), when the relay publishes it again; or
   `dead`, and the raised error makes Celery reject the message into the
   dead-letter queue. Every way a job ends dead runs the task's `on_dead` hook.

No copy of a message waits inside a worker: whatever must wait is written to the
ledger and the copy is acknowledged. docs/architecture.md tells the whole flow.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import time

from celery import Task
from celery.exceptions import (
    Ignore,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskPredicate,
    TimeLimitExceeded,
)
from celery.utils.time import maybe_make_aware
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection
from django.utils import timezone

from jobs import async_bodies, ledger, ratelimit, throughput, tracing
from jobs import retry as retries
from jobs.errors import JobCancelled, PermanentJobError, TransientJobError, describe  # noqa: F401 - the first release's import path
from jobs.models import Job, JobState
from jobs.running import set_running_task
from jobs.topology import PriorityClass, Workload

logger = logging.getLogger("jobs")


class JobTask(Task):
    """Base class of every job. Subclass attributes a task may set:

    queue: its workload queue (jobs.topology.Workload).
    priority_class: its default priority class; enqueue may override.
    retry_policy: a jobs.retry.RetryPolicy; without one, made from Celery's options
        max_retries, retry_backoff, retry_backoff_max, retry_jitter, and from
        transient_errors (exception types that are retried with backoff).
    global_rate_limit: at most that many starts per period across every worker;
        jobs over it are delayed to the next period (JOBS_QUEUE_RATE_LIMITS does the
        same per queue).
    launchable: offered by the admin's job launcher (jobs.launcher).
    """

    queue: str = Workload.DEFAULT.value
    priority_class: PriorityClass = PriorityClass.NORMAL
    retry_policy: retries.RetryPolicy | None = None
    transient_errors: tuple[type[BaseException], ...] = ()
    global_rate_limit: str | None = None  # "10/s", "300/m": across all workers (jobs.ratelimit)
    launchable: bool = False
    max_retries = 5
    retry_backoff: float = 1.0
    retry_backoff_max: float = 600.0
    retry_jitter = True

    @property
    def soft_time_limit(self) -> float | None:
        """The task's soft time limit: CELERY_TASK_SOFT_TIME_LIMIT unless the task sets
        its own, and never above its hard limit (`time_limit`). Celery's pool arms the
        hard limit only once the soft one has passed, so a soft limit above the hard
        one would leave the hard one unenforced until then."""
        soft, hard = self.app.conf.task_soft_time_limit, self.time_limit
        return min(soft, hard) if soft and hard else soft or None

    @functools.cached_property
    def is_async(self) -> bool:
        """Whether the body is a coroutine function (`async def`): jobs.async_bodies runs it."""
        return inspect.iscoroutinefunction(self.run)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A declared policy is what Celery's own max_retries says too (its eager
        # self.retry reads it).
        policy = cls.__dict__.get("retry_policy")
        if policy is not None:
            cls.max_retries = policy.max_retries

    def __call__(self, *args, **kwargs):
        request = self.request
        if request.called_directly or request.is_eager:
            return self.run(*args, **kwargs)
        job_id = request.id
        lease = ledger.Lease(job_id)
        try:
            self._respect_rate_limits(job_id)
            admitted = ledger.admit(lease, request.hostname or "", lambda: self._row_of_unknown(args, kwargs))
            if isinstance(admitted, ledger.Skip):
                self._log(job_id, admitted.reason)
                if isinstance(admitted, ledger.Expired) and admitted.job is not None:
                    self._call_hook(self.on_expired, admitted.job)
                raise Ignore()
            if isinstance(admitted, ledger.Poison):
                logger.error(
                    "job=%s task=%s state=dead reason=poison lost_runs=%d",
                    job_id, self.name, admitted.job.lost_runs,
                )  # fmt: skip
                self._call_on_dead(admitted.job, admitted.error)
                raise Reject(admitted.error, requeue=False)
            return self._run(admitted, args, kwargs)
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
                self._end_outside_the_body(job_id, exc)
            raise
        finally:
            lease.release()

    @property
    def policy(self) -> retries.RetryPolicy:
        """This task's retry policy (see the class's docstring)."""
        if self.retry_policy is not None:
            return self.retry_policy
        return retries.RetryPolicy(
            max_retries=self.max_retries,
            backoff=self.retry_backoff,
            backoff_max=self.retry_backoff_max,
            jitter=self.retry_jitter,
            transient_errors=tuple(self.transient_errors),
        )

    # -- the run ------------------------------------------------------------------

    def start_strategy(self, app, consumer, **kwargs):
        """How the worker's main process handles this task's messages: in batches on a
        throughput queue (jobs.throughput), else Celery's own way."""
        return throughput.strategy(self, app, consumer) or super().start_strategy(app, consumer, **kwargs)

    def _run(self, run: ledger.Run, args, kwargs, successes: list | None = None):
        """Runs the body and ends the run in the ledger, as its outcome says; a success
        is added to `successes` instead, when given, for a batch to record with others.
        The attempt is a span of the job's trace (jobs.tracing), when this process traces."""
        with tracing.running(self.name, run.job, getattr(self.request, "traceparent", None)):
            return self._run_body(run, args, kwargs, successes)

    def _run_body(self, run: ledger.Run, args, kwargs, successes: list | None):
        job, started = run.job, time.monotonic()
        # The count lives in the ledger: every copy the relay sends says retries=0.
        self.request.retries = job.retries
        self.request._jobs_run = run
        set_running_task(self)
        try:
            try:
                if self.is_async:
                    result = async_bodies.run(self, args, kwargs)
                else:
                    result = self.run(*args, **kwargs)
            finally:
                set_running_task(None)
                self._flush_progress()  # the latest report, before the run's end is written
        except Retry as exc:
            # The task body called self.retry() (see `retry`): nothing was sent, and
            # the ledger schedules the retry like any other.
            cause = exc.exc or exc
            if not self.policy.may_retry(job.retries, getattr(exc, "_jobs_max_retries", None)):
                if cause is exc:
                    cause = MaxRetriesExceededError(f"{self.name} retried itself too often")
                self._end_dead(run, cause, started, "retries exhausted")
                raise cause from None
            countdown = _seconds_until(exc.when, self.app.timezone)
            if countdown is None:
                countdown = float(self.default_retry_delay or 0)
            self._end_retrying(run, cause, started, countdown)
            raise
        except SoftTimeLimitExceeded as exc:
            limits = self.request.timelimit or (None, None)
            soft = limits[1] or self.soft_time_limit
            exc.args = exc.args or (
                f"soft time limit ({soft:g}s) exceeded" if soft else "soft time limit exceeded",
            )
            self._end_dead(run, exc, started, "soft time limit exceeded")
            raise
        except JobCancelled:
            # It stopped at a checkpoint, as asked (jobs.cancel): no retry, no dead letter.
            self._end_cancelled(
                run, started, "stopped while it awaited" if self.is_async else "stopped at a checkpoint"
            )
        except Exception as exc:  # noqa: BLE001 - every failure is classified here
            verdict = self.policy.verdict(exc, job.retries)
            if isinstance(verdict, retries.Retry):
                self._end_retrying(run, exc, started, verdict.countdown)
                raise Retry(exc=exc, when=verdict.countdown) from exc
            self._end_dead(run, exc, started, verdict.reason)
            if isinstance(exc, (DatabaseError, InterfaceError)):
                # Not "the ledger is unavailable": the job failed, and its message
                # goes to the dead-letter queue like any failure.
                raise Reject(describe(exc), requeue=False) from exc
            raise
        if getattr(self.request, "_jobs_cancel_seen", (0, False))[1]:
            # The body saw the request (self.cancel_requested()) and returned early.
            self._end_cancelled(run, started, "returned once asked to stop")
        tracing.ended(JobState.SUCCEEDED)
        if successes is not None:
            successes.append((run, result))
            return result
        ledger.end_run(run, JobState.SUCCEEDED, result=result)
        # DEBUG: Celery's own "Task ... succeeded in" line says it at INFO already.
        self._log(job.id, "succeeded", started=started, attempt=job.attempts, level=logging.DEBUG)
        return result

    def _end_cancelled(self, run: ledger.Run, started: float, how: str) -> None:
        ledger.end_run(run, JobState.CANCELLED)
        tracing.ended(JobState.CANCELLED)
        logger.warning(
            "job=%s task=%s attempt=%d state=cancelled duration_ms=%.1f %s",
            run.job.id, self.name, run.job.attempts, (time.monotonic() - started) * 1000, how,
        )  # fmt: skip
        raise Ignore()

    def _end_retrying(self, run: ledger.Run, exc: BaseException, started: float, countdown: float) -> None:
        if ledger.stop_requested(run.job.id):
            # Asked to stop, it failed before its next checkpoint: no next attempt.
            self._end_cancelled(run, started, f"failed after it was asked to stop ({describe(exc)})")
        ledger.end_run(run, JobState.RETRYING, error=exc, countdown=countdown)
        tracing.ended(JobState.RETRYING, exc)
        logger.warning(
            "job=%s task=%s attempt=%d state=retrying duration_ms=%.1f error=%s next_in_s=%.2f",
            run.job.id, self.name, run.job.attempts, (time.monotonic() - started) * 1000, describe(exc),
            countdown,
        )  # fmt: skip

    def _end_dead(self, run: ledger.Run, exc: BaseException, started: float, reason: str) -> None:
        ledger.end_run(run, JobState.DEAD, error=exc)
        tracing.ended(JobState.DEAD, exc)
        exc._jobs_recorded = True  # the outer handler must not write this run's end again
        logger.error(
            "job=%s task=%s attempt=%d state=dead reason=%s duration_ms=%.1f error=%s",
            run.job.id, self.name, run.job.attempts, reason, (time.monotonic() - started) * 1000, describe(exc),
        )  # fmt: skip
        self._call_on_dead(run.job, describe(exc))

    def _end_outside_the_body(self, job_id, exc: BaseException) -> None:
        try:
            job = ledger.end_outside_a_run(job_id, exc)
        except Exception:  # noqa: BLE001 - the original error matters more
            logger.exception("job=%s task=%s could not be marked dead", job_id, self.name)
            return
        if job is not None:
            logger.error(
                "job=%s task=%s state=dead reason=error outside the task body error=%s",
                job_id, self.name, describe(exc),
            )  # fmt: skip
            self._call_on_dead(job, describe(exc))

    # -- progress -------------------------------------------------------------------

    def progress(self, done: int, total: int | None = None, message: str = "") -> None:
        """Reports how far the job is: `done` of `total` steps (None if unknown), with a
        short `message`. The admin and `GET /api/jobs/<id>` show it. Call it as often as
        is convenient: the ledger is written at most every JOBS_PROGRESS_SECONDS, and
        the latest report when the run ends. Does nothing outside a worker's run."""
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise ValueError(f"progress: done must be a count (an int of 0 or more), not {done!r}")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError(f"progress: total must be None or an int of 0 or more, not {total!r}")
        if not isinstance(message, str):
            raise ValueError(f"progress: message must be text, not {type(message).__name__}")
        request = self.request
        if request.called_directly or request.is_eager or not request.id:
            return
        report = (done, total, message[:200])
        if getattr(request, "_jobs_async_body", False):
            request._jobs_progress_pending = report  # the watcher writes it, off the loop
            return
        last = getattr(request, "_jobs_progress_written", None)
        now = time.monotonic()
        if last is not None and now - last < settings.JOBS_PROGRESS_SECONDS:
            request._jobs_progress_pending = report
            return
        self._write_progress(report)

    def _write_progress(self, report) -> None:
        request = self.request
        request._jobs_progress_written, request._jobs_progress_pending = time.monotonic(), None
        run = getattr(request, "_jobs_run", None)
        if run is None:
            return
        try:
            ledger.record_progress(run.job.id, run.job.attempts, *report)
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("job=%s task=%s progress not recorded (%s)", run.job.id, self.name, exc)

    def _flush_progress(self) -> None:
        report = getattr(self.request, "_jobs_progress_pending", None)
        if report is not None:
            self._write_progress(report)

    # -- cancellation ---------------------------------------------------------------

    def cancel_requested(self) -> bool:
        """Whether someone asked this job to stop (`jobs.cancel`), for a body to check
        between steps; read from the ledger at most every JOBS_CANCEL_CHECK_SECONDS.
        False outside a worker's run."""
        request = self.request
        if request.called_directly or request.is_eager or not request.id:
            return False
        seen = getattr(request, "_jobs_cancel_seen", None)
        if getattr(request, "_jobs_async_body", False):
            return bool(seen and seen[1])  # what the watcher last read, off the loop
        now = time.monotonic()
        if seen is not None and (seen[1] or now - seen[0] < settings.JOBS_CANCEL_CHECK_SECONDS):
            return seen[1]
        asked = ledger.stop_requested(request.id)
        request._jobs_cancel_seen = (now, asked)
        return asked

    def checkpoint(self) -> None:
        """Raises JobCancelled if someone asked this job to stop; see `jobs.checkpoint`."""
        if self.cancel_requested():
            raise JobCancelled(f"job {self.request.id} was cancelled")

    # -- before the run -----------------------------------------------------------

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

    def _row_of_unknown(self, args, kwargs) -> dict:
        """The ledger row of a message the ledger never saw (from beat or `.delay()`)."""
        delivery = self.request.delivery_info or {}
        return {
            "task_name": self.name,
            "args": args,
            "kwargs": kwargs,
            "queue": delivery.get("routing_key") or self.queue,
            "priority": delivery.get("priority") or self.priority_class.value,
        }

    # -- hooks --------------------------------------------------------------------

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

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Celery's hook. The worker's main process calls it when a run passes its hard
        time limit and its pool process is killed: the job ends `dead` with that reason
        (the copy Celery then requeues finds it dead and runs nothing)."""
        if not isinstance(exc, TimeLimitExceeded):
            return
        error = TimeLimitExceeded(f"hard time limit ({exc.args[0] if exc.args else '?'}s) exceeded")
        try:
            close_old_connections()  # the main process writes rarely: its connection may be stale
            job = ledger.end_outside_a_run(task_id, error, only_from=[JobState.STARTED])
        except Exception:  # noqa: BLE001 - the event loop goes on; the lease rules end it later
            logger.exception(
                "job=%s task=%s could not be marked dead after its hard time limit", task_id, self.name
            )
            return
        if job is not None:
            logger.error(
                "job=%s task=%s state=dead reason=hard time limit exceeded error=%s", task_id, self.name,
                describe(error),
            )  # fmt: skip
            self._call_on_dead(job, describe(error))

    def on_dead(self, job: Job, error: str) -> None:
        """Hook for a task class: runs once the job is marked dead, whichever way it
        died: its body failed, it was poison, an error outside its body, or RabbitMQ
        dead-lettered its message (then in the dead-letter keeper, see
        `ended_dead`)."""

    def on_expired(self, job: Job) -> None:
        """Hook for a task class: runs once a job of it reached its deadline to start
        (`expires`) unstarted and ended `cancelled` without running."""

    def _call_on_dead(self, job: Job, error: str) -> None:
        self._call_hook(self.on_dead, job, error)

    def _call_hook(self, hook, job: Job, *args) -> None:
        try:
            hook(job, *args)
        except Exception:  # noqa: BLE001 - a hook must not change how the job ends
            logger.exception("job=%s task=%s %s hook failed", job.id, self.name, hook.__name__)

    def _log(self, job_id, message: str, started: float | None = None, attempt: int | None = None,
             level: int = logging.INFO):  # fmt: skip
        if not logger.isEnabledFor(level):
            return
        parts = [f"job={job_id}", f"task={self.name}"]
        if attempt is not None:
            parts.append(f"attempt={attempt}")
        if started is not None:
            parts.append(f"duration_ms={(time.monotonic() - started) * 1000:.1f}")
        logger.log(level, "%s %s", " ".join(parts), message)


def _wait_for_the_ledger(longest: float) -> None:
    """Returns once PostgreSQL answers on a new connection, or after `longest` seconds."""
    deadline = time.monotonic() + longest
    pause = 0.5
    while True:
        connection.close()
        ledger.close_ledger_session()
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
