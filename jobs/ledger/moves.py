"""Moves of a job between states, and the notes the ledger keeps beside them.

Every move is a conditional UPDATE, checked against the table of allowed moves
(jobs.ledger.states), so two processes racing to move one job cannot both win.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable

from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from jobs.ledger.lease import _fetchall_on_the_session
from jobs.ledger.states import check_sources
from jobs.models import Event, Job, JobState


def transition(
    job_ids: uuid.UUID | str | Iterable[uuid.UUID | str],
    target: JobState,
    *,
    only_from: Iterable[JobState] | None = None,
    where: dict | None = None,
    **fields,
) -> int:
    """Moves the given jobs to `target` where the move is allowed; returns how many moved.

    `only_from` narrows the allowed sources further (for example, cancel only what
    has not started); `where` adds conditions (for example, the attempt a worker
    runs, so a run that lost its lease cannot overwrite a newer one). Extra `fields`
    are written in the same UPDATE (F() allowed).
    """
    sources = check_sources(target, only_from)
    if isinstance(job_ids, (str, uuid.UUID)):
        job_ids = [job_ids]
    job_ids = list(job_ids)
    if len(job_ids) == 1:
        rows = Job.objects.filter(pk=job_ids[0], state__in=sources, **(where or {}))
    else:
        # One array parameter, not thousands of placeholders, for a batch.
        rows = Job.objects.filter(state__in=sources, **(where or {})).extra(
            where=[f"{Job._meta.db_table}.id = ANY(%s::uuid[])"], params=[[str(i) for i in job_ids]]
        )
    return rows.update(state=target, **fields)


# The relay LISTENs here: a write that makes a job due soon NOTIFYs it, so a short
# backoff does not wait for the relay's next pass.
DUE_CHANNEL = "jobs_due"


def notify_due() -> None:
    """Wakes the relay (jobs.relay) to look at what is due; delivered at commit."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [DUE_CHANNEL])


def defer(job_id: uuid.UUID | str, due: datetime.datetime) -> int:
    """Puts a job that has not started back in the ledger until `due`; the relay publishes
    it then. A waiting job reads `pending` again (a retry stays `retrying`); 0 if it moved
    on meanwhile (started by another copy, finished, cancelled)."""
    waiting = [JobState.PENDING, JobState.QUEUED, JobState.RETRYING]
    moved = Job.objects.filter(pk=job_id, state__in=waiting).update(
        state=Case(
            When(state=JobState.RETRYING, then=Value(JobState.RETRYING)), default=Value(JobState.PENDING)
        ),
        # Never sooner than a retry's own backoff end.
        run_after=Case(
            When(state=JobState.RETRYING, run_after__gt=due, then=F("run_after")), default=Value(due)
        ),
    )
    if moved:
        notify_due()
    return moved


def recheck_lease_later(job_id: uuid.UUID | str, seconds: float) -> int:
    """Asks the relay to look again in `seconds` whether a run still holds this started
    job's lease, and to publish it again if none does (jobs.relay.recheck_leases)."""
    return recheck_leases_at([job_id], timezone.now() + datetime.timedelta(seconds=seconds))


def end_lease_rechecks(job_ids: Iterable[uuid.UUID | str]) -> int:
    """The relay looked at these jobs' leases for the last time (jobs.relay.recheck_leases)."""
    return Job.objects.filter(pk__in=list(job_ids)).update(delayed_until=None)


def recheck_leases_at(job_ids: Iterable[uuid.UUID | str], when: datetime.datetime) -> int:
    """The relay looks at these started jobs' leases again at `when`."""
    return Job.objects.filter(pk__in=list(job_ids), state=JobState.STARTED).update(delayed_until=when)


def mark_rescued(job_ids: Iterable[uuid.UUID | str]) -> int:
    """These jobs were sent again because their messages looked lost (jobs.rescue)."""
    return Job.objects.filter(pk__in=list(job_ids)).update(rescued_at=timezone.now())


def count_lost_run(job_id: uuid.UUID | str, attempts: int, lost_runs: int) -> int:
    """A run of this started job (at `attempts`) died with its worker: `lost_runs` now.
    0 if it moved meanwhile (finished by the run thought lost)."""
    return Job.objects.filter(pk=job_id, state=JobState.STARTED, attempts=attempts).update(
        lost_runs=lost_runs
    )


def retry_dead(job_id) -> int:
    """A new attempt of a dead job (or of each of a list): `pending` again, its retry
    counts reset; returns how many."""
    return transition(
        job_id, JobState.PENDING, only_from=[JobState.DEAD], lost_runs=0, retries=0, run_after=None,
        finished_at=None, cancel_requested_at=None, cancel_requested_by="", progress_done=None,
        progress_total=None, progress_message="", progress_at=None,
    )  # fmt: skip


def queued_back_to_pending(job_ids: Iterable[uuid.UUID | str]) -> list:
    """Moves those of `job_ids` that are `queued` back to `pending`, for their messages to
    be published again; returns their ids. Rows are locked first, in the caller's
    transaction, so a worker starting one meanwhile waits and then sees it pending."""
    ids = [str(job_id) for job_id in job_ids]
    with transaction.atomic():
        queued = list(
            Job.objects.select_for_update()
            .filter(pk__in=ids, state=JobState.QUEUED)
            .values_list("pk", flat=True)
        )
        if queued:
            transition(queued, JobState.PENDING, only_from=[JobState.QUEUED])
    return queued


def cancel(job_id, by: str = "") -> int:
    """Cancels a job (or each of a list of jobs) that has not started (pending, queued
    or waiting to retry); returns how many."""
    now = timezone.now()
    return transition(
        job_id,
        JobState.CANCELLED,
        only_from=[JobState.PENDING, JobState.QUEUED, JobState.RETRYING],
        finished_at=now,
        cancel_requested_at=now,
        cancel_requested_by=by[:150],
    )


def request_stop(job_id: uuid.UUID | str, by: str = "") -> int:
    """Asks a running job to stop: its body sees it at its next checkpoint, and the
    worker stops it after JOBS_CANCEL_GRACE_SECONDS. 0 if it is not running, or was
    asked already."""
    return Job.objects.filter(pk=job_id, state=JobState.STARTED, cancel_requested_at__isnull=True).update(
        cancel_requested_at=timezone.now(), cancel_requested_by=by[:150]
    )


def record_progress(
    job_id: uuid.UUID | str, attempts: int, done: int, total: int | None, message: str
) -> int:
    """Writes a running job's progress (its run's own attempt only), on the ledger
    session; committed without waiting for the disk (a progress lost with a crash of
    PostgreSQL is written again by the next report)."""
    rows = _fetchall_on_the_session(
        f"WITH mode AS (SELECT set_config('synchronous_commit', 'off', true)) "
        f"UPDATE {Job._meta.db_table} SET progress_done = %(done)s, progress_total = %(total)s, "
        f"progress_message = %(message)s, progress_at = %(now)s "
        f"WHERE id = %(id)s AND state = %(started)s AND attempts = %(attempts)s AND (SELECT true FROM mode) "
        f"RETURNING 1",
        {"id": str(job_id), "attempts": attempts, "done": done, "total": total, "message": message,
         "now": timezone.now(), "started": JobState.STARTED.value},
    )  # fmt: skip
    return len(rows)


def stop_requested(job_id: uuid.UUID | str) -> bool:
    """Whether someone asked the job to stop (a read, on the ledger session)."""
    rows = _fetchall_on_the_session(
        f"SELECT cancel_requested_at IS NOT NULL FROM {Job._meta.db_table} WHERE id = %(id)s",
        {"id": str(job_id)},
    )
    return bool(rows and rows[0][0])


def mark_dead(job_id: uuid.UUID | str, only_from: Iterable[JobState] | None = None, **fields) -> int:
    """Ends a job `dead` from wherever it is (or only `only_from`), with `fields` (its error)."""
    return transition(job_id, JobState.DEAD, only_from=only_from, **fields)


def link_to_event(job_ids: Iterable[uuid.UUID | str], event: Event) -> int:
    """These jobs are the subscriber jobs of `event`."""
    return Job.objects.filter(pk__in=list(job_ids)).update(event=event)
