"""A three-node RabbitMQ 4 cluster with quorum queues loses nodes, and no job.

bin/test's cluster pass runs these against `bin/rabbitmq4 cluster` (nodes a, b, c on
5681-5683), with the failover list as the broker URL and JOBS_QUEUE_TYPE=quorum. The
publisher, the relay and the workers connect to the first node that answers, a.
Every node a test stops or kills is started again in a `finally`.
"""

import subprocess
import threading
import time

import pytest
from django.conf import settings
from django.db import connection

from jobs import enqueue
from jobs.models import Job, JobState
from jobs.testing import broker, wait_for
from jobs.testing.finishing import all_final
from jobs.tests import tasks

pytestmark = [
    pytest.mark.fault,
    pytest.mark.cluster,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not broker.is_cluster(settings.CELERY_BROKER_URL), reason="a cluster's failover URL only"
    ),
]

RABBITMQ4 = str(settings.BASE_DIR / "bin" / "rabbitmq4")


def node(action: str, name: str) -> None:
    """bin/rabbitmq4 kill|stop|start NODE (a, b or c)."""
    subprocess.run([RABBITMQ4, action, name], check=True, timeout=240, capture_output=True)


def test_killing_the_node_in_use_while_2000_jobs_flow_loses_none_and_runs_each_once(
    worker, tmp_path, reliability
):
    path = str(tmp_path / "out")
    enqueued, errors, slowest = [], [], [0.0]

    def produce():
        try:
            for n in range(2000):
                began = time.monotonic()
                try:
                    enqueued.append(enqueue(tasks.record, path, str(n)).id)
                except Exception as exc:  # noqa: BLE001 - counted: none may happen
                    errors.append(exc)
                slowest[0] = max(slowest[0], time.monotonic() - began)
                time.sleep(0.002)
        finally:
            connection.close()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(enqueued) >= 600, timeout=60, message="600 enqueues before the kill")
        node("kill", "a")
        killed_at = len(enqueued)
        producer.join(120)
    finally:
        node("start", "a")
    assert not producer.is_alive()

    assert errors == [], errors[:3]
    assert len(enqueued) == 2000
    jobs = all_final(enqueued, timeout=240, worker=worker)
    assert set(jobs.values_list("state", flat=True)) == {JobState.SUCCEEDED}
    ran = tasks.lines(path)
    assert len(ran) == 2000 and set(ran) == {str(n) for n in range(2000)}, "each side effect once"
    reliability.record(
        "C1", "Kill -9 the cluster node the publisher and the workers use, mid-stream",
        "three RabbitMQ 4.0.5 nodes, quorum queues; 2,000 paced single enqueues while one worker (2 "
        f"processes) drains; `kill -9` of node a's beam after {killed_at} enqueues; a restarted afterwards",
        f"no enqueue raised (slowest {slowest[0] * 1000:.0f} ms); all 2,000 `succeeded`; 2,000 distinct "
        "side effects, none twice; nothing left pending or queued",
        "test_killing_the_node_in_use_while_2000_jobs_flow_loses_none_and_runs_each_once",
    )  # fmt: skip


def test_losing_the_quorum_delays_enqueued_jobs_and_loses_none(worker, tmp_path, settings, reliability):
    settings.JOBS_PUBLISH_TIMEOUT_SECONDS = 1.0
    path = str(tmp_path / "out")
    ids, took = [], []
    node("stop", "b")
    node("stop", "c")
    try:
        for n in range(20):
            began = time.monotonic()
            ids.append(enqueue(tasks.record, path, str(n)).id)
            took.append(time.monotonic() - began)
            time.sleep(0.1)
        waiting = Job.objects.filter(pk__in=ids, state=JobState.PENDING).count()
        assert waiting == 20, "no quorum, no confirm: each stays pending"
        assert max(took) < settings.JOBS_PUBLISH_TIMEOUT_SECONDS + 1.0, took
    finally:
        node("start", "b")
        node("start", "c")

    jobs = all_final(ids, timeout=180, worker=worker)
    assert set(jobs.values_list("state", flat=True)) == {JobState.SUCCEEDED}
    ran = tasks.lines(path)
    assert sorted(ran, key=int) == [str(n) for n in range(20)], "each once"
    reliability.record(
        "C2", "Lose the cluster's quorum while the app enqueues",
        "nodes b and c stopped (a alone is no majority); 20 single enqueues 0.1 s apart; "
        "JOBS_PUBLISH_TIMEOUT_SECONDS=1; then b and c started again",
        f"every enqueue returned within {max(took) * 1000:.0f} ms; all 20 `pending` while the quorum was "
        "lost; once a majority was back the relay published them and all 20 `succeeded`, once each",
        "test_losing_the_quorum_delays_enqueued_jobs_and_loses_none",
    )  # fmt: skip


def test_a_job_whose_workers_node_dies_mid_run_runs_once(worker, tmp_path, reliability):
    path = str(tmp_path / "out")
    # Long enough for the message to come again while the first run still goes on:
    # the worker fails over at once, but RabbitMQ hands the message out again only
    # once the queue's leader has taken the dead node's consumer for gone (about 17 s
    # after the kill, seen here).
    job = enqueue(tasks.sleep, path, 30.0)
    wait_for(lambda: tasks.lines(path) == ["start"], timeout=30, message="the job to start")
    try:
        node("kill", "a")
        killed = time.monotonic()
        wait_for(
            lambda: f"job={job.id} task=tests.sleep lease busy" in worker.log(),
            timeout=60,
            interval=0.2,
            message="the copy to meet the live run's lease",
        )
        again_after = time.monotonic() - killed
        (done,) = all_final([job.id], timeout=120, worker=worker)
    finally:
        node("start", "a")

    assert done.state == JobState.SUCCEEDED and done.attempts == 1
    assert tasks.lines(path) == ["start", "end"], "one live run; the redelivered copy ran nothing"
    copy = (
        f"came {again_after:.0f} s after the kill, found the lease held by the live run and was acknowledged"
    )
    reliability.record(
        "C3", "The node a worker consumes from dies while the worker runs a job",
        "a 30 s job started on a worker connected to node a; `kill -9` of a's beam; a restarted afterwards",
        f"the worker failed over to another node; the job's message, delivered again, {copy}; the job "
        "`succeeded` at attempt 1, its body ran once",
        "test_a_job_whose_workers_node_dies_mid_run_runs_once",
    )  # fmt: skip
