"""Events fan out to their subscribers, each one a job of its own, after commit only."""

import pytest
from django.db import transaction
from django.urls import reverse

import jobs
from jobs.models import Event, Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import barrier
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
    seen = len(worker.log())
    with pytest.raises(RuntimeError), transaction.atomic():
        jobs.publish("tests.happened", {"path": str(tmp_path / "out")})
        raise RuntimeError("rolled back")
    assert not Event.objects.exists() and not Job.objects.exists()
    barrier(worker, str(tmp_path / "sentinel"))
    assert "tests.subscriber_" not in worker.log()[seen:], "a subscriber's job was published"
    assert tasks.lines(str(tmp_path / "out")) == []
