"""The job platform: ledger, transactional enqueue, relay, dead letters.

`jobs.enqueue(...)` is the front door; see jobs.services for what it promises.
"""


def enqueue(task, *args, **kwargs):
    """Shortcut for jobs.services.enqueue (importable before Django's apps are ready)."""
    from jobs.services import enqueue as _enqueue

    return _enqueue(task, *args, **kwargs)
