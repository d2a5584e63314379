"""The ledger: one row per job in PostgreSQL, and every write of it.

No other module writes the Job table (jobs/tests/test_ledger_owns_job_writes.py
checks it). The verbs, by the step of a job's life they serve:

- enqueue: `record`, `record_many` (rows.py); `link_to_event` (moves.py)
- publish: `mark_queued`, `BackgroundMarks` (marks.py)
- run: `Lease`, `Leases` (lease.py), on `ledger_session` (session.py); `admit`, `end_run`,
  `end_runs_succeeded`, `end_stopped_run`, `end_outside_a_run` (runs.py)
- wait: `defer`, `recheck_lease_later`, `recheck_leases_at`, `end_lease_rechecks`,
  `notify_due` (moves.py)
- report: `record_progress` (moves.py)
- operate: `retry_dead`, `queued_back_to_pending`, `cancel`, `request_stop`, `stop_requested`,
  `mark_dead`,
  `mark_rescued`, `prune` (moves.py, rows.py)

Every move of `Job.state` is checked against one table (states.py). The flow of a
job through them is told in docs/architecture.md.
"""

from jobs.ledger.lease import Lease, Leases, held_lease_keys, lock_key, without_a_live_run
from jobs.ledger.marks import BackgroundMarks, mark_queued
from jobs.ledger.moves import (
    DUE_CHANNEL,
    cancel,
    count_lost_run,
    defer,
    end_lease_rechecks,
    link_to_event,
    mark_dead,
    mark_rescued,
    notify_due,
    queued_back_to_pending,
    recheck_lease_later,
    recheck_leases_at,
    record_progress,
    request_stop,
    retry_dead,
    stop_requested,
    transition,
)
from jobs.ledger.rows import job_factory, prune, record, record_foreign, record_many
from jobs.ledger.runs import (
    Expired,
    Poison,
    Run,
    Skip,
    admit,
    end_outside_a_run,
    end_run,
    end_runs_succeeded,
    end_stopped_run,
    error_fields,
    storable,
)
from jobs.ledger.session import close_ledger_session, ledger_session
from jobs.ledger.statements import Statement
from jobs.ledger.states import ALLOWED_TRANSITIONS, IllegalTransition, sources_of

__all__ = [
    "ALLOWED_TRANSITIONS", "DUE_CHANNEL", "BackgroundMarks", "Expired", "IllegalTransition", "Lease", "Leases", "Poison", "Run",
    "Skip", "Statement", "admit", "cancel", "close_ledger_session", "count_lost_run", "defer", "end_lease_rechecks",
    "end_outside_a_run", "end_run", "end_runs_succeeded", "end_stopped_run", "error_fields", "held_lease_keys", "job_factory", "link_to_event",
    "ledger_session", "lock_key", "mark_dead", "mark_queued", "mark_rescued", "notify_due", "prune", "queued_back_to_pending",
    "recheck_lease_later", "recheck_leases_at", "record", "record_foreign", "record_many", "record_progress", "request_stop",
    "retry_dead", "sources_of", "stop_requested", "storable", "transition", "without_a_live_run",
]  # fmt: skip
