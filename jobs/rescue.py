"""The rescue: jobs whose messages RabbitMQ no longer holds are sent again.

RabbitMQ keeps every job's message (durable queues, persistent messages, acks late),
but an operator can purge or delete a queue, and a broker can lose its disk. The jobs
of the lost messages would then wait for ever: `queued` with no message to run them,
`started` by a run that died with no message left to run it again, or `retrying` with
no copy coming. Nothing in RabbitMQ says which messages it still holds, so the rescue
goes by what it can see. A job is taken for lost when:

- it has waited `JOBS_RESCUE_AFTER_SECONDS` in its state: queued that long ago (and
  due that long ago, and not looked at by the relay since), started that long ago,
  or, retrying, due that long ago (a retry the relay has not published: the relay is
  down, say);
- its queue holds no ready message: a copy still waiting there would run it, and a
  backlog would make every old job look lost;
- started, no run holds its lease: a long run still going keeps it;
- it was not rescued in the last `JOBS_RESCUE_AFTER_SECONDS` (`Job.rescued_at`).

Each such job is published again as it is, and the worker takes the copy as it takes
any: a queued job runs, a run that died is counted (`JOBS_MAX_LOST_RUNS`), a retry
starts. A message that was not lost after all (one a stuck worker holds, say) becomes
a second copy, which the worker runs once at most; `rescued_at` keeps that to one
copy per job per `JOBS_RESCUE_AFTER_SECONDS`.

The relay runs a rescue pass every `JOBS_RESCUE_INTERVAL_SECONDS`; `manage.py
jobs_rescue` runs one by hand.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Case, F, Q, When
from django.db.models.functions import Greatest
from django.utils import timezone

from jobs import ledger, selectors, topology
from jobs.broker.publisher import publish_jobs
from jobs.models import Job, JobState

logger = logging.getLogger(__name__)

# Since when a job has waited, in each state the rescue looks at: the latest of its
# times that apply (PostgreSQL's GREATEST skips NULLs). `run_after` is a retry's
# backoff end (or, for a queued job, a deferral already past); `delayed_until` the
# relay's next look at a busy lease.
_WAITING_SINCE = {
    JobState.QUEUED: Greatest("queued_at", "run_after", "delayed_until"),
    JobState.STARTED: F("started_at"),
    JobState.RETRYING: Greatest("run_after", "finished_at", "delayed_until"),
}


@dataclass
class Rescue:
    """What one pass found (`dry_run`) or sent: job ids by state, and queues skipped."""

    lost: dict[str, list] = field(default_factory=lambda: {state: [] for state in _WAITING_SINCE})
    busy_queues: list[str] = field(default_factory=list)  # holding ready messages: not looked at
    missing_queues: list[str] = field(default_factory=list)  # not in RabbitMQ: declare them first
    broker_unreachable: bool = False

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.lost.values())

    def describe(self) -> str:
        parts = [", ".join(f"{len(self.lost[state])} {state}" for state in _WAITING_SINCE)]
        if self.busy_queues:
            parts.append(f"queues holding ready messages, not looked at: {', '.join(self.busy_queues)}")
        if self.missing_queues:
            parts.append(
                f"queues missing in RabbitMQ (manage.py jobs_topology): {', '.join(self.missing_queues)}"
            )
        return "; ".join(parts)


def rescue_lost_jobs(
    after_seconds: float | None = None, *, dry_run: bool = False, batch_size: int = 500
) -> Rescue:
    """Finds the jobs whose messages look lost (see the module's text) and, unless
    `dry_run`, publishes each again; at most `batch_size`, the longest waiting, a pass. With
    `dry_run`, `lost` lists what would be sent; otherwise what RabbitMQ confirmed."""
    after = settings.JOBS_RESCUE_AFTER_SECONDS if after_seconds is None else after_seconds
    rescue = Rescue()
    depths = selectors.queue_depths()
    if depths is None:
        rescue.broker_unreachable = True
        return rescue
    quiet = [name for name in topology.WORKLOAD_QUEUES if depths[name] == 0]
    rescue.busy_queues = [name for name in topology.WORKLOAD_QUEUES if depths[name]]
    rescue.missing_queues = [name for name in topology.WORKLOAD_QUEUES if depths[name] is None]
    cutoff = timezone.now() - datetime.timedelta(seconds=after)
    not_rescued_lately = Q(rescued_at__isnull=True) | Q(rescued_at__lte=cutoff)
    # One scan of the ledger a pass (no index serves it: one on jobs in flight would be
    # written by every job's enqueue and start, for a pass a minute).
    waiting_since = Case(*(When(state=state, then=since) for state, since in _WAITING_SINCE.items()))
    old = (
        Job.objects.filter(not_rescued_lately, state__in=list(_WAITING_SINCE), queue__in=quiet)
        .alias(waiting_since=waiting_since)
        .filter(waiting_since__lte=cutoff)
        .order_by("waiting_since")[:batch_size]
    )
    found: dict[str, list[Job]] = {state: [] for state in _WAITING_SINCE}
    for job in old:
        found[job.state].append(job)
    found[JobState.STARTED] = ledger.without_a_live_run(found[JobState.STARTED])
    if dry_run:
        rescue.lost = {state: [job.id for job in jobs] for state, jobs in found.items()}
        return rescue
    sent = publish_jobs([job for jobs in found.values() for job in jobs], force=True)
    if sent:
        ledger.mark_rescued(job.id for job in sent)
    for job in sent:
        rescue.lost[job.state].append(job.id)
    if rescue.total or rescue.missing_queues:
        logger.warning("rescue: sent again the jobs whose messages looked lost: %s", rescue.describe())
    return rescue


def stop_ignored_cancels(batch_size: int = 100) -> int:
    """Asks the workers again to stop the running jobs that were asked to stop more than
    twice JOBS_CANCEL_GRACE_SECONDS ago and whose run still holds its lease: a worker
    disconnected when `jobs.cancel` broadcast `jobs_stop` never stopped its run. This
    time the workers stop it at once. Returns how many it asked about."""
    cutoff = timezone.now() - datetime.timedelta(seconds=2 * settings.JOBS_CANCEL_GRACE_SECONDS)
    asked = list(
        Job.objects.filter(state=JobState.STARTED, cancel_requested_at__lte=cutoff)
        .order_by("cancel_requested_at")
        .only("id", "task_name")[:batch_size]
    )
    held = ledger.held_lease_keys() if asked else set()
    running = [job for job in asked if ledger.lock_key(job.id) in held]
    if running:
        from jobs.services import ask_workers_to_stop

        for job in running:
            ask_workers_to_stop(str(job.id), grace=0.0)
        logger.warning("asked the workers again to stop %d job(s) that ignored a cancel", len(running))
    return len(running)
