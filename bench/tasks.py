"""Jobs used by the benchmark (bench/run.py): the same no-op, bare and on the platform."""

from celery import Task

from project.celery import app


@app.task(name="bench.bare_noop", base=Task)
def bare_noop() -> None:
    """Plain Celery: no ledger, no lease, no outbox."""


@app.task(name="bench.noop")
def noop() -> None:
    """The platform's base class (jobs.base.JobTask), doing nothing."""
