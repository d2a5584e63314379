"""Narrow unit tests: pure functions and validation that needs no worker."""

import time

import pytest
from django.utils import timezone

from jobs import ledger
from jobs.base import backoff_seconds
from jobs.models import ALLOWED_TRANSITIONS, Job, JobState
from jobs.services import EnqueueError, enqueue, enqueue_many
from jobs.tests import tasks
from jobs.topology import PriorityClass


def test_backoff_grows_exponentially_with_jitter_and_a_maximum():
    for retry in range(8):
        delay = min(60.0, 1.0 * 2**retry)
        samples = [backoff_seconds(retry, 1.0, 60.0) for _ in range(200)]
        assert all(delay / 2 <= s <= delay for s in samples)
        assert len(set(samples)) > 1, "jitter must spread retries"
    assert backoff_seconds(20, 1.0, 60.0, jitter=False) == 60.0


def test_priority_classes_parse_names_and_refuse_anything_else():
    assert PriorityClass.parse("urgent") is PriorityClass.URGENT
    assert PriorityClass.parse("BULK") is PriorityClass.BULK
    assert PriorityClass.URGENT > PriorityClass.NORMAL > PriorityClass.BULK
    with pytest.raises(ValueError, match="use one of"):
        PriorityClass.parse("asap")


def test_every_state_is_in_the_transition_table_and_finished_states_are_final():
    assert set(ALLOWED_TRANSITIONS) == set(JobState.values)
    assert ALLOWED_TRANSITIONS[JobState.SUCCEEDED] == frozenset()
    assert ALLOWED_TRANSITIONS[JobState.CANCELLED] == frozenset()
    with pytest.raises(ledger.IllegalTransition):
        ledger.transition(
            "00000000-0000-0000-0000-000000000000", JobState.QUEUED, only_from=[JobState.SUCCEEDED]
        )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: enqueue("no.such.task"), "No job is registered"),
        (lambda: enqueue(tasks.record), "do not fit"),
        (lambda: enqueue(tasks.record, "/tmp/x", unknown=1), "do not fit"),
        (lambda: enqueue(tasks.record, object()), "must be JSON"),
        (lambda: enqueue(tasks.record, "x" * 300_000), "the limit is"),
        (lambda: enqueue(tasks.record, "/tmp/x", priority="asap"), "Unknown priority"),
        (lambda: enqueue_many(tasks.record, [("/tmp/x",), ()]), "Call 1: Arguments do not fit"),
        (lambda: enqueue_many(tasks.record, [("/tmp/x",)], publish_batch_size=0), "publish_batch_size"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_writes_nothing(call, message):
    from jobs.models import Job

    with pytest.raises(EnqueueError, match=message):
        call()
    assert Job.objects.count() == 0


def _ledger_row(state: JobState):
    from jobs.models import Job

    return Job.objects.create(
        task_name="tests.record", args=[], kwargs={}, queue="default", priority=5, state=state
    )


@pytest.mark.django_db(transaction=True)
def test_the_hot_path_statements_are_prepared_again_on_a_new_connection():
    from django.db import connection

    from jobs.models import Job

    rows = [_ledger_row(JobState.QUEUED) for _ in range(3)]
    for row in rows:
        lease = ledger.Lease(row.id)
        job = lease.take_and_start("celery@test")
        assert lease.held and job.attempts == 1
        assert lease.succeed_and_release(job, {"n": 1}) == 1
        with connection.cursor() as cursor:  # the lease was given back
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert cursor.fetchone()[0] == 0
        connection.close()  # the next job starts on a new connection, with nothing prepared

    assert [Job.objects.get(pk=r.id).state for r in rows] == [JobState.SUCCEEDED] * 3
    assert Job.objects.get(pk=rows[0].id).result == {"n": 1}


@pytest.mark.django_db(transaction=True)
def test_a_busy_lease_starts_nothing():
    import psycopg2
    from django.db import connection

    from jobs.models import Job

    row = _ledger_row(JobState.QUEUED)
    other = psycopg2.connect(**connection.get_connection_params())
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ledger.lock_key(row.id)])
        lease = ledger.Lease(row.id)
        assert lease.take_and_start("celery@test") is None
        assert not lease.held
        assert Job.objects.get(pk=row.id).state == JobState.QUEUED
    finally:
        other.close()


def test_raw_ledger_inserts_write_every_column_that_cannot_be_null():
    # enqueue and enqueue_many write new rows without Django's save; a NOT NULL
    # column added to Job must be added to what they write, or every enqueue fails.
    from jobs import services
    from jobs.models import Job

    written = set(services._NEW_ROW_COLUMNS) | set(services._NEW_ROW_CONSTANTS)
    required = {field.column for field in Job._meta.concrete_fields if not field.null}
    assert required - written == set()
    assert written <= {field.column for field in Job._meta.concrete_fields}


@pytest.mark.django_db(transaction=True)
def test_marking_jobs_queued_looks_them_up_by_primary_key_whatever_the_statistics_say():
    # With stale statistics (few pending rows when last analyzed) or a cached generic
    # plan, the relay's partial index on pending rows looks cheapest, and each mark
    # would scan every pending row: thousands of them after a broker outage.
    from django.db import connection

    ledger.mark_queued(["00000000-0000-0000-0000-000000000000"], 0, timezone.now())  # prepares it
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute("SET enable_seqscan = off")  # the test table is small: choose among indexes
        try:
            cursor.execute(
                "EXPLAIN EXECUTE jobs_mark_queued(now(), ARRAY['00000000-0000-0000-0000-000000000000'], 0, now())"
            )
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET plan_cache_mode")
            cursor.execute("RESET enable_seqscan")
    assert "jobs_job_pkey" in plan
    assert "job_pending_created_idx" not in plan


@pytest.mark.django_db(transaction=True)
def test_hot_path_plans_made_while_the_ledger_is_empty_stay_index_lookups():
    # A prepared statement keeps its generic plan. Made while the ledger is nearly
    # empty, a sequential scan looks cheapest, and it would stay one as the ledger
    # grows to millions of rows.
    from django.db import connection

    rows = [_ledger_row(JobState.PENDING) for _ in range(3)]
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")  # every EXECUTE uses the kept plan
    try:
        for row in rows:  # the platform's own calls make (and keep) the plans
            assert ledger.mark_queued([row.id], 0, timezone.now()) == 1
            lease = ledger.Lease(row.id)
            job = lease.take_and_start("celery@test")
            assert lease.succeed_and_release(job, None) == 1
        plans = {}
        with connection.cursor() as cursor:
            for name, args in [
                ("jobs_mark_queued", "now(), ARRAY[%s], 0, now()"),
                ("jobs_take_and_start", "1, now(), 'w', %s, ARRAY['queued'], true"),
                ("jobs_succeed_and_release", "NULL, now(), %s, 1, 1"),
            ]:
                cursor.execute(f"EXPLAIN EXECUTE {name}({args})", [str(row.id)])
                plans[name] = "\n".join(line for (line,) in cursor.fetchall())
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET plan_cache_mode")
    for name, plan in plans.items():
        assert "Seq Scan on jobs_job" not in plan, f"{name}:\n{plan}"
        assert "jobs_job_pkey" in plan, f"{name}:\n{plan}"


@pytest.mark.django_db
def test_jobs_from_enqueue_many_hold_what_their_rows_hold():
    from jobs.models import Job

    (job,) = enqueue_many(tasks.record, [("/tmp/x",)])
    row = Job.objects.get(pk=job.id)
    for field in Job._meta.concrete_fields:
        assert getattr(job, field.attname) == getattr(row, field.attname), field.name
    job.save()  # an ordinary Job: saving it again works
    # The builder sets attributes directly: a name that is no field must not pass.
    with pytest.raises(TypeError, match="no field"):
        ledger.job_factory(queue="default")(queu="emails")
    with pytest.raises(TypeError, match="no field"):
        ledger.job_factory(queu="emails")


@pytest.mark.parametrize("frame_max", [131072, 4096])
def test_publish_frames_are_byte_for_byte_what_py_amqp_writes(frame_max):
    import datetime
    import decimal
    import uuid

    import amqp
    from amqp import spec
    from amqp.method_framing import frame_writer
    from amqp.serialization import dumps

    from jobs.frames import PublishFrames
    from jobs.models import Job
    from jobs.publisher import build_message

    class Connection:
        def __init__(self):
            self.frame_max, self.bytes_sent = frame_max, 0

    class Transport:
        def __init__(self):
            self.written = []

        def write(self, data):
            self.written.append(bytes(data))

    def job(*args, **kwargs):
        return Job(id=uuid.uuid4(), task_name="jobs.tests.record", args=list(args), kwargs=kwargs, priority=7)

    plain, unicode, long = (
        job(),
        job("/tmp/x", "é ü 中文 \U0001f600", n=-(2**40), ok=False, ratio=0.5),
        job("x" * 20_000),
    )
    builders = [
        lambda: build_message(plain),
        lambda: build_message(unicode),
        lambda: build_message(long),  # several body frames when frame_max is small
        lambda: amqp.Message(b"", content_type="text/plain"),  # no body frame at all
        lambda: amqp.Message("text body", application_headers={}),  # a str body: its encoding is added
        lambda: amqp.Message(
            b"{}",
            application_headers={
                "big": 2**31, "neg": -(2**31), "edge": 2**31 - 1, "f": 1.5, "d": decimal.Decimal("1.25"),
                "none": None, "when": datetime.datetime(2026, 11, 23, 12, 0), "nested": {"a": [1, "b", True]},
                "raw": b"\x00\xff", "empty": "", "zero": 0,
            },
            timestamp=1795000000, expiration="1000", message_id="m", type="t", user_id="guest",
            app_id="jobs", cluster_id="c", delivery_mode=2, priority=0, reply_to="",
        ),
    ]  # fmt: skip
    frames = PublishFrames(channel_id=3, frame_max=frame_max)
    for build in builders:
        transport = Transport()
        write = frame_writer(Connection(), transport)
        write(1, 3, spec.Basic.Publish, dumps("Bssbb", (0, "jobs", "default", True, False)), build())
        # A message of its own: py-amqp's writer changes the one it writes.
        assert frames.publish(build(), "jobs", "default", True) == b"".join(transport.written)
    assert len(frames.publish(build_message(long), "jobs", "default", True)) > 20_000
    with pytest.raises(amqp.exceptions.FrameSyntaxError):  # an AMQPError, as py-amqp raises
        frames.publish(amqp.Message(b"", application_headers={"x": object()}), "jobs", "default", True)


@pytest.mark.parametrize("frame_max", [131072, 4096])
def test_job_frames_are_the_frames_of_build_message(frame_max):
    """The publisher frames a job's message from its fields (JobFrames); the bytes
    must be those of the message build_message makes, framed the general way."""
    import random
    import uuid

    from jobs.frames import PublishFrames
    from jobs.models import Job
    from jobs.publisher import JobFrames, build_message

    rng = random.Random(7)

    def value(depth=0):
        kind = rng.randrange(7 if depth < 2 else 5)
        if kind == 0:
            return rng.randrange(-(2**40), 2**40)
        if kind == 1:
            return "".join(rng.choice("aé中\U0001f600'\"\\\n ") for _ in range(rng.randrange(12)))
        if kind == 2:
            return rng.choice([True, False, None])
        if kind == 3:
            return rng.random()
        if kind == 4:
            return "x" * rng.choice([0, 1100, 20_000])  # reprs cut at 1024; bodies over a frame
        if kind == 5:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {f"k{n}": value(depth + 1) for n in range(rng.randrange(4))}

    frames = PublishFrames(channel_id=3, frame_max=frame_max)
    job_frames = JobFrames(frames)
    for n in range(500):
        job = Job(
            id=rng.choice([uuid.uuid4()] * 9 + ["an-id-that-is-not-a-uuid"]),
            task_name=rng.choice(["jobs.tests.record", "invoices.generate_pdf", "tâche.é"]),
            args=[value() for _ in range(rng.randrange(4))],
            kwargs={f"a{i}": value() for i in range(rng.randrange(3))},
            priority=rng.choice([0, 1, 5, 9, 255, None]),
        )
        queue = rng.choice(["default", "emails"])
        expected = frames.publish(build_message(job), "jobs", queue, True)
        assert job_frames(job, "jobs", queue) == expected, (n, job.task_name, job.args, job.kwargs)


@pytest.mark.django_db(transaction=True)
def test_a_side_mark_that_gets_no_answer_gives_up_in_time(settings):
    """A database that stops answering the bulk publisher's side connection must not
    hold the publish up for ever."""
    import psycopg2
    from django.db import OperationalError, connection

    job = Job.objects.create(task_name="tests.record", queue="default", priority=5)  # pending, unpublished
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    blocker = psycopg2.connect(**params)
    try:
        with blocker.cursor() as cursor:  # holds the row's lock: the mark's UPDATE waits
            cursor.execute("SELECT 1 FROM jobs_job WHERE id = %s FOR UPDATE", [str(job.id)])
        marks = ledger.BackgroundMarks()  # connected with the default timeout
        settings.JOBS_PUBLISH_TIMEOUT_SECONDS = 0.5
        marks.mark([job.id], 0, timezone.now())
        started = time.monotonic()
        with pytest.raises((OperationalError, psycopg2.OperationalError), match="did not answer in time"):
            marks.close()
        assert time.monotonic() - started < 3
    finally:
        blocker.close()


@pytest.mark.django_db
def test_an_error_while_streaming_the_copy_comes_out_as_itself_and_writes_nothing(monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from jobs import services
    from jobs.models import Job

    real = services._new_row_values
    seen = []

    def values(job, payload=None):
        seen.append(job)
        if len(seen) == 500:  # well into the COPY, after earlier rows were sent
            raise SoftTimeLimitExceeded()
        return real(job, payload)

    monkeypatch.setattr(services, "_new_row_values", values)
    with pytest.raises(SoftTimeLimitExceeded):  # not psycopg2's "error in .read() call"
        enqueue_many(tasks.record, [("/tmp/x",)] * 1000)
    assert not Job.objects.exists()


@pytest.fixture
def idle_publisher(monkeypatch):
    """The process's publisher as a new process has it: no channel, not marked down,
    a lock of its own (a thread a test leaves hanging keeps the one it holds)."""
    import threading

    from jobs import publisher

    monkeypatch.setattr(publisher, "_lock", threading.Lock())
    monkeypatch.setattr(publisher, "_shared", None)
    monkeypatch.setattr(publisher, "_broker_down_until", 0.0)
    return publisher


class FakeChannel:
    """Stands in for publisher._ConfirmChannel; each one made is kept in `opened`."""

    broken = False
    opened: list

    def __init__(self, timeout):
        type(self).opened.append(self)

    def close(self):
        pass


def a_job():
    import uuid

    from jobs.models import Job

    return Job(id=uuid.uuid4(), task_name="jobs.tests.record", queue="default", args=[], kwargs={})


def test_a_failed_publish_marks_the_broker_down_and_drops_its_channel_before_letting_go(
    idle_publisher, monkeypatch
):
    """Threads of a process take turns on one publisher. When a publish fails, the
    thread waiting for the publisher must find the broker marked down as it gets it,
    never the failed channel: that thread would wait out a timeout of its own on it,
    and the failed thread could then drop the fresh channel that thread opened."""
    import threading

    publisher = idle_publisher

    class RefusedChannel(FakeChannel):
        opened = []

        def send(self, jobs, timeout):
            raise ConnectionRefusedError("the broker is down")

    class SeenOnRelease:
        """The publisher's lock, noting what the next holder would find."""

        def __init__(self):
            self.lock, self.seen = threading.Lock(), []

        def acquire(self, timeout=-1):
            return self.lock.acquire(timeout=timeout)

        def release(self):
            self.seen.append((publisher.broker_marked_down(), publisher._shared))
            self.lock.release()

    lock, opened = SeenOnRelease(), RefusedChannel.opened
    monkeypatch.setattr(publisher, "_ConfirmChannel", RefusedChannel)
    monkeypatch.setattr(publisher, "_lock", lock)

    job = a_job()
    assert publisher.publish_jobs([job]) == []
    assert len(opened) == 2, "a kept channel that fails is replaced once"
    assert lock.seen == [(True, None)]
    assert publisher.publish_jobs([job]) == [] and len(opened) == 2, "marked down: no attempt"


def test_the_reliability_report_fails_a_parametrized_test_if_any_of_its_cases_failed(tmp_path):
    from jobs.testing.report import ReliabilityReport

    report = ReliabilityReport()
    for passed in (True, False, True):  # the cases of one parametrized test, in order
        report.record("S9", "scenario", "injection", "observed", "test_cases")
        report.outcome("test_cases", passed)
    report.record("1", "scenario", "injection", "observed", "test_plain")
    report.outcome("test_plain", True)
    report.record("2", "scenario", "injection", "observed", "test_never_ran")
    report.write(tmp_path / "reliability.md", "make test")

    text = (tmp_path / "reliability.md").read_text()
    assert "| FAIL | `test_cases` |" in text
    assert "| pass | `test_plain` |" in text
    assert "| not run | `test_never_ran` |" in text


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_answers_nothing_after_the_handshake_fails_the_publish_in_time(
    idle_publisher, settings, monkeypatch
):
    """Opening the publisher's channel waits for RabbitMQ's answers: a broker that
    hangs right after the connection handshake must fail the publish within its
    timeout (the job stays pending for the relay), not hold the publisher forever."""
    import threading

    import amqp

    publisher = idle_publisher
    settings.JOBS_PUBLISH_TIMEOUT_SECONDS = 0.5
    # The real connection to the real broker, whose Channel.Open then gets no answer.
    monkeypatch.setattr(amqp.Channel, "open", lambda channel: channel.connection.drain_events())
    job = a_job()
    published = []
    thread = threading.Thread(target=lambda: published.append(publisher.publish_jobs([job])), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(10)

    assert not thread.is_alive(), "the publish still waits for the broker"
    assert published == [[]] and time.monotonic() - started < 3
    assert publisher.broker_marked_down() and publisher._shared is None


@pytest.mark.broker  # a real connection to the broker under test
def test_closing_a_publisher_connection_waits_at_most_half_a_second_for_the_broker():
    """The publisher closes a failed connection with the publisher held; over TLS the
    socket's unwrap waits for the broker, so the socket gets a short timeout first
    (a socket left blocking by a failed publish would wait forever)."""
    from jobs import publisher

    channel = publisher._ConfirmChannel(timeout=1.0)
    transport = channel.connection.connection.transport  # py-amqp's, which holds the socket
    socket_ = transport.sock
    socket_.settimeout(None)  # as a publish that failed leaves it
    seen = []
    collect = channel.connection.collect
    channel.connection.collect = lambda: (seen.append(socket_.gettimeout()), collect())
    channel.close()
    assert seen == [0.5]
    assert transport.sock is None, "the connection is gone"


@pytest.mark.django_db  # in a transaction: the chunks are marked inline, by the patched _mark_queued
def test_chunks_left_on_a_channel_another_thread_closed_go_to_the_relay_and_spare_the_new_channel(
    idle_publisher, monkeypatch
):
    """A bulk publish lets the publisher go between chunks. If another thread's publish
    fails meanwhile, it drops the channel this one's unconfirmed chunks were sent on.
    The rest of this publish is left to the relay, without opening a channel for it
    or dropping one another thread has opened since."""
    publisher = idle_publisher

    class UnconfirmedChannel(FakeChannel):
        opened = []

        def send(self, jobs, timeout):
            return {len(self.opened)}

        def settle(self, tags, jobs, deadline):
            return False  # nothing confirmed yet

    opened = UnconfirmedChannel.opened

    def another_thread_fails(jobs, published_since):
        publisher._drop_channel()  # what a failed publish in another thread does, marking the broker down
        publisher._broker_down_until = time.monotonic() + 60
        publisher._shared = UnconfirmedChannel(None)  # and a third thread has opened a new one since

    monkeypatch.setattr(publisher, "_ConfirmChannel", UnconfirmedChannel)
    monkeypatch.setattr(publisher, "_mark_queued", another_thread_fails)
    jobs = [a_job() for _ in range(4)]

    # force: as the relay publishes, which a broker marked down does not stop
    assert publisher.publish_jobs(jobs, force=True, chunk_size=2) == []
    assert len(opened) == 2, "no channel was opened for the rest of the publish"
    assert publisher._shared is opened[1], "the channel another thread opened is left alone"
