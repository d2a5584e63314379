"""Flower runs against the same broker, behind basic auth from the environment."""

import subprocess
import sys

import pytest
import requests
from django.conf import settings

from jobs import enqueue
from jobs.models import JobState
from jobs.testing import free_port, wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def flower(worker_env, tmp_path):
    port = free_port()
    env = {**worker_env, "FLOWER_BASIC_AUTH": "operator:s3cret-flower"}
    log = open(tmp_path / "flower.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "flower", "--address=127.0.0.1", f"--port={port}"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, timeout=30, interval=0.2, message="Flower to listen")
        yield base
    finally:
        process.kill()
        process.wait(10)
        log.close()


def test_flower_refuses_anonymous_calls_and_shows_workers_and_jobs_to_operators(
    worker, flower, tmp_path, reliability
):
    auth = ("operator", "s3cret-flower")

    assert requests.get(f"{flower}/api/workers", timeout=5).status_code == 401
    assert requests.get(f"{flower}/api/workers", auth=("operator", "wrong"), timeout=5).status_code == 401

    job = enqueue(tasks.record, str(tmp_path / "out"))
    wait_for(lambda: job.__class__.objects.get(pk=job.id).state == JobState.SUCCEEDED, message="the job")

    workers = wait_for(
        lambda: requests.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=10).json(),
        timeout=30,
        interval=0.5,
        message="Flower to list the worker",
    )
    assert any(name.startswith(worker.name) for name in workers)
    listed = wait_for(
        lambda: str(job.id) in requests.get(f"{flower}/api/tasks", auth=auth, timeout=5).json(),
        timeout=30,
        interval=0.5,
        message="Flower to list the finished job",
    )
    assert listed
    reliability.record(
        "S2", "Flower refuses anonymous access",
        "Flower started with FLOWER_BASIC_AUTH; its API called without and with wrong credentials",
        "401 both times; with the credentials it lists the worker and the finished job",
        "test_flower_refuses_anonymous_calls_and_shows_workers_and_jobs_to_operators",
    )  # fmt: skip
