"""`async def` job bodies (jobs.async_bodies) on a real worker: the same ledger, lease,
retries, time limits and cancellation as any job, with real I/O and Django's async ORM
awaited inside."""

import pytest

import jobs
from jobs import enqueue
from jobs.models import DeadLetter, Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import finished
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_async_body_awaits_io_and_the_orm_retries_once_and_succeeds(worker, smtp, tmp_path):
    path = str(tmp_path / "io")
    job = enqueue(tasks.async_io, path, 1)

    job = finished(job.id)
    assert job.state == JobState.SUCCEEDED, job.last_error
    assert job.attempts == 2 and job.retries == 1
    assert job.result == "220"  # the SMTP server's greeting, read over asyncio's streams
    assert tasks.lines(path) == ["220:attempt=1", "220:attempt=2"]  # the ORM read each attempt's row


def test_an_async_body_past_its_soft_time_limit_is_interrupted_and_ends_dead(worker, dead_letters, tmp_path):
    path = str(tmp_path / "slow")
    job = enqueue(tasks.async_wait, path, 30.0, soft_time_limit=1)

    job = finished(job.id, timeout=20)
    assert job.state == JobState.DEAD
    assert "soft time limit (1s) exceeded" in job.last_error
    assert (job.finished_at - job.started_at).total_seconds() < 5
    # The body's await was cancelled: its cleanup ran, and nothing after the await.
    assert tasks.lines(path) == ["started", "interrupted:CancelledError"]
    assert dead_letters.find(str(job.id)) is not None
    after = enqueue(tasks.record, str(tmp_path / "after"))
    assert finished(after.id).state == JobState.SUCCEEDED


def test_an_async_body_cancelled_while_it_awaits_stops_at_once_and_ends_cancelled(worker, tmp_path):
    path = str(tmp_path / "waiting")
    job = enqueue(tasks.async_wait, path, 30.0)
    # It runs, and its progress report (written by the watcher, off the loop) lands.
    wait_for(
        lambda: Job.objects.filter(pk=job.id, state=JobState.STARTED, progress_message="waiting").exists(),
        message="the async job to run and report progress",
    )
    pool = worker.pool_pids()

    assert jobs.cancel(job.id, by="operator") == "stopping"

    job = finished(job.id)
    assert job.state == JobState.CANCELLED and job.cancel_requested_by == "operator"
    assert (job.finished_at - job.cancel_requested_at).total_seconds() < 2
    assert (job.progress_done, job.progress_total) == (1, 2)
    assert tasks.lines(path) == ["started", "interrupted:CancelledError"]  # never "woke"
    assert job.attempts == 1 and not DeadLetter.objects.filter(job_id=job.id).exists()
    # Cancelled in its loop, not by killing its process: the pool is the same.
    assert worker.pool_pids() == pool
    after = enqueue(tasks.record, str(tmp_path / "after"))
    assert finished(after.id).state == JobState.SUCCEEDED
