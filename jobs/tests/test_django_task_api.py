"""Django's own task API (django_tasks / django.tasks) on the platform, with a real worker."""

import datetime

import pytest
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from jobs.cache import namespaced_key
from jobs.django_tasks import (
    InvalidTaskError,
    LedgerBackend,
    TaskResultDoesNotExist,
    TaskResultStatus,
    default_task_backend,
    priority_class,
    task_backends,
)
from jobs.models import Job, JobState
from jobs.relay import relay_pending_jobs
from jobs.testing import wait_for
from jobs.testing.finishing import finished as finished_job
from jobs.tests import dj_tasks
from jobs.topology import PriorityClass

pytestmark = pytest.mark.django_db(transaction=True)


def finished(result, timeout=30.0):
    """The task result, refreshed once its job is finished in the ledger."""
    finished_job(result.id, timeout)
    result.refresh()
    return result


def test_the_configured_backend_is_the_platform():
    backend = task_backends["default"]
    assert isinstance(backend, LedgerBackend)
    assert backend.supports_defer and backend.supports_get_result and backend.supports_priority


def test_enqueue_runs_on_a_worker_and_the_result_comes_from_the_ledger(worker):
    result = dj_tasks.add.enqueue(2, 3)

    assert result.status == TaskResultStatus.READY
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1 and result.started_at and result.finished_at
    again = dj_tasks.add.get_result(result.id)
    assert again.return_value == 5 and again.args == [2, 3]
    job = Job.objects.get(pk=result.id)
    assert job.task_name == "jobs.tests.dj_tasks.add" and job.state == JobState.SUCCEEDED


def test_a_queue_chosen_at_enqueue_is_the_jobs_queue(worker):
    declared = dj_tasks.add.enqueue(1, 1)
    elsewhere = dj_tasks.add.using(queue_name="cache").enqueue(2, 2)

    assert finished(elsewhere).return_value == 4 and finished(declared).return_value == 2
    assert Job.objects.get(pk=elsewhere.id).queue == "cache"
    assert Job.objects.get(pk=declared.id).queue == "default"


def test_the_converted_cache_invalidation_works_end_to_end(worker):
    key = namespaced_key("dj-test", "page")
    cache.set(key, "stale")

    result = finished(dj_tasks.invalidate_cache.enqueue(namespace="dj-test"))

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "invalidated dj-test"
    assert namespaced_key("dj-test", "page") != key, "a new namespace version"
    job = Job.objects.get(pk=result.id)
    assert job.queue == "cache" and job.priority == PriorityClass.URGENT


def test_a_failing_task_reports_its_error_and_ends_dead(worker, dead_letters):
    result = finished(dj_tasks.explode.enqueue())

    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is ValueError
    assert "this Django task always fails" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    assert dead_letters.find(result.id)


def test_a_transient_error_is_retried_by_the_platform(worker):
    result = finished(dj_tasks.flaky_until_third.enqueue("x"), timeout=45)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3 and result.attempts == 3


def test_enqueue_inside_a_transaction_publishes_after_commit_and_not_on_rollback(worker):
    with pytest.raises(RuntimeError), transaction.atomic():
        ghost = dj_tasks.add.enqueue(1, 1)
        raise RuntimeError("rolled back")
    with pytest.raises(TaskResultDoesNotExist):
        dj_tasks.add.get_result(ghost.id)

    with transaction.atomic():
        result = dj_tasks.add.enqueue(4, 4)
        assert Job.objects.get(pk=result.id).state == JobState.PENDING
    assert finished(result).return_value == 8


def test_run_after_is_honoured_through_the_ledger(worker, no_relay):
    when = timezone.now() + datetime.timedelta(seconds=2)
    result = dj_tasks.add.using(run_after=when).enqueue(10, 5)

    job = Job.objects.get(pk=result.id)
    assert job.run_after == when and job.state == JobState.PENDING
    assert relay_pending_jobs(grace_seconds=0) == 0, "not before its time"
    wait_for(lambda: timezone.now() >= when, timeout=5, message="run_after")
    assert relay_pending_jobs(grace_seconds=0) == 1
    result = finished(result)
    assert result.return_value == 15
    assert result.started_at >= when


def test_priorities_map_onto_the_platform_classes():
    assert priority_class(100) == PriorityClass.URGENT
    assert priority_class(0) == PriorityClass.NORMAL
    assert priority_class(-100) == PriorityClass.BULK
    later = timezone.now() + datetime.timedelta(hours=1)
    result = dj_tasks.add.using(priority=-80, run_after=later).enqueue(1, 2)
    assert Job.objects.get(pk=result.id).priority == PriorityClass.BULK


def test_a_coroutine_task_is_awaited_on_a_worker(worker):
    result = dj_tasks.async_add.enqueue(2, 3)

    result = finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
    assert result.return_value == {"sum": 5, "attempt": 1, "state": "started"}


def test_what_the_platform_cannot_honour_is_refused_clearly(worker):
    with pytest.raises(InvalidTaskError, match="Queue 'reports' is not valid"):
        dj_tasks.add.using(queue_name="reports")
    with pytest.raises(InvalidTaskError, match="must be JSON"):
        dj_tasks.add.enqueue(object(), 1)
    with pytest.raises(InvalidTaskError, match="do not fit"):
        dj_tasks.add.enqueue(1, 2, 3)
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("not-a-task-id")

    result = finished(dj_tasks.returns_a_set.enqueue())
    assert result.status == TaskResultStatus.FAILED
    assert "not JSON" in Job.objects.get(pk=result.id).last_error
