"""No copy of a job's message waits inside a worker: retries, rate-limit delays and
busy leases wait in the ledger, and the relay publishes the job when it is due.

On RabbitMQ 4, kombu's per-consumer prefetch means a worker that holds countdown
messages takes no more work; these tests hold on every broker the suite runs on.
"""

import datetime
import time

import pytest
from django.utils import timezone

from jobs import enqueue, ledger
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_jobs_behind_four_retries_in_a_20s_backoff_all_finish_within_2s(worker, tmp_path):
    retrying = [enqueue(tasks.retry_in_20s, str(tmp_path / f"retry-{n}")) for n in range(4)]
    wait_for(
        lambda: Job.objects.filter(pk__in=[j.id for j in retrying], state=JobState.RETRYING).count() == 4,
        timeout=30,
        message="four jobs in their 20 s backoff",
    )
    first_runs = {j.id: Job.objects.get(pk=j.id).finished_at for j in retrying}

    began = time.monotonic()
    quick = [enqueue(tasks.record, str(tmp_path / f"quick-{n}")) for n in range(10)]
    wait_for(
        lambda: Job.objects.filter(pk__in=[j.id for j in quick], state=JobState.SUCCEEDED).count() == 10,
        timeout=20,
        interval=0.02,
        message="the ten quick jobs",
    )
    took = time.monotonic() - began
    assert took < 2.0, f"ten quick jobs took {took:.1f}s behind four waiting retries"

    ids = [j.id for j in retrying]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == 4,
        timeout=60,
        interval=0.2,
        message="the four retries",
    )
    for n, job in enumerate(retrying):
        row = Job.objects.get(pk=job.id)
        assert row.attempts == 2
        assert row.started_at >= first_runs[job.id] + datetime.timedelta(seconds=20), "not before it was due"
        assert tasks.lines(str(tmp_path / f"retry-{n}")) == ["fail", "ok"], "one run an attempt"
    for n in range(10):
        assert tasks.lines(str(tmp_path / f"quick-{n}")) == ["ran"]


def test_a_deferral_is_kept_by_the_ledger_not_undone_by_a_late_publish_mark(no_relay):
    """A worker may defer a job (a rate limit) before its publisher marks it queued, and
    the mark may come after that deferral's short wait is over: it must not move the
    job to `queued`, or it would wait there with no message. (No relay runs: it would
    publish the job once due.)"""
    job = Job.objects.create(task_name="tests.record", queue="default", priority=5)
    published_since = timezone.now()  # the publish begins, and its copy reaches a worker
    ledger.defer(job.id, timezone.now() + datetime.timedelta(seconds=0.05))
    time.sleep(0.1)  # the deferral is due by the time the confirm comes in
    assert ledger.mark_queued([job.id], job.attempts, published_since) == 0
    job.refresh_from_db()
    assert job.state == JobState.PENDING and job.run_after is not None
    # A job the relay publishes was due before its publish began: that one is marked.
    assert ledger.mark_queued([job.id], job.attempts, timezone.now()) == 1


def test_a_deferral_never_brings_a_retry_forward():
    """A copy of a retrying job, over a rate limit, must not shorten the retry's backoff."""
    later = timezone.now() + datetime.timedelta(minutes=5)
    job = Job.objects.create(
        task_name="tests.record", queue="default", priority=5, state=JobState.RETRYING, run_after=later
    )
    ledger.defer(job.id, timezone.now() + datetime.timedelta(seconds=1))
    job.refresh_from_db()
    assert job.state == JobState.RETRYING and job.run_after == later


def test_a_redelivered_run_over_a_rate_limit_is_run_not_dropped(own_worker, tmp_path):
    """The copy RabbitMQ redelivers after a worker died mid-run finds the job `started`:
    it cannot wait in the ledger, so the rate limit must not acknowledge it away."""
    from jobs.broker.publisher import publish_jobs

    own_worker.env = {**own_worker.env, "JOBS_QUEUE_RATE_LIMITS": "default=1/h"}
    own_worker.start()
    first = enqueue(tasks.record, str(tmp_path / "first"))  # takes the hour's one start
    wait_for(lambda: Job.objects.get(pk=first.id).state == JobState.SUCCEEDED, message="the first job")
    path = str(tmp_path / "orphan")
    orphan = Job.objects.create(
        task_name="tests.record", args=[path], queue="default", priority=4, state=JobState.STARTED, attempts=1
    )  # as a run whose worker died left it: started, no lease held
    assert publish_jobs([orphan], force=True)

    done = wait_for(
        lambda: Job.objects.filter(pk=orphan.id, state=JobState.SUCCEEDED).first(), message="the orphan run"
    )
    assert done.lost_runs == 1 and tasks.lines(path) == ["ran"]
