"""The numbers operators read: the /metrics endpoint and the admin dashboard."""

import pytest
from django.urls import reverse

import jobs
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


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
