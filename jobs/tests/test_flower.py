"""Flower runs against the same broker, behind basic auth from the environment."""

import time

import pytest
import requests

from jobs import enqueue
from jobs.models import Job, JobState
from jobs.testing import broker, processes, wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def flower(worker_env, tmp_path):
    with processes.flower(worker_env, tmp_path / "flower.log", "operator:s3cret-flower") as base:
        yield base


def test_flower_refuses_anonymous_calls_and_shows_workers_and_jobs_to_operators(
    worker, flower, tmp_path, reliability
):
    auth = ("operator", "s3cret-flower")

    assert requests.get(f"{flower}/api/workers", timeout=5).status_code == 401
    assert requests.get(f"{flower}/api/workers", auth=("operator", "wrong"), timeout=5).status_code == 401

    workers = wait_for(
        lambda: requests.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=10).json(),
        timeout=30,
        interval=0.5,
        message="Flower to list the worker",
    )
    assert any(name.startswith(worker.name) for name in workers)

    # Flower lists what its event receiver saw, and that receiver connects a moment
    # after its HTTP port opens: a job finished before then is never listed. So run
    # jobs until one of them is listed (the first usually is).
    finished_ids = []

    def one_job_listed() -> bool:
        job = enqueue(tasks.record, str(tmp_path / "out"))
        wait_for(lambda: Job.objects.get(pk=job.id).state == JobState.SUCCEEDED, message="the job")
        finished_ids.append(str(job.id))
        for _ in range(20):
            listed = requests.get(f"{flower}/api/tasks", auth=auth, timeout=5).json()
            if any(job_id in listed for job_id in finished_ids):
                return True
            time.sleep(0.25)
        return False

    assert wait_for(one_job_listed, timeout=60, interval=0, message="Flower to list a finished job")
    reliability.record(
        "S2", "Flower refuses anonymous access",
        "Flower started with FLOWER_BASIC_AUTH; its API called without and with wrong credentials",
        "401 both times; with the credentials it lists the worker and the finished job",
        "test_flower_refuses_anonymous_calls_and_shows_workers_and_jobs_to_operators",
    )  # fmt: skip


@pytest.mark.parametrize("confirmed", [False, True], ids=["default", "JOBS_CONFIRM_TASK_EVENTS"])
def test_the_workers_task_events_go_out_unconfirmed_unless_asked(
    own_worker, rabbitmqctl, tmp_path, confirmed
):
    # Events feed Flower; the ledger is the durable record. A confirm would be a round
    # trip per event in the process that takes every message off RabbitMQ.
    own_worker.env = {**own_worker.env, "JOBS_CONFIRM_TASK_EVENTS": "1" if confirmed else "0"}
    own_worker.start()
    job = enqueue(tasks.record, str(tmp_path / "out"))
    wait_for(lambda: Job.objects.get(pk=job.id).state == JobState.SUCCEEDED, message="the job")
    ours = set(broker.connections_of(own_worker.process.pid, rabbitmqctl.amqp_port))
    assert len(ours) >= 2, "the consumer's connection and the events' own"
    channels = [line.split() for line in rabbitmqctl("list_channels", "connection", "confirm").splitlines()]
    confirming = [
        fields for fields in channels if len(fields) == 2 and fields[0] in ours and fields[1] == "true"
    ]
    assert len(confirming) == (1 if confirmed else 0), channels
