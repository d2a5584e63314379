"""Waiting for jobs to end, in tests that run real workers."""

from __future__ import annotations

import collections

import pytest

from jobs.models import Job, JobState
from jobs.testing import wait_for

FINAL = [JobState.SUCCEEDED, JobState.DEAD]


def all_final(ids, timeout: float = 120.0, worker=None):
    """The jobs of `ids`, once every one is final; on a timeout, fails saying where
    the others are (and what the worker said last, if given)."""
    try:
        wait_for(
            lambda: Job.objects.filter(pk__in=ids, state__in=FINAL).count() == len(ids),
            timeout=timeout,
            interval=0.25,
            message=f"{len(ids)} jobs to finish",
        )
    except pytest.fail.Exception as exc:
        try:
            jobs_ = Job.objects.filter(pk__in=ids)
            states = collections.Counter(jobs_.values_list("state", flat=True))
            waiting = list(
                jobs_.exclude(state__in=FINAL).values_list("id", "state", "attempts", "last_error")[:5]
            )
            seen = f"states {dict(states)}; for example {waiting}"
        except Exception as error:  # noqa: BLE001 - the timeout is the failure to report
            seen = f"the ledger could not be read: {error}"
        said = worker.log()[-3000:] if worker else ""
        pytest.fail(f"{exc}; {seen}\n{said}")
    return Job.objects.filter(pk__in=ids)
