"""Unique jobs: one waiting job per unique_key, even under concurrent enqueues."""

import datetime
import threading

import pytest
from django.db import connection, transaction

import jobs
from jobs.models import Job, JobState
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


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
