"""The errors a job body raises to say how its job ends, and how an error is described."""

from __future__ import annotations


class TransientJobError(Exception):
    """Raise from a task body to ask for a retry with backoff, whatever the task declares."""


class PermanentJobError(Exception):
    """Raise from a task body to end the job `dead` at once, with this message as its error."""


class JobCancelled(Exception):
    """Raised by `jobs.checkpoint()` in a job someone asked to cancel: the job ends
    `cancelled`, with no retry and no dead letter. A body may catch it to clean up,
    and should raise it again."""


class JobExpired(Exception):
    """Recorded as the error of a job that was not started by its deadline (`expires`):
    it ends `cancelled` without running."""


class CancelRefused(ValueError):
    """`jobs.cancel` of a job that cannot be cancelled (finished, or unknown); the
    message says why."""


def describe(exc: BaseException) -> str:
    """`Class: message`, as the ledger and the logs show an error."""
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
