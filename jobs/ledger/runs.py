"""A worker's run of a job, as the ledger sees it: admitted before the body, ended after.

`admit` takes the job's lease and starts the job, in one round trip when the job is
simply waiting; it decides every other case under the lease (another copy runs, the
job finished already, a retry's copy came early, the run before died with its
worker, a message the ledger never saw). `end_run` writes the run's outcome, only
if this run is still the job's running attempt, reconnecting if the database
dropped the connection, and writing a start lost with a crash of PostgreSQL again
first. The worker (jobs.base.JobTask) makes one call of each.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import DataError, InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone

from jobs.errors import JobExpired, describe
from jobs.ledger.lease import Lease, Leases
from jobs.ledger.moves import count_lost_run, defer, mark_dead, notify_due, recheck_lease_later, transition
from jobs.ledger.rows import record_foreign
from jobs.models import FINISHED_STATES, Job, JobState

logger = logging.getLogger("jobs")


@dataclasses.dataclass
class Run:
    """A run admitted: its job (as started) and the lease it holds."""

    job: Job
    lease: Lease
    worker: str


@dataclasses.dataclass(frozen=True)
class Skip:
    """This copy of the job's message is acknowledged without running; `reason` says why."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Expired(Skip):
    """The job was not started by its deadline (`expires`): it is `cancelled` now."""

    job: Job | None = None


@dataclasses.dataclass(frozen=True)
class Poison:
    """The job's worker died during too many of its runs: it is `dead` now."""

    job: Job
    error: str


def admit(lease: Lease, worker: str, if_unknown: Callable[[], dict]) -> Run | Skip | Poison:
    """Takes `lease` and starts its job, or says why this copy must not run.

    `if_unknown()` gives the row of a job the ledger has no row for (task_name, args,
    kwargs, queue, priority). The caller releases the lease, whatever the answer.
    """
    job_id = lease.job_id
    job = lease.take_and_start(worker)
    if not lease.held:
        # Another copy runs right now. Should that run die without a message left to
        # run it again, the relay's look at its lease sends a new one. Not started yet
        # (the other copy is deciding, or ending a run): the job waits in the ledger
        # a little, and the relay sends it then.
        busy = settings.JOBS_LEASE_BUSY_RETRY_SECONDS
        if not recheck_lease_later(job_id, busy):
            defer(job_id, timezone.now() + datetime.timedelta(seconds=busy))
        return Skip("lease busy; another copy is running, acknowledged")
    if job is not None:
        return Run(job, lease, worker)
    # The slow path, under the lease.
    job = record_foreign(job_id, **if_unknown())
    if job.state in FINISHED_STATES:
        return Skip(f"already {job.state}; acknowledged without running")
    now = timezone.now()
    if job.expires_at is not None and job.expires_at <= now and job.state != JobState.STARTED:
        ran = "it never ran" if not job.attempts else f"it ran {job.attempts} time(s) before, without success"
        error = JobExpired(f"Not started by its deadline ({job.expires_at.isoformat()}); {ran}.")
        if not transition(job_id, JobState.CANCELLED, only_from=[job.state], **error_fields(error)):
            return Skip("it moved meanwhile; acknowledged without running")
        job.state, job.last_error = JobState.CANCELLED, describe(error)
        logger.warning("job=%s task=%s expired: %s", job_id, job.task_name, describe(error))
        return Expired("expired before it started; acknowledged without running", job)
    wait = (job.run_after - timezone.now()).total_seconds() if job.run_after else 0.0
    if job.state == JobState.RETRYING and wait > 0:
        return Skip(f"a copy came {wait:.2f}s before the retry is due; the relay sends it then")
    if job.cancel_requested_at is not None:
        # Asked to stop, it did not end cancelled: its run was stopped by its worker
        # (JOBS_CANCEL_GRACE_SECONDS) or died, or it ended retrying meanwhile. It is
        # cancelled now, and never started again.
        if not transition(job_id, JobState.CANCELLED, only_from=[job.state], where={"attempts": job.attempts},
                          finished_at=now):  # fmt: skip
            return Skip("it moved meanwhile; acknowledged without running")
        logger.warning("job=%s task=%s cancelled: its run was stopped", job_id, job.task_name)
        return Skip("cancelled, as asked; acknowledged without running")
    if job.state == JobState.STARTED:
        lost = job.lost_runs + 1
        if lost >= settings.JOBS_MAX_LOST_RUNS:
            error = (
                f"Its worker died during {lost} runs (JOBS_MAX_LOST_RUNS is "
                f"{settings.JOBS_MAX_LOST_RUNS}); dead-lettered as poison."
            )
            mark_dead(job_id, lost_runs=lost, last_error=error, last_traceback="", finished_at=timezone.now())
            job.state, job.lost_runs, job.last_error = JobState.DEAD, lost, error
            return Poison(job, error)
        if not count_lost_run(job_id, job.attempts, lost):
            return Skip("it moved meanwhile; acknowledged without running")
        logger.warning(
            "job=%s task=%s previous run died with its worker; running again", job_id, job.task_name
        )
    started_at = timezone.now()
    moved = transition(
        job_id,
        JobState.STARTED,
        attempts=F("attempts") + 1,
        started_at=started_at,
        finished_at=None,
        worker=worker,
    )
    if not moved:
        return Skip("cancelled or finished meanwhile; acknowledged without running")
    # What the UPDATE just wrote, without reading the row again: under the lease
    # nothing else writes these fields.
    job.state, job.attempts, job.started_at = JobState.STARTED, job.attempts + 1, started_at
    return Run(job, lease, worker)


def end_run(run: Run, target: JobState, *, result=None, error: BaseException | None = None,
            countdown: float | None = None) -> int:  # fmt: skip
    """Writes how `run` ended: `succeeded` with `result`, `retrying` (due in `countdown`
    seconds, the retry counted), `dead` with `error`, or `cancelled` (it stopped when
    asked). Only if `run` is still the job's running attempt; returns 0 if a newer
    attempt owns the row."""
    job = run.job
    if target == JobState.CANCELLED:
        return _write_outcome(run, target, finished_at=timezone.now())
    if target == JobState.SUCCEEDED:
        result = storable(result)
        try:
            moved = run.lease.succeed_and_release(job, result)
        except DataError:
            # The result could not be stored; the job's success matters more.
            moved = run.lease.succeed_and_release(job, None)
        except (OperationalError, InterfaceError):
            # The ledger session died with the lease on it (the lease closed it, and
            # Django's connection): record the outcome on a new connection.
            moved = 0
        if moved:
            return moved
        return _write_outcome(run, target, result=result, finished_at=timezone.now())
    fields = error_fields(error)
    if target == JobState.RETRYING:
        # With its backoff's end as `run_after`: the relay publishes the retry then, and
        # no other copy of the job's message (a relay duplicate, a resend) starts the
        # next attempt before.
        due = None if countdown is None else timezone.now() + datetime.timedelta(seconds=countdown)
        fields.update(retries=job.retries + 1, run_after=due)
    moved = _write_outcome(run, target, **fields)
    if target == JobState.RETRYING:
        try:
            notify_due()
        except (OperationalError, InterfaceError):
            pass  # the relay's own pass finds the retry a little later
    return moved


def end_runs_succeeded(leases: Leases, successes: list[tuple[Run, object]]) -> None:
    """Writes the successes of a batch's runs (each with its result) in one commit, and
    gives back their leases (Leases.succeed_and_release). A run the batch statement
    could not write (a result jsonb refuses, a dropped connection, a row one attempt
    behind after a crash of PostgreSQL) is ended on its own, as `end_run` ends one."""
    stored = [(run, storable(result)) for run, result in successes]
    try:
        moved = leases.succeed_and_release([(run.job, result) for run, result in stored])
    except (DataError, OperationalError, InterfaceError):
        moved = set()  # nothing was written: each run on its own
    for run, result in stored:
        if str(run.job.id) not in moved:
            end_run(run, JobState.SUCCEEDED, result=result)


def end_stopped_run(job_id: uuid.UUID | str) -> int:
    """Ends `cancelled` a job asked to stop whose run its worker has just stopped (the
    pool process terminated: jobs.remote_control). 0 if it ended otherwise first."""
    return transition(
        job_id,
        JobState.CANCELLED,
        only_from=[JobState.STARTED],
        where={"cancel_requested_at__isnull": False},
        finished_at=timezone.now(),
    )


def end_outside_a_run(job_id: uuid.UUID | str, error: BaseException, only_from=None) -> Job | None:
    """Ends `dead` a job whose message fails outside its body (a soft time limit while
    waiting on a lock, a bug, a hard time limit): its message goes to the dead-letter
    queue or is dropped, and the ledger must say dead too. Returns the job if this
    moved it."""
    waiting_or_running = only_from or [JobState.PENDING, JobState.QUEUED, JobState.STARTED, JobState.RETRYING]
    if not mark_dead(job_id, only_from=waiting_or_running, **error_fields(error)):
        return None
    return Job.objects.filter(pk=job_id).first()


def _write_outcome(run: Run, target: JobState, **fields) -> int:
    """Ends `run` in the ledger, if it is still the running attempt.

    The start was committed asynchronously (Lease): if PostgreSQL itself crashed
    during the run, the row may read as still waiting, one attempt behind. Then the
    start is written again first, so the outcome of a run that did happen is not lost.
    """
    job = run.job
    this_attempt = {"only_from": [JobState.STARTED], "where": {"attempts": job.attempts}}
    moved = _reconnecting(job, target, **this_attempt, **fields)
    if moved:
        return moved
    restarted = _reconnecting(
        job,
        JobState.STARTED,
        only_from=[JobState.PENDING, JobState.QUEUED, JobState.RETRYING],
        where={"attempts": job.attempts - 1},
        attempts=job.attempts,
        started_at=job.started_at or timezone.now(),
        worker=run.worker,
    )
    if not restarted:
        return 0  # another attempt owns the row now: this run's outcome is stale
    logger.warning(
        "job=%s task=%s its start was lost with a database crash; written again", job.id, job.task_name
    )
    return _reconnecting(job, target, **this_attempt, **fields)


def _reconnecting(job: Job, target: JobState, **kwargs) -> int:
    """transition, retried on a fresh connection if the database dropped ours.

    The job's own work is done (or failed) at this point: losing its outcome to a
    killed connection would make it run again.
    """
    for attempt, pause in enumerate((0.2, 0.5, 1.0, 2.0, 4.0, None)):
        try:
            return transition(job.id, target, **kwargs)
        except (OperationalError, InterfaceError):
            if pause is None:
                raise
            logger.warning(
                "job=%s task=%s ledger write failed; reconnecting (%d)", job.id, job.task_name, attempt + 1
            )
            connection.close()
            time.sleep(pause)
    raise AssertionError("unreachable: the last pause is None")


def error_fields(exc: BaseException) -> dict:
    """What the ledger records of a run that ended in `exc`."""
    return {
        "last_error": describe(exc),
        "last_traceback": "".join(traceback.format_exception(exc))[-20000:],
        "last_error_class": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "finished_at": timezone.now(),
    }


def storable(value):
    """The value if PostgreSQL's jsonb can store it (no NaN/Infinity, no NUL), else None."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return None if "\\u0000" in text else value
