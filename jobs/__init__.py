"""The job platform: ledger, transactional enqueue, relay, dead letters.

`jobs.enqueue(...)` is the front door; see jobs.services for what it promises. A
task body raises `jobs.TransientJobError` to ask for a retry, `jobs.PermanentJobError`
to end its job dead at once.
"""

from jobs.errors import PermanentJobError, TransientJobError

__all__ = ["PermanentJobError", "TransientJobError", "enqueue", "enqueue_many", "publish", "subscribe"]


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
