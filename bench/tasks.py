"""Jobs used by the benchmarks (bench/run.py, bench/drain.py): the same no-op, bare
and on the platform, and a measuring device (noop_start_only)."""

from celery import Task

from jobs.base import JobTask
from project.celery import app


@app.task(name="bench.bare_noop", base=Task)
def bare_noop() -> None:
    """Plain Celery: no ledger, no lease, no outbox."""


@app.task(name="bench.noop")
def noop() -> None:
    """The platform's base class (jobs.base.JobTask), doing nothing."""


class _StartOnly(JobTask):
    """A measuring device, not a job class: the platform's start (its lease and
    `started` in one round trip) without the success write after the body.

    It leaves its jobs `started` and their leases held until the worker's database
    connection is recycled (CELERY_DB_REUSE_MAX), which no real job may do: it bounds
    what a platform could drain if its success cost nothing (bench/drain.py
    --systems platform-start-only).
    """

    def _run_and_record(self, job, args, kwargs, lease):
        result = self.run(*args, **kwargs)
        lease.held = False  # no unlock round trip either
        return result


@app.task(name="bench.noop_start_only", base=_StartOnly)
def noop_start_only() -> None:
    """A no-op whose success is never written (see _StartOnly)."""
