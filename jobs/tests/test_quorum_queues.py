"""Quorum queues (JOBS_QUEUE_TYPE=quorum), where RabbitMQ itself caps deliveries.

bin/test's quorum pass (RabbitMQ 4, JOBS_QUEUE_TYPE=quorum, JOBS_QUORUM_DELIVERY_LIMIT=5)
runs these; with classic queues there is no delivery limit to test.
"""

import pytest
from django.conf import settings

from jobs import enqueue
from jobs.models import DeadLetter, Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        settings.JOBS_QUEUE_TYPE != "quorum", reason="quorum queues only (bin/test's third pass)"
    ),
]


def test_the_delivery_limit_dead_letters_a_job_that_keeps_killing_its_worker(own_worker, keeper, tmp_path):
    own_worker.env = {**own_worker.env, "JOBS_MAX_LOST_RUNS": "1000"}  # only RabbitMQ's limit stops it
    own_worker.start()
    path = str(tmp_path / "killing")
    job = enqueue(tasks.exit_worker, path)

    dead = wait_for(
        lambda: Job.objects.filter(pk=job.id, state=JobState.DEAD).first(),
        timeout=120,
        message="the job dead",
    )

    assert "the quorum queue's delivery limit" in dead.last_error, dead.last_error
    runs = len(tasks.lines(path))
    assert settings.JOBS_QUORUM_DELIVERY_LIMIT <= runs <= settings.JOBS_QUORUM_DELIVERY_LIMIT + 1
    letter = DeadLetter.objects.get(identity=str(job.id))
    assert letter.reason == "delivery_limit"
    healthy = enqueue(tasks.record, str(tmp_path / "healthy"))
    wait_for(lambda: Job.objects.filter(pk=healthy.id, state=JobState.SUCCEEDED).exists(), message="next job")
