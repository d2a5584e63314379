"""Events fan-out, unique jobs and global rate limits, with real workers."""

import datetime
import threading

import pytest
from django.db import connection, transaction
from django.urls import reverse

import jobs
from jobs.models import Event, Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_each_subscriber_runs_as_its_own_job_and_a_failing_one_holds_back_no_other(
    worker, tmp_path, admin_client
):
    path = str(tmp_path / "out")
    with transaction.atomic():
        event = jobs.publish("tests.happened", {"path": path})

    subscriber_jobs = wait_for(
        lambda: [j for j in Job.objects.filter(event=event) if j.is_finished] if Job.objects.filter(
            event=event, state__in=["succeeded", "dead"]).count() == 2 else None,
        message="both subscriber jobs",
    )  # fmt: skip
    states = {job.task_name: job.state for job in subscriber_jobs}
    assert states == {"tests.subscriber_ok": JobState.SUCCEEDED, "tests.subscriber_broken": JobState.DEAD}
    assert tasks.lines(path) == [f"ok-{event.id}"]
    page = admin_client.get(reverse("admin:jobs_event_change", args=[event.id])).content.decode()
    assert "tests.subscriber_broken" in page and "this subscriber is broken" in page


def test_a_rolled_back_event_publishes_nothing(worker, tmp_path):
    with pytest.raises(RuntimeError), transaction.atomic():
        jobs.publish("tests.happened", {"path": str(tmp_path / "out")})
        raise RuntimeError("rolled back")
    assert not Event.objects.exists() and not Job.objects.exists()


def test_unique_job_returns_the_waiting_one_and_frees_the_key_once_finished(tmp_path):
    later = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    first = jobs.enqueue(tasks.record, str(tmp_path / "a"), unique_key="rebuild:7", run_after=later)
    second = jobs.enqueue(tasks.record, str(tmp_path / "a"), unique_key="rebuild:7", run_after=later)
    assert first.id == second.id

    Job.objects.filter(pk=first.id).update(state=JobState.SUCCEEDED)
    third = jobs.enqueue(tasks.record, str(tmp_path / "a"), unique_key="rebuild:7", run_after=later)
    assert third.id != first.id


def test_concurrent_unique_enqueues_create_one_job(tmp_path):
    later = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    ids, barrier = [], threading.Barrier(6)

    def enqueue_one():
        try:
            barrier.wait()
            with transaction.atomic():
                ids.append(
                    jobs.enqueue(tasks.record, str(tmp_path / "a"), unique_key="k", run_after=later).id
                )
        finally:
            connection.close()

    threads = [threading.Thread(target=enqueue_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 6 and len(set(ids)) == 1
    assert Job.objects.filter(unique_key="k").count() == 1


def test_global_rate_limit_holds_across_worker_processes_and_delays_instead_of_failing(worker, tmp_path):
    path = str(tmp_path / "out")
    job_ids = [jobs.enqueue(tasks.limited, path, n).id for n in range(12)]

    wait_for(
        lambda: Job.objects.filter(pk__in=job_ids, state=JobState.SUCCEEDED).count() == 12,
        timeout=30,
        message="all limited jobs",
    )
    with open(path) as fh:
        stamps = sorted(float(line.split()[1]) for line in fh)
    # 4 per one-second window across both worker processes: 12 jobs need three windows,
    # so the last starts at least one full second after the first.
    assert stamps[-1] - stamps[0] > 1.0
    per_second = {}
    for stamp in stamps:
        per_second[int(stamp)] = per_second.get(int(stamp), 0) + 1
    assert len(per_second) >= 3
    assert max(per_second.values()) <= 4 + 1  # a run may be stamped just across its window's edge
    assert not Job.objects.filter(pk__in=job_ids, attempts__gt=1).exists(), "delayed, never retried as failed"
    assert "over the 4/s limit" in worker.log()
    # Each delayed job waited in the ledger (run_after), its copy acknowledged, and the
    # relay published it when due: 12 jobs at 4 a second, with at most two windows
    # open at the first start, delay 4 at least.
    assert Job.objects.filter(pk__in=job_ids, run_after__isnull=False).count() >= 4
