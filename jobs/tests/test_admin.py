"""The job admin: history, search, and actions that only permitted staff may run."""

import datetime

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from jobs import enqueue
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:jobs_job_changelist")


def staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def run_action(client, action: str, *job_ids):
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [str(i) for i in job_ids]}, follow=True
    )


def test_retry_action_runs_a_dead_job_again_as_a_new_attempt_of_the_same_row(worker, client, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.fail_once, path)
    wait_for(lambda: Job.objects.get(pk=job.id).state == JobState.DEAD, message="the job to die")
    client.force_login(staff("operator", "view_job", "change_job"))

    response = run_action(client, "retry_dead_jobs", job.id)

    assert "1 job(s) retried." in response.content.decode()
    job = wait_for(
        lambda: Job.objects.filter(pk=job.id, state=JobState.SUCCEEDED).first(), message="the retried job"
    )
    assert job.attempts == 2
    assert tasks.lines(path) == ["fail", "ok"]


def test_cancel_action_cancels_a_waiting_job_and_skips_a_finished_one(client, tmp_path):
    later = timezone.now() + datetime.timedelta(hours=1)
    waiting = enqueue(tasks.record, str(tmp_path / "a"), run_after=later)
    done = Job.objects.create(task_name="tests.record", queue="default", priority=5, state=JobState.SUCCEEDED)
    client.force_login(staff("operator", "view_job", "change_job"))

    response = run_action(client, "cancel_jobs", waiting.id, done.id)

    body = response.content.decode()
    assert "1 job(s) cancelled." in body
    assert "1 job(s) skipped: they had finished already." in body
    assert Job.objects.get(pk=waiting.id).state == JobState.CANCELLED
    assert Job.objects.get(pk=done.id).state == JobState.SUCCEEDED


def test_staff_without_change_permission_cannot_act(client, tmp_path):
    later = timezone.now() + datetime.timedelta(hours=1)
    waiting = enqueue(tasks.record, str(tmp_path / "a"), run_after=later)
    client.force_login(staff("viewer", "view_job"))

    run_action(client, "cancel_jobs", waiting.id)

    assert Job.objects.get(pk=waiting.id).state == JobState.PENDING


def test_anonymous_users_are_sent_to_login(client):
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_list_filters_search_by_id_and_detail_show_the_history(client, tmp_path):
    job = Job.objects.create(
        task_name="tests.fail",
        queue="default",
        priority=5,
        state=JobState.DEAD,
        attempts=3,
        key="order-7",
        last_error="ValueError: boom",
        last_traceback="Traceback (most recent call last): ...",
    )
    other = Job.objects.create(task_name="tests.record", queue="cache", priority=5, state=JobState.SUCCEEDED)
    client.force_login(staff("viewer", "view_job"))

    by_id = client.get(CHANGELIST, {"q": str(job.id)}).content.decode()
    by_key = client.get(CHANGELIST, {"q": "order-7"}).content.decode()
    dead_only = client.get(CHANGELIST, {"state__exact": "dead"}).content.decode()
    detail = client.get(reverse("admin:jobs_job_change", args=[job.id])).content.decode()

    assert str(job.id) in by_id and str(other.id) not in by_id
    assert str(job.id) in by_key and str(other.id) not in by_key
    assert str(job.id) in dead_only and str(other.id) not in dead_only
    assert "ValueError: boom" in detail and "Traceback" in detail and "order-7" in detail


def test_jobs_whose_messages_were_lost_are_sent_again_and_each_runs_once(own_worker, client, tmp_path):
    """Queued jobs whose messages were purged from RabbitMQ by hand wait forever;
    the admin action and `manage.py jobs_resend` send them again. A job whose message
    was not lost gets a second copy, and still runs once."""
    import io

    from django.core.management import CommandError, call_command

    from project.celery import app

    path = str(tmp_path / "out")
    lost = [enqueue(tasks.record, path, f"lost{n}") for n in range(3)]  # no worker: they wait in the queue
    with app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge("default") == 3  # an operator purges the queue
    kept = enqueue(tasks.record, path, "kept")  # its message is still there
    deferred = enqueue(tasks.record, path, "deferred", run_after=timezone.now() + datetime.timedelta(hours=1))
    assert Job.objects.filter(state=JobState.QUEUED).count() == 4

    client.force_login(staff("operator", "view_job", "change_job"))
    body = run_action(client, "resend_queued_jobs", lost[0].id, kept.id, deferred.id).content.decode()
    assert "2 job(s) sent again." in body and "1 job(s) skipped: they were not queued." in body
    said = {}
    for name, options in {
        "dry run": ["--queued-before", "0m", "--dry-run"],
        "too recent": ["--queued-before", "1h"],
        "other queue": ["--queued-before", "0m", "--queue", "emails"],
        "all": ["--queued-before", "0m", "--queue", "default"],
    }.items():
        out = io.StringIO()
        call_command("jobs_resend", *options, stdout=out)
        said[name] = out.getvalue().strip()
    with pytest.raises(CommandError, match="--queued-before 'soon'"):
        call_command("jobs_resend", "--queued-before", "soon")
    relay = "(the relay sends any that RabbitMQ did not take)"
    assert said == {
        "dry run": "4 queued job(s) would be sent again",
        "too recent": f"0 queued job(s) sent again {relay}",
        "other queue": f"0 queued job(s) sent again {relay}",
        "all": f"4 queued job(s) sent again {relay}",
    }

    own_worker.start()
    ids = [job.id for job in [*lost, kept]]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == 4,
        timeout=30,
        message="the resent jobs",
    )
    assert sorted(tasks.lines(path)) == ["kept", "lost0", "lost1", "lost2"], "each ran once, copies and all"
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert Job.objects.get(pk=deferred.id).state == JobState.PENDING, "the deferred job was not sent early"
