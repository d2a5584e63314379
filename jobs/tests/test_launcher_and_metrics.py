"""The admin job launcher, the metrics endpoint and the dashboard."""

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

import jobs
from jobs.models import Job, JobLaunch, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

LAUNCH = reverse("admin:jobs_job_launch")


def operator(*codenames) -> User:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def test_launcher_starts_a_job_from_a_typed_form_audited_and_once(worker, client, tmp_path):
    client.force_login(operator("launch_job", "view_job"))
    path = str(tmp_path / "out")

    page = client.get(LAUNCH, {"task": "tests.record"})
    assert page.status_code == 200
    assert Job.objects.count() == 0, "a GET never starts a job"
    token = re.search(r'name="token" value="([0-9a-f-]+)"', page.content.decode()).group(1)
    form = {
        "task": "tests.record",
        "param_path": path,
        "param_value": "by-hand",
        "priority": "urgent",
        "token": token,
    }

    first = client.post(LAUNCH, form)
    second = client.post(LAUNCH, form)  # the double submit

    assert first.status_code == second.status_code == 302
    job = Job.objects.get()
    assert first["Location"] == second["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert job.priority == 9 and job.kwargs == {"path": path, "value": "by-hand"}
    launch = JobLaunch.objects.get()
    assert launch.username == "operator" and launch.job_id == job.id and launch.task_name == "tests.record"
    wait_for(
        lambda: Job.objects.filter(pk=job.pk, state=JobState.SUCCEEDED).exists(), message="the launched job"
    )
    assert tasks.lines(path) == ["by-hand"]


def test_launcher_validates_parameters_by_type(client):
    client.force_login(operator("launch_job", "view_job"))
    page = client.get(LAUNCH, {"task": "tests.limited"}).content.decode()
    token = re.search(r'name="token" value="([0-9a-f-]+)"', page).group(1)

    response = client.post(
        LAUNCH,
        {
            "task": "tests.limited",
            "param_path": "/tmp/x",
            "param_n": "seven",
            "priority": "normal",
            "token": token,
        },
    )

    assert response.status_code == 200 and "Enter a whole number." in response.content.decode()
    assert Job.objects.count() == 0


def test_launcher_needs_its_permission(client):
    client.force_login(operator("view_job", "change_job"))
    assert client.get(LAUNCH).status_code == 403
    assert client.post(LAUNCH, {"task": "tests.record"}).status_code == 403
    assert Job.objects.count() == 0


def test_metrics_refuse_anonymous_and_export_states_depth_latency_and_dead_letters(
    worker, client, settings, tmp_path, reliability
):
    settings.METRICS_TOKEN = "scrape-secret"
    job = jobs.enqueue(tasks.record, str(tmp_path / "out"))
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.SUCCEEDED).exists(), message="a job")

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").content.decode()

    assert 'jobs_jobs{queue="default",state="succeeded"} 1.0' in body
    assert 'jobs_queue_depth{queue="default"}' in body and "jobs_broker_up 1.0" in body
    assert "jobs_dead_letters_open 0.0" in body
    assert 'jobs_enqueue_to_start_seconds_count{task="tests.record"} 1.0' in body
    assert 'jobs_run_seconds_bucket{le="+Inf",task="tests.record"} 1.0' in body
    reliability.record(
        "S2b", "The metrics endpoint refuses anonymous access",
        "`GET /metrics` without credentials and with a wrong Bearer token",
        "401 both times; with METRICS_TOKEN it exports job states, queue depth, dead letters and latencies",
        "test_metrics_refuse_anonymous_and_export_states_depth_latency_and_dead_letters",
    )  # fmt: skip


def test_dashboard_shows_the_same_numbers(worker, admin_client, tmp_path):
    job = jobs.enqueue(tasks.record, str(tmp_path / "out"))
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.SUCCEEDED).exists(), message="a job")

    page = admin_client.get(reverse("admin:jobs_job_dashboard")).content.decode()

    assert "<td>default</td><td>succeeded</td><td>1</td>" in page
    assert "Throughput, last hour (1 finished)" in page
    assert "<td>tests.record</td><td>1</td>" in page
    assert 'id="throughput"' in page
