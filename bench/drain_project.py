"""bench/drain.py's bare Celery at the project's settings: a counted no-op on the
project's own Celery app (plain `celery.Task`: no ledger, no lease), and the ready mark
of the worker, which imports this module (`-I`)."""

from celery import Task, signals

from bench import counter
from project.celery import app


@app.task(name="bench.bare_counted", base=Task)
def bare_counted() -> None:
    """Plain Celery on the project's app and settings; counts itself done."""
    counter.bump()


@signals.worker_ready.connect(dispatch_uid="bench.drain_project.ready")
def _ready(**_) -> None:
    # Sent once the pool's processes are up and the consumer has started.
    counter.ready()
