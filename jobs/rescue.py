"""The rescue: jobs whose messages RabbitMQ no longer holds are sent again.

RabbitMQ keeps every job's message (durable queues, persistent messages, acks late),
but an operator can purge or delete a queue, and a broker can lose its disk. The jobs
of the lost messages would then wait for ever: `queued` with no message to run them,
`started` by a run that died with no message left to run it again, or `retrying` with
no copy coming. Nothing in RabbitMQ says which messages it still holds, so the rescue
goes by what it can see. A job is taken for lost when:

- it has been in that state for `JOBS_RESCUE_AFTER_SECONDS`: queued that long ago,
  started that long ago, or, retrying, due (`run_after`) that long ago;
- its queue holds no ready message: a copy still waiting there would run it, and a
  backlog would make every old job look lost;
- started, no run holds its lease: a long run still going keeps it.

Each such job gets a new copy of its message. A queued one goes back to `pending` and
is published (`services.resend_queued_jobs`), so its `queued_at`, and its clock here,
start again. A started or retrying one is published as it is, and the worker takes
the copy as it takes any: a run that died is counted (`JOBS_MAX_LOST_RUNS`), a retry
starts. A message that was not lost after all (one a worker holds for a rate limit's
delay, say) makes a second copy, which the worker runs once at most.

The relay runs a rescue pass every `JOBS_RESCUE_INTERVAL_SECONDS`; `manage.py
jobs_rescue` runs one by hand.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs import ledger, selectors, topology
from jobs.models import Job, JobState
from jobs.publisher import publish_jobs
from jobs.services import resend_queued_jobs

logger = logging.getLogger(__name__)

# The field that says how long a job has waited in each state the rescue looks at.
_CLOCKS = {JobState.QUEUED: "queued_at", JobState.STARTED: "started_at", JobState.RETRYING: "run_after"}


@dataclass
class Rescue:
    """What one pass found (`dry_run`) or sent: job ids by state, and queues skipped."""

    lost: dict[str, list] = field(default_factory=lambda: {state: [] for state in _CLOCKS})
    busy_queues: list[str] = field(default_factory=list)  # holding ready messages: not looked at
    broker_unreachable: bool = False

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.lost.values())

    def describe(self) -> str:
        counts = ", ".join(f"{len(self.lost[state])} {state}" for state in _CLOCKS)
        busy = ""
        if self.busy_queues:
            busy = f"; queues holding ready messages, not looked at: {', '.join(self.busy_queues)}"
        return f"{counts}{busy}"


def rescue_lost_jobs(
    after_seconds: float | None = None, *, dry_run: bool = False, batch_size: int = 500
) -> Rescue:
    """Finds the jobs whose messages look lost (see the module's text) and, unless
    `dry_run`, sends each a new copy; at most `batch_size` of each state a pass."""
    after = settings.JOBS_RESCUE_AFTER_SECONDS if after_seconds is None else after_seconds
    rescue = Rescue()
    depths = selectors.queue_depths()
    if depths is None:
        rescue.broker_unreachable = True
        return rescue
    quiet = sorted(name for name, ready in depths.items() if ready == 0)
    rescue.busy_queues = sorted(name for name in topology.WORKLOAD_QUEUES if depths.get(name))
    cutoff = timezone.now() - datetime.timedelta(seconds=after)
    for state, clock in _CLOCKS.items():
        old = Job.objects.filter(state=state, queue__in=quiet, **{f"{clock}__lte": cutoff})
        ids = list(old.order_by(clock).values_list("pk", flat=True)[:batch_size])
        if state == JobState.STARTED:
            ids = _without_a_live_run(ids)
        rescue.lost[state] = ids
    if dry_run or not rescue.total:
        return rescue
    resend_queued_jobs(rescue.lost[JobState.QUEUED])
    for state in (JobState.STARTED, JobState.RETRYING):
        if rescue.lost[state]:
            # Read again, in their state still: one may have moved since the look.
            jobs = list(Job.objects.filter(pk__in=rescue.lost[state], state=state))
            publish_jobs(jobs, force=True)
    logger.warning("rescue: sent again the jobs whose messages looked lost: %s", rescue.describe())
    return rescue


def _without_a_live_run(job_ids: list) -> list:
    """The jobs among `job_ids` whose lease no run holds: each lease is taken and given
    back at once (a worker's copy that meets it taken meanwhile looks again later)."""
    free = []
    with transaction.atomic(), connection.cursor() as cursor:
        for job_id in job_ids:
            key = ledger.lock_key(job_id)
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
            if cursor.fetchone()[0]:
                free.append(job_id)
    return free
