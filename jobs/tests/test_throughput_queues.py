"""Throughput queues (jobs.throughput): a worker of the cache queue runs its jobs in
batches, claiming and recording them once a batch, with every promise a job run alone
has: each runs once, failures retry or die on their own, nothing acked before its outcome
is committed, a lost pool process loses no job."""

import collections
import os
import signal

import pytest

from jobs import enqueue
from jobs.broker.publisher import publish_jobs
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.testing.broker import wait_until_acknowledged
from jobs.testing.finishing import all_final
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = 8


@pytest.fixture
def cache_worker(own_worker):
    own_worker.env = {**own_worker.env, "JOBS_THROUGHPUT_QUEUES": f"cache={BATCH}"}
    own_worker.queues = ["cache"]
    return own_worker


def _all_acknowledged(rabbitmqctl) -> None:
    wait_until_acknowledged(rabbitmqctl, "cache")


def _enqueue(path: str, n: int, **kwargs) -> list[Job]:
    return [enqueue(tasks.cache_record, path, f"v{i}", **kwargs) for i in range(n)]


def test_jobs_run_in_batches_each_once_and_every_message_is_acknowledged(cache_worker, tmp_path, rabbitmqctl):
    path = str(tmp_path / "out")
    jobs = _enqueue(path, 40)  # waiting in RabbitMQ before the worker starts
    cache_worker.start()

    done = all_final([job.id for job in jobs], worker=cache_worker)

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert {job.attempts for job in done} == {1}
    assert sorted(tasks.lines(path)) == sorted(f"v{i}" for i in range(40))
    assert sorted(job.result for job in done) == sorted(f"v{i}" for i in range(40))
    # A batch starts its jobs in one statement, at one timestamp.
    batches = collections.Counter(job.started_at for job in done)
    assert max(batches.values()) > 1, batches
    assert max(batches.values()) <= BATCH
    assert "bounds their batches" not in cache_worker.log()
    _all_acknowledged(rabbitmqctl)


def test_a_failure_in_a_batch_retries_or_dies_on_its_own(cache_worker, tmp_path, dead_letters):
    path = str(tmp_path / "out")
    jobs = _enqueue(path, 6)
    transient = enqueue(tasks.cache_record, path, "t", fail="transient")
    permanent = enqueue(tasks.cache_record, path, "p", fail="permanent")
    cache_worker.start()

    done = {
        job.id: job for job in all_final([j.id for j in [*jobs, transient, permanent]], worker=cache_worker)
    }

    assert {done[job.id].state for job in jobs} == {JobState.SUCCEEDED}
    assert (done[transient.id].state, done[transient.id].attempts) == (JobState.SUCCEEDED, 2)
    assert (done[permanent.id].state, done[permanent.id].attempts) == (JobState.DEAD, 1)
    assert "p failed" in done[permanent.id].last_error
    assert dead_letters.find(permanent.id) is not None
    assert sorted(tasks.lines(path)) == sorted([*(f"v{i}" for i in range(6)), "t-failed", "t", "p-failed"])


def test_copies_of_a_job_in_one_batch_and_of_a_finished_job_run_nothing_again(
    cache_worker, tmp_path, rabbitmqctl
):
    path = str(tmp_path / "out")
    jobs = _enqueue(path, 4)
    publish_jobs([Job.objects.get(pk=jobs[0].id)], force=True)  # a second copy, likely in the same batch
    publish_jobs([Job.objects.get(pk=jobs[1].id)], force=True)
    cache_worker.start()
    all_final([job.id for job in jobs], worker=cache_worker)
    _all_acknowledged(rabbitmqctl)
    publish_jobs([Job.objects.get(pk=jobs[2].id)], force=True)  # a copy of a finished job
    wait_for(lambda: "already succeeded" in cache_worker.log(), message="the finished job's copy skipped")

    assert sorted(tasks.lines(path)) == ["v0", "v1", "v2", "v3"]
    assert {Job.objects.get(pk=job.id).attempts for job in jobs} == {1}
    _all_acknowledged(rabbitmqctl)


def test_a_pool_process_killed_mid_batch_loses_no_job(cache_worker, tmp_path, rabbitmqctl):
    path = str(tmp_path / "out")
    cache_worker.concurrency = 1
    jobs = [enqueue(tasks.cache_record, path, f"v{i}", sleep=0.3) for i in range(6)]
    cache_worker.start()
    wait_for(lambda: len(tasks.lines(path)) >= 2, message="the batch under way")
    for pid in cache_worker.pool_pids():
        os.kill(pid, signal.SIGKILL)  # mid-batch: its successes are not recorded yet

    done = all_final([job.id for job in jobs], worker=cache_worker)

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert set(tasks.lines(path)) == {f"v{i}" for i in range(6)}  # some ran twice: at least once each
    assert "was lost with its pool process; requeued" in cache_worker.log()
    _all_acknowledged(rabbitmqctl)
