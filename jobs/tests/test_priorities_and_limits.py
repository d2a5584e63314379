"""Priorities within a queue, and the soft time limit, with a real worker."""

import datetime

import pytest

from jobs import enqueue
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_urgent_jobs_overtake_queued_bulk_jobs(own_worker, tmp_path, reliability):
    path = str(tmp_path / "order")
    bulk = [enqueue(tasks.record, path, f"bulk-{n}", priority="bulk") for n in range(200)]
    urgent = [enqueue(tasks.record, path, f"urgent-{n}", priority="urgent") for n in range(5)]
    assert {job.priority for job in bulk} == {1} and {job.priority for job in urgent} == {9}

    own_worker.concurrency = 1
    own_worker.start()
    ids = [job.id for job in bulk + urgent]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == len(ids),
        timeout=120,
        interval=0.5,
        message="all 205 jobs",
    )

    order = tasks.lines(path)
    twentieth_bulk = [n for n, value in enumerate(order) if value.startswith("bulk-")][19]
    urgent_positions = [n for n, value in enumerate(order) if value.startswith("urgent-")]
    assert len(urgent_positions) == 5
    assert max(urgent_positions) < twentieth_bulk, (
        f"urgent at {urgent_positions}, 20th bulk at {twentieth_bulk}"
    )
    reliability.record(
        "P1", "Urgent jobs overtake a queued bulk backlog",
        "200 bulk jobs, then 5 urgent ones, enqueued with no worker; then one worker of one process",
        f"the 5 urgent jobs ran at positions {', '.join(str(n + 1) for n in urgent_positions)} of 205; "
        f"the 20th bulk job at {twentieth_bulk + 1}",
        "test_urgent_jobs_overtake_queued_bulk_jobs",
    )  # fmt: skip


def test_a_job_hanging_past_its_soft_time_limit_ends_dead_not_requeued(worker, tmp_path, dead_letters):
    path = str(tmp_path / "out")
    job = enqueue(tasks.hang, path)

    job = wait_for(
        lambda: Job.objects.filter(pk=job.id, state=JobState.DEAD).first(), timeout=30, message="dead"
    )

    assert "SoftTimeLimitExceeded" in job.last_error
    assert job.attempts == 1
    assert tasks.lines(path) == ["start"]
    assert dead_letters.find(job.id)
    healthy = enqueue(tasks.record, str(tmp_path / "healthy"))
    wait_for(lambda: Job.objects.filter(pk=healthy.id, state=JobState.SUCCEEDED).exists(), message="next job")


def test_priority_class_defaults_come_from_the_task_and_enqueue_overrides_them(tmp_path):
    from jobs.topology import PriorityClass

    later = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    default = enqueue(tasks.record, str(tmp_path / "a"), run_after=later)
    urgent = enqueue(tasks.record, str(tmp_path / "a"), priority=PriorityClass.URGENT, run_after=later)
    assert default.priority == PriorityClass.NORMAL
    assert urgent.priority == PriorityClass.URGENT
