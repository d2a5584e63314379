"""Jobs used by the benchmarks (bench/run.py, bench/drain.py): the same no-op, bare
and on the platform, and a measuring device (noop_start_only)."""

from celery import Task

from jobs import ledger
from jobs.base import JobTask
from project.celery import app


@app.task(name="bench.bare_noop", base=Task)
def bare_noop() -> None:
    """Plain Celery: no ledger, no lease, no outbox."""


@app.task(name="bench.noop")
def noop() -> None:
    """The platform's base class (jobs.base.JobTask), doing nothing."""


@app.task(name="bench.noop_cache", queue="cache")
def noop_cache() -> None:
    """The platform's no-op on the cache queue (a throughput queue where bench/drain.py makes it one)."""


class _StartOnly(JobTask):
    """A measuring device, not a job class: the platform's start (its lease and
    `started` in one round trip) without the success write after the body.

    It leaves its jobs `started` and their leases held until its ledger session is
    closed, every 500 jobs (a session's locks take room in PostgreSQL's lock table),
    which no real job may do: it bounds what a platform could drain if its success
    cost nothing (bench/drain.py --systems platform-start-only).
    """

    _runs = 0

    def _run(self, run, args, kwargs, successes=None):
        result = self.run(*args, **kwargs)
        run.lease.held = False  # no unlock round trip either
        type(self)._runs += 1
        if self._runs % 500 == 0:
            ledger.close_ledger_session()
        return result


@app.task(name="bench.noop_start_only", base=_StartOnly)
def noop_start_only() -> None:
    """A no-op whose success is never written (see _StartOnly)."""
