"""Waiting for jobs to end, in tests that run real workers, and barriers that prove
a job's message never reached the worker."""

from __future__ import annotations

import collections

import pytest

from jobs.models import FINISHED_STATES, Job, JobState
from jobs.testing import wait_for

FINAL = [JobState.SUCCEEDED, JobState.DEAD]


def finished(job_id, timeout: float = 30.0) -> Job:
    """The job `job_id` once it is finished (succeeded, dead or cancelled); on a
    timeout, fails saying the state it was left in."""
    try:
        return wait_for(
            lambda: Job.objects.filter(pk=job_id, state__in=FINISHED_STATES).first(),
            timeout,
            interval=0.05,
            message=f"job {job_id} to finish",
        )
    except pytest.fail.Exception as exc:
        row = Job.objects.filter(pk=job_id).values("state", "attempts", "last_error").first()
        pytest.fail(f"{exc}; the ledger holds {row}")


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


def received(worker, job_id) -> int:
    """How many messages of `job_id` the worker has taken off RabbitMQ since it started:
    Celery logs each one as it receives it (`Task name[id] received`)."""
    return worker.log().count(f"[{job_id}] received")


def barrier(worker, path: str) -> Job:
    """Enqueues a sentinel job and waits until `worker` has run it.

    A queue hands out the messages of one priority in the order they were published,
    and the worker logs each message as it receives it. So once the sentinel (a job of
    the default queue and priority, like the test jobs it follows) has run, every such
    message published before it has been logged by `received`: one that is not there
    was never published, however slow the machine."""
    from jobs import enqueue
    from jobs.tests import tasks

    sentinel = finished(enqueue(tasks.record, path, "sentinel").id)
    assert sentinel.state == JobState.SUCCEEDED, sentinel.last_error
    wait_for(lambda: received(worker, sentinel.id), message="the worker's log of the sentinel")
    return sentinel
