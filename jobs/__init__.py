"""The job platform: ledger, transactional enqueue, relay, dead letters.

`jobs.enqueue(...)` is the front door; see jobs.services for what it promises. A
task body raises `jobs.TransientJobError` to ask for a retry, `jobs.PermanentJobError`
to end its job dead at once, and calls `jobs.checkpoint()` between steps so that
`jobs.cancel(job_id)` can stop it.
"""

__version__ = "0.2.0"

from jobs.errors import CancelRefused, JobCancelled, PermanentJobError, TransientJobError

__all__ = [
    "CancelRefused", "JobCancelled", "PermanentJobError", "TransientJobError", "cancel", "checkpoint", "enqueue",
    "enqueue_many", "publish", "subscribe",
]  # fmt: skip


def enqueue(task, *args, **kwargs):
    """Shortcut for jobs.services.enqueue (importable before Django's apps are ready)."""
    from jobs.services import enqueue as _enqueue

    return _enqueue(task, *args, **kwargs)


def enqueue_many(task, calls, **kwargs):
    """Shortcut for jobs.services.enqueue_many."""
    from jobs.services import enqueue_many as _enqueue_many

    return _enqueue_many(task, calls, **kwargs)


def publish(event_name: str, payload: dict | None = None):
    """Shortcut for jobs.events.publish."""
    from jobs.events import publish as _publish

    return _publish(event_name, payload)


def subscribe(event_name: str):
    """Shortcut for jobs.events.subscribe (a decorator for a task)."""
    from jobs.events import subscribe as _subscribe

    return _subscribe(event_name)


def cancel(job_id, by: str = "") -> str:
    """Shortcut for jobs.services.cancel: "cancelled" (it was waiting), "stopping" (it
    runs, and stops at its next checkpoint or after JOBS_CANCEL_GRACE_SECONDS), or
    CancelRefused (finished, unknown)."""
    from jobs.services import cancel as _cancel

    return _cancel(job_id, by)


def checkpoint() -> None:
    """In a job body: raises JobCancelled if someone asked this job to stop
    (`jobs.cancel`); the job then ends `cancelled`. Cheap enough to call between any
    two steps (the ledger is read at most every JOBS_CANCEL_CHECK_SECONDS). Does
    nothing outside a worker's run of a job."""
    from jobs.running import running_task

    task = running_task()
    if task is not None:
        task.checkpoint()
