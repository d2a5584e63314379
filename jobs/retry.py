"""How a failed run ends: retried after a backoff, or dead. A task's policy is data.

A task declares `retry_policy=RetryPolicy(...)`, or Celery's own options
(`max_retries`, `retry_backoff`, `retry_backoff_max`, `retry_jitter`) and
`transient_errors`, from which JobTask makes its policy. The ledger counts the
retries (`Job.retries`), so a copy of the message sent again cannot start the count
from zero.
"""

from __future__ import annotations

import dataclasses
import random

from django.db import InterfaceError, OperationalError

from jobs.errors import PermanentJobError, TransientJobError


def backoff_seconds(retry_number: int, base: float, maximum: float, jitter: bool = True) -> float:
    """Exponential backoff (base * 2^n, capped at maximum), with "equal jitter".

    Half the delay is fixed and half random, so a burst of failures spreads out
    without a retry ever coming back at once.
    """
    delay = min(maximum, base * (2 ** max(retry_number, 0)))
    if not jitter:
        return delay
    return delay / 2 + random.uniform(0, delay / 2)


@dataclasses.dataclass(frozen=True)
class Retry:
    """Retry the job in `countdown` seconds."""

    countdown: float


@dataclasses.dataclass(frozen=True)
class Dead:
    """End the job `dead`; `reason` is what the log line says."""

    reason: str


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which errors are retried, how often, and how long each retry waits."""

    max_retries: int | None = 5
    backoff: float = 1.0
    backoff_max: float = 600.0
    jitter: bool = True
    transient_errors: tuple[type[BaseException], ...] = ()

    def __post_init__(self):
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {self.max_retries}")
        if self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("backoff and backoff_max must be 0 or more seconds")

    def is_transient(self, exc: BaseException) -> bool:
        # A lost database connection inside the body is transient for every job: the
        # next attempt reconnects.
        transient = (TransientJobError, OperationalError, InterfaceError, *self.transient_errors)
        return isinstance(exc, transient) and not isinstance(exc, PermanentJobError)

    def verdict(self, exc: BaseException, retries: int) -> Retry | Dead:
        """What a run that raised `exc`, after `retries` retries, comes to."""
        if not self.is_transient(exc):
            return Dead("permanent error")
        if not self.may_retry(retries):
            return Dead("retries exhausted")
        return Retry(backoff_seconds(retries, self.backoff, self.backoff_max, self.jitter))

    def may_retry(self, retries: int, limit: int | None = None) -> bool:
        """Whether a job retried `retries` times may retry again (under `limit`, if given)."""
        limit = self.max_retries if limit is None else limit
        return limit is None or retries < limit
