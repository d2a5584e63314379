"""The job whose body runs in this thread, if any: what `jobs.checkpoint()` checks.

Set by jobs.base.JobTask around each body, on the one-job path and in a throughput
batch alike; kept apart from jobs.base so that code which checkpoints (the PDF
renderer, say) can run outside a worker, without Django's apps, where it is a no-op.
"""

from __future__ import annotations

import threading

_local = threading.local()


def running_task():
    """The jobs.base.JobTask whose job body runs in this thread now, or None."""
    return getattr(_local, "task", None)


def set_running_task(task) -> None:
    _local.task = task
