"""Each job's own time limits and deadline: limits declared on the task or given at
enqueue (soft: the body is interrupted; hard: its process is killed), either way the
job ends `dead` once; a job not started by its deadline (`expires`) never runs and
ends `cancelled` as expired, counted on /metrics."""

import datetime

import pytest
from django.conf import settings
from django.utils import timezone

from jobs import enqueue, enqueue_many
from jobs.models import Job, JobState
from jobs.services import EnqueueError
from jobs.testing import wait_for
from jobs.testing.finishing import finished
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

_TIME_LIMITS = ("billiard.exceptions.SoftTimeLimitExceeded", "billiard.exceptions.TimeLimitExceeded")


def test_a_job_past_its_declared_hard_time_limit_is_killed_and_ends_dead_once(worker, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.hard_limited, path)

    job = finished(job.id)

    # At its hard limit the body is interrupted, and its process killed if it goes on;
    # which of the two the ledger records first depends on the race.
    assert job.state == JobState.DEAD
    assert job.last_error_class in _TIME_LIMITS and "time limit" in job.last_error.lower(), job.last_error
    assert job.finished_at - job.started_at < datetime.timedelta(seconds=4)
    assert tasks.lines(path) == ["start"]  # stopped mid-body, never run again
    after = enqueue(tasks.record, str(tmp_path / "after"))
    assert finished(after.id).state == JobState.SUCCEEDED


def test_limits_given_at_enqueue_replace_the_tasks(worker, tmp_path):
    soft = enqueue(tasks.sleep, str(tmp_path / "soft"), 5, soft_time_limit=0.5)
    hard = enqueue(tasks.sleep, str(tmp_path / "hard"), 5, time_limit=1)

    soft, hard = finished(soft.id), finished(hard.id)

    assert (soft.state, soft.soft_time_limit) == (JobState.DEAD, 0.5)
    assert soft.last_error_class == "billiard.exceptions.SoftTimeLimitExceeded"
    assert (hard.state, hard.time_limit) == (JobState.DEAD, 1.0)
    assert hard.last_error_class in _TIME_LIMITS
    assert tasks.lines(str(tmp_path / "soft")) == ["start"] and tasks.lines(str(tmp_path / "hard")) == [
        "start"
    ]
    assert soft.finished_at - soft.started_at < datetime.timedelta(seconds=4)


def test_a_job_not_started_by_its_deadline_never_runs_and_ends_cancelled_as_expired(
    own_worker, client, tmp_path
):
    late = enqueue(tasks.record, str(tmp_path / "late"), expires=0.5)
    many = enqueue_many(tasks.record, [(str(tmp_path / "many"),)] * 3, expires=timezone.now())
    in_time = enqueue(
        tasks.record, str(tmp_path / "in-time"), expires=datetime.timedelta(hours=1).total_seconds()
    )
    wait_for(lambda: timezone.now() > late.expires_at, message="the deadline")

    own_worker.start()

    for job in [late, *many]:
        job = finished(job.id)
        assert job.state == JobState.CANCELLED
        assert job.last_error_class == "jobs.errors.JobExpired"
        assert job.last_error.startswith("JobExpired: Not started by its deadline") and job.attempts == 0
    assert finished(in_time.id).state == JobState.SUCCEEDED
    assert tasks.lines(str(tmp_path / "late")) == [] and tasks.lines(str(tmp_path / "many")) == []
    settings.METRICS_TOKEN = "scrape-secret"
    body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").content.decode()
    assert 'jobs_expired{queue="default"} 4.0' in body


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"expires": datetime.datetime(2030, 1, 1)}, "expires must be an aware datetime"),
        ({"expires": -1}, "expires must be a number of seconds above 0"),
        ({"soft_time_limit": 0}, "soft_time_limit must be a number of seconds above 0"),
        ({"time_limit": "10"}, "time_limit must be a number of seconds above 0"),
        ({"soft_time_limit": 5, "time_limit": 5}, "must be below time_limit"),
        ({"expires": 60, "run_after": timezone.now() + datetime.timedelta(hours=1)}, "could never start"),
    ],
)
def test_bad_limits_and_deadlines_are_refused_before_anything_is_written(options, error, tmp_path):
    with pytest.raises(EnqueueError, match=error):
        enqueue(tasks.record, str(tmp_path / "out"), **options)
    with pytest.raises(EnqueueError, match=error):
        enqueue_many(tasks.record, [(str(tmp_path / "out"),)], **options)
    assert not Job.objects.exists()
