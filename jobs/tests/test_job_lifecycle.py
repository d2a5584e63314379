"""The platform's promises, proven with a real worker on the real RabbitMQ and PostgreSQL."""

import json
import os
import select
import subprocess
import sys
import threading

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs import enqueue
from jobs.broker.publisher import publish_jobs
from jobs.models import Job, JobState
from jobs.relay import relay_pending_jobs
from jobs.testing import broker, wait_for
from jobs.testing.finishing import barrier, finished, received
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_committed_job_runs_and_succeeds(worker, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.record, path, "hello")

    job = finished(job.id)

    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 1
    assert job.result == "hello"
    assert job.queued_at and job.started_at and job.finished_at
    assert tasks.lines(path) == ["hello"]


@pytest.mark.parametrize("reconnect", [False, True], ids=["connection-lost", "body-reconnected"])
def test_a_start_lost_with_a_database_crash_does_not_lose_the_runs_outcome(worker, tmp_path, reconnect):
    # The worker commits a job's start asynchronously; a crash of PostgreSQL can lose
    # it, leaving the row waiting while the run goes on. The run's success must still
    # be recorded, once, when it ends, whether the success write finds its
    # connection dead or (the body having reconnected) finds the row one attempt behind.
    path = str(tmp_path / "out")
    job = enqueue(tasks.lose_start_in_a_crash, path, reconnect=reconnect)

    job = finished(job.id)

    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 1
    assert job.result == "done"
    assert job.duration.total_seconds() >= 0.2  # the run's own start, not the recovery's
    assert tasks.lines(path) == ["ran"]


def test_jobs_enqueued_from_many_threads_at_once_are_all_published_and_run(worker, tmp_path, caplog):
    # Each thread has its own database connection (and its own prepared statements)
    # and shares the process's publisher channel.
    path = str(tmp_path / "out")
    ids, errors = [], []

    def enqueue_some(n):
        try:
            for i in range(5):
                ids.append(enqueue(tasks.record, path, f"t{n}-{i}").id)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=enqueue_some, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == 40,
        30,
        message="40 jobs enqueued from 8 threads to succeed",
    )
    assert sorted(tasks.lines(path)) == sorted(f"t{n}-{i}" for n in range(8) for i in range(5))
    assert not [r for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("jobs")]


def test_rolled_back_transaction_publishes_nothing(worker, tmp_path):
    rolled_back = str(tmp_path / "rolled_back")
    committed = str(tmp_path / "committed")

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            ghost = enqueue(tasks.record, rolled_back)
            raise RuntimeError("the view failed after enqueueing")
    with transaction.atomic():
        job = enqueue(tasks.record, committed)
        assert tasks.lines(committed) == [], "nothing may be published before commit"

    assert finished(job.id).state == JobState.SUCCEEDED
    barrier(worker, str(tmp_path / "sentinel"))
    assert received(worker, job.id) == 1
    assert received(worker, ghost.id) == 0, "the rolled-back job's message was published"
    assert tasks.lines(rolled_back) == []


def test_transient_error_is_retried_with_backoff_then_succeeds(worker, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.flaky, path, 2)

    job = finished(job.id)

    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 3
    assert "transient failure 2 of 2" in job.last_error
    with open(path) as fh:
        stamps = [float(line.split()[1]) for line in fh]
    # Equal jitter: the n-th wait is at least half of base * 2^n.
    base = tasks.flaky.retry_backoff
    assert stamps[1] - stamps[0] >= base / 2
    assert stamps[2] - stamps[1] >= base


def test_retries_exhausted_end_dead(worker, tmp_path, dead_letters):
    path = str(tmp_path / "out")
    job = enqueue(tasks.always_transient, path)

    job = finished(job.id)

    assert job.state == JobState.DEAD
    assert job.attempts == 1 + tasks.always_transient.max_retries
    assert "still down" in job.last_error
    assert dead_letters.find(job.id)


def test_permanent_error_ends_dead_and_its_message_is_dead_lettered(worker, tmp_path, dead_letters):
    path = str(tmp_path / "out")
    job = enqueue(tasks.fail, path)

    job = finished(job.id)

    assert job.state == JobState.DEAD
    assert job.attempts == 1
    assert job.last_error == "ValueError: this job always fails"
    assert "Traceback" in job.last_traceback
    assert tasks.lines(path) == ["fail"], "a permanent error is not retried"
    message = dead_letters.find(job.id)
    death = message.properties["application_headers"]["x-death"][0]
    assert death["queue"] == "default"
    assert death["reason"] == "rejected"


def test_same_idempotency_key_twice_gives_one_job(worker, tmp_path):
    path = str(tmp_path / "out")
    with transaction.atomic():
        first = enqueue(tasks.record, path, key="invoice-42-pdf")
        second = enqueue(tasks.record, path, key="invoice-42-pdf")
    third = enqueue(tasks.record, path, key="invoice-42-pdf")

    assert first.id == second.id == third.id
    assert finished(first.id).state == JobState.SUCCEEDED
    barrier(worker, str(tmp_path / "sentinel"))
    assert received(worker, first.id) == 1, "a known key publishes nothing new"
    assert Job.objects.filter(key="invoice-42-pdf").count() == 1
    assert tasks.lines(path) == ["ran"]


def test_redelivered_succeeded_job_is_not_run_again(worker, tmp_path):
    path = str(tmp_path / "out")
    job = finished(enqueue(tasks.record, path).id)

    # The same message again, as RabbitMQ redelivers it or a relay publishes it twice.
    publish_jobs([job], force=True)

    wait_for(lambda: f"job={job.id} task=tests.record already succeeded" in worker.log(), message="the skip")
    job.refresh_from_db()
    assert job.attempts == 1
    assert tasks.lines(path) == ["ran"]


def test_two_copies_of_one_job_never_run_at_the_same_time(worker, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.sleep, path, 2.0)
    wait_for(lambda: tasks.lines(path) == ["start"], message="the first copy to start")

    publish_jobs([Job.objects.get(pk=job.id)], force=True)  # a duplicate while it runs

    wait_for(lambda: f"job={job.id} task=tests.sleep lease busy" in worker.log(), message="the lease refusal")
    # The copy was acknowledged, not held: the relay looks again at the lease later.
    assert Job.objects.get(pk=job.id).delayed_until is not None
    assert finished(job.id).state == JobState.SUCCEEDED
    wait_for(
        lambda: Job.objects.get(pk=job.id).delayed_until is None,
        timeout=20,
        message="the relay's look, which finds the job finished",
    )
    assert tasks.lines(path) == ["start", "end"]
    assert Job.objects.get(pk=job.id).attempts == 1


def test_job_whose_worker_process_died_mid_run_runs_again(own_worker, tmp_path):
    own_worker.start()
    path = str(tmp_path / "out")
    job = enqueue(tasks.sleep, path, 1.5)
    wait_for(lambda: tasks.lines(path) == ["start"], message="the job to start")
    before = set(own_worker.pool_pids())

    for pid in before:  # the job's process dies, as under the OOM killer
        os.kill(pid, 9)

    job = finished(job.id)
    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 2
    assert job.lost_runs == 1
    assert tasks.lines(path) == ["start", "start", "end"]


def test_poison_that_kills_its_worker_is_dead_lettered_and_the_worker_goes_on(
    own_worker, worker_env, tmp_path, dead_letters
):
    own_worker.start()
    path = str(tmp_path / "poison")
    job = enqueue(tasks.exit_worker, path)

    job = finished(job.id, timeout=60)

    assert job.state == JobState.DEAD
    assert "dead-lettered as poison" in job.last_error
    assert tasks.lines(path) == ["start"] * int(worker_env["JOBS_MAX_LOST_RUNS"])
    assert dead_letters.find(job.id)
    healthy = str(tmp_path / "healthy")
    assert finished(enqueue(tasks.record, healthy).id).state == JobState.SUCCEEDED


def test_enqueue_with_broker_unreachable_succeeds_and_the_relay_delivers_it_once(
    worker, no_relay, worker_env, tmp_path
):
    path = str(tmp_path / "out")
    script = (
        "import json, time\n"
        "from django.db import connection, transaction\n"
        "from jobs import enqueue\n"
        "from jobs.tests import tasks\n"
        "connection.ensure_connection()\n"  # time the enqueue, not PostgreSQL's login
        "t = time.monotonic()\n"
        "with transaction.atomic():\n"
        f"    job = enqueue(tasks.record, {path!r})\n"
        "print(json.dumps({'id': str(job.id), 'seconds': time.monotonic() - t}))\n"
    )
    env = {**worker_env, "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}  # nothing listens there
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["seconds"] < 1.0, "enqueue must not wait on an unreachable broker"
    job = Job.objects.get(pk=result["id"])
    assert job.state == JobState.PENDING
    barrier(worker, str(tmp_path / "sentinel-before"))
    assert received(worker, job.id) == 0, "published although the broker was unreachable"
    assert tasks.lines(path) == []

    assert relay_pending_jobs(grace_seconds=0) == 1
    assert relay_pending_jobs(grace_seconds=0) == 0, "a relayed job is not relayed again"
    assert finished(job.id).state == JobState.SUCCEEDED
    barrier(worker, str(tmp_path / "sentinel-after"))
    assert received(worker, job.id) == 1, "the relay published the job once"
    assert tasks.lines(path) == ["ran"]


def test_pickle_message_is_refused_and_dead_lettered_never_executed(
    worker, tmp_path, dead_letters, platform, reliability
):
    import uuid

    from kombu import Exchange, Producer

    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with platform.connection_for_write() as connection:
        producer = Producer(connection.default_channel, exchange=Exchange("jobs", type="direct"))
        producer.publish(
            [[Exploit()], {}, {}],
            routing_key="default",
            serializer="pickle",
            headers={"task": "tests.record", "id": task_id, "lang": "py"},
            delivery_mode=2,
        )

    message = dead_letters.find(task_id)
    assert message.properties["content_type"] == "application/x-python-serialize"
    assert not marker.exists(), "the pickle payload must never be deserialized"
    healthy = str(tmp_path / "healthy")
    assert finished(enqueue(tasks.record, healthy).id).state == JobState.SUCCEEDED
    reliability.record(
        "S1", "Only JSON is accepted",
        "a pickle message whose payload would create a marker file, published to a workload queue",
        "rejected undecoded into the dead-letter queue; the marker file stays absent; the next job succeeds",
        "test_pickle_message_is_refused_and_dead_lettered_never_executed",
    )  # fmt: skip


def test_cancelled_job_is_acknowledged_without_running(worker, tmp_path):
    from jobs.services import cancel_job

    path = str(tmp_path / "out")
    with transaction.atomic():
        job = enqueue(tasks.record, path)
        assert cancel_job(job.id)

    wait_for(lambda: f"job={job.id} task=tests.record already cancelled" in worker.log(), message="the skip")
    assert Job.objects.get(pk=job.id).state == JobState.CANCELLED
    assert tasks.lines(path) == []


def test_enqueue_many_records_and_publishes_a_batch_that_all_runs(worker, tmp_path):
    from jobs import enqueue_many
    from jobs.services import EnqueueError

    path = str(tmp_path / "out")
    with pytest.raises(EnqueueError, match="Call 2"):
        enqueue_many(tasks.record, [(path, "a"), (path, "b"), (path, object())])
    assert not Job.objects.exists()

    with transaction.atomic():
        jobs = enqueue_many(
            tasks.record, [(path, str(n)) for n in range(300)] + [{"path": path, "value": "kw"}]
        )
        assert tasks.lines(path) == []

    ids = [job.id for job in jobs]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == 301, message="the batch"
    )
    assert sorted(tasks.lines(path)) == sorted([str(n) for n in range(300)] + ["kw"])


def test_a_large_enqueue_many_marks_its_chunks_queued_from_the_side_connection(
    worker, tmp_path, monkeypatch, caplog
):
    """Outside a transaction, chunks are marked queued on a second connection while
    the next one is sent; a failure there would only show as a warning and a slower,
    inline mark, so this looks for both."""
    import logging

    from jobs import enqueue_many, ledger

    sent = []
    real_mark = ledger.BackgroundMarks.mark

    def mark(self, ids, attempts, published_since):
        real_mark(self, ids, attempts, published_since)
        sent.append(len(ids))  # only once the statement went out on the side connection

    monkeypatch.setattr(ledger.BackgroundMarks, "mark", mark)
    path = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="jobs"):
        jobs = enqueue_many(tasks.record, [(path, str(n)) for n in range(250)], publish_batch_size=50)

    assert "marking inline" not in caplog.text and "publish failed" not in caplog.text
    assert sent, "no chunk was marked on the side connection"
    ids = [job.id for job in jobs]
    assert not Job.objects.filter(pk__in=ids, state=JobState.PENDING).exists()
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == 250, message="the batch"
    )
    assert sorted(tasks.lines(path), key=int) == [str(n) for n in range(250)]


def test_a_long_publish_keeps_a_bounded_number_of_chunks_unconfirmed(worker, tmp_path, monkeypatch):
    from jobs import enqueue_many
    from jobs.broker import publisher

    monkeypatch.setattr(publisher, "MAX_CHUNKS_IN_FLIGHT", 2)
    most = [0]
    real_take = publisher._take_confirmed

    def take(in_flight, wait):
        most[0] = max(most[0], len(in_flight))
        return real_take(in_flight, wait)

    monkeypatch.setattr(publisher, "_take_confirmed", take)
    # Confirms are read only when the publisher waits for them: without the bound,
    # all 20 chunks would be in flight at the end, however fast RabbitMQ confirms.
    monkeypatch.setattr(publisher.ConfirmChannel, "poll", lambda self: None)
    path = str(tmp_path / "out")
    jobs = enqueue_many(tasks.record, [(path, str(n)) for n in range(200)], publish_batch_size=10)

    assert most[0] <= 2, f"at most 2 chunks unconfirmed, saw {most[0]}"
    ids = [job.id for job in jobs]
    assert not Job.objects.filter(pk__in=ids, state=JobState.PENDING).exists()
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == 200, message="the batch"
    )


def test_a_publisher_connection_closed_by_the_broker_is_replaced_before_the_next_publish(
    worker, rabbitmqctl, tmp_path
):
    """The kept publishing connection dies while idle (a broker restart, an operator
    closing it): the next enqueue must notice before it writes, and publish on a new
    connection at once, not leave its job to the relay."""
    from jobs.broker import publisher

    path = str(tmp_path / "out")
    first = enqueue(tasks.record, path, "1")
    assert Job.objects.get(pk=first.id).state != JobState.PENDING
    sock = publisher._shared.channel.connection.sock
    listed = rabbitmqctl("list_connections", "peer_port", "pid")
    pid = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)[str(sock.getsockname()[1])]
    rabbitmqctl("close_connection", pid, "closed by a test")
    # The broker has sent its Connection.Close once the idle socket has something to read.
    wait_for(lambda: select.select([sock], [], [], 0)[0], message="the broker to close the connection")

    second = enqueue(tasks.record, path, "2")

    assert Job.objects.get(pk=second.id).state != JobState.PENDING, "published at once, not left to the relay"
    assert not publisher.broker_marked_down()
    assert finished(second.id).state == JobState.SUCCEEDED
    assert sorted(tasks.lines(path)) == ["1", "2"]


def test_a_write_cut_off_mid_publish_retires_the_connection_and_publishes_on_a_new_one(
    worker, tmp_path, monkeypatch
):
    from jobs.broker import publisher

    path = str(tmp_path / "out")
    enqueue(tasks.record, path, "1")  # the process now keeps a publishing connection
    kept = publisher._shared

    def cut_off(*frame):
        raise TimeoutError("timed out")  # socket.timeout, as a write that stalls raises

    monkeypatch.setattr(kept.channel.connection, "frame_writer", cut_off)
    second = enqueue(tasks.record, path, "2")

    assert kept.broken, "a connection cut mid-stream is never used again"
    assert publisher._shared is not kept and not publisher.broker_marked_down()
    assert Job.objects.get(pk=second.id).state != JobState.PENDING, "published on a new connection"
    assert finished(second.id).state == JobState.SUCCEEDED
    assert sorted(tasks.lines(path)) == ["1", "2"]


def test_a_second_copy_of_a_retrying_jobs_message_waits_out_its_backoff(own_worker, tmp_path):
    """Two copies of one job's message (a relay duplicate, a resend of a message that
    was not lost). The first fails transiently and schedules the retry 0.5 to 1 s
    later; the second, delivered right after, must not start that retry early."""
    path = str(tmp_path / "out")
    job = enqueue(tasks.flaky_slow_backoff, path, 1)  # fails once, then succeeds
    publish_jobs([Job.objects.get(pk=job.id)], force=True)  # the second copy
    own_worker.concurrency = 1  # the copies run one after the other
    own_worker.start()

    assert finished(job.id).state == JobState.SUCCEEDED
    with open(path) as fh:
        runs = [line.split() for line in fh.read().splitlines()]
    assert [what for what, _ in runs] == ["fail", "ok"]
    gap = float(runs[1][1]) - float(runs[0][1])
    assert gap >= 0.45, f"the retry started {gap:.3f}s after the failure, inside its backoff"
    assert Job.objects.get(pk=job.id).attempts == 2
    wait_for(
        lambda: "before the retry is due; the relay sends it then" in own_worker.log(),
        message="the early copy",
    )


def test_a_retry_is_sent_even_if_the_broker_dropped_the_relays_connection(
    own_worker, session_relay, rabbitmqctl, tmp_path
):
    """The relay keeps its broker connection between publishes, and the broker may drop
    it meanwhile (a restart, a hang, an operator). The next retry it publishes must
    still go out, on a new connection."""
    own_worker.concurrency = 1
    own_worker.start()
    first = enqueue(tasks.flaky, str(tmp_path / "first"), 1)
    assert finished(first.id).state == JobState.SUCCEEDED  # its retry opened that connection
    dropped = broker.connections_of(session_relay.process.pid, rabbitmqctl.amqp_port)
    assert dropped, "the relay holds a connection of its own"
    for connection_pid in dropped:
        rabbitmqctl("close_connection", connection_pid, "test")

    second = finished(enqueue(tasks.flaky, str(tmp_path / "second"), 1).id)
    assert second.state == JobState.SUCCEEDED and second.attempts == 2
    assert tasks.lines(str(tmp_path / "second")) == ["fail", "ok"]


def test_the_retry_count_lives_in_the_ledger_not_in_the_message(worker, tmp_path):
    """A copy sent again by the relay (its message says retries=0) cannot restart the count."""
    import datetime

    path = str(tmp_path / "out")
    later = timezone.now() + datetime.timedelta(days=1)
    job = enqueue(tasks.always_transient, path, run_after=later)  # max_retries=2
    Job.objects.filter(pk=job.id).update(retries=2, run_after=None)

    publish_jobs([Job.objects.get(pk=job.id)], force=True)

    job = finished(job.id)
    assert job.state == JobState.DEAD and job.attempts == 1
    assert tasks.lines(path) == ["fail"], "no new round of retries"
