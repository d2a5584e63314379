"""Scenarios 1-6, 11-13 of the fault suite: killed workers, a restarted, absent, blocked
or frozen broker, a purged queue, terminated database sessions and a stopped Redis.
Each restores what it breaks."""

import datetime
import json
import os
import signal
import threading
import time
from decimal import Decimal

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.urls import reverse
from django.utils import timezone

import jobs
from invoices import services as invoice_services
from invoices.models import Invoice, InvoiceEvent, InvoiceEventType, InvoiceLine
from invoices.tasks import generate_pdf
from invoices.tests.factories import make_customer, make_invoice, make_invoice_reader
from jobs.ledger import without_a_live_run
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import FINAL, all_final
from jobs.testing.processes import background, manage_py
from jobs.tests import tasks
from tests.faults import faults

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]


def pdf_files(invoice: Invoice) -> list[str]:
    folder = os.path.join(settings.MEDIA_ROOT, "invoices", str(invoice.pk))
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def assert_one_pdf_each(invoices):
    for invoice in invoices:
        files = pdf_files(invoice)
        assert len(files) == 1 and files[0].endswith(".pdf"), f"{invoice.number}: {files}"
        generated = InvoiceEvent.objects.filter(invoice=invoice, type=InvoiceEventType.PDF_GENERATED).count()
        assert generated == 1, f"{invoice.number} rendered {generated} times"


@pytest.fixture
def relay(worker_env, tmp_path):
    """The real relay command, running for the test."""
    env = {**worker_env, "JOBS_RELAY_GRACE_SECONDS": "2", "JOBS_RELAY_INTERVAL_SECONDS": "0.5"}
    with background(manage_py("relay"), env, tmp_path / "relay.log", graceful=True) as process:
        yield process


def test_sigkill_of_the_pool_process_mid_pdf_gives_one_pdf(own_worker, reliability):
    invoice = make_invoice(lines=2500)  # renders for about a second
    own_worker.concurrency = 1
    own_worker.start()
    job = invoice_services.request_pdf(invoice)

    # Killed as soon as the ledger says started: the render then has about a second to
    # go on any machine, where a fixed wait could outlast a fast render.
    wait_for(
        lambda: Job.objects.filter(pk=job.id, state=JobState.STARTED).exists(), message="the render to start"
    )
    (pool_pid,) = own_worker.pool_pids()
    os.kill(pool_pid, signal.SIGKILL)

    (job,) = all_final([job.id], timeout=60)
    assert job.state == JobState.SUCCEEDED
    assert job.lost_runs == 1 and job.attempts == 2, "the kill landed mid-run and the job ran again"
    assert_one_pdf_each([invoice])
    assert not [f for f in pdf_files(invoice) if f.startswith(".tmp")], "no half-written file left"
    reliability.record(
        "1", "SIGKILL a worker's pool process in the middle of a PDF",
        "2,500-line invoice; `kill -9` of the prefork child once the job is `started`",
        f"redelivered and run again (attempts {job.attempts}, lost runs {job.lost_runs}); one PDF file, "
        "one `pdf_generated` event, no temporary file left",
        "test_sigkill_of_the_pool_process_mid_pdf_gives_one_pdf",
    )  # fmt: skip


def test_sigkill_of_the_whole_worker_requeues_prefetched_jobs(own_worker, reliability):
    customer = make_customer()
    invoices = [make_invoice(customer, lines=150) for _ in range(30)]
    own_worker.start()
    job_ids = [invoice_services.request_pdf(invoice).id for invoice in invoices]
    wait_for(
        lambda: Job.objects.filter(pk__in=job_ids, state=JobState.SUCCEEDED).count() >= 3,
        message="a few done",
    )

    os.killpg(own_worker.process.pid, signal.SIGKILL)  # main process and pool, no warm shutdown
    own_worker.process.wait(10)
    own_worker.process = None
    unfinished = Job.objects.filter(pk__in=job_ids).exclude(state=JobState.SUCCEEDED).count()
    own_worker.start()

    done = all_final(job_ids)
    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert_one_pdf_each(invoices)
    reliability.record(
        "2", "SIGKILL the whole worker (main process) while jobs are prefetched",
        "30 PDF jobs; `kill -9` of the worker's process group after 3 finished; a new worker started",
        f"{unfinished} jobs were unfinished at the kill; all 30 ended `succeeded`, one PDF each",
        "test_sigkill_of_the_whole_worker_requeues_prefetched_jobs",
    )  # fmt: skip


def test_rabbitmq_restart_while_1000_jobs_are_enqueued_and_consumed(worker, relay, tmp_path, reliability):
    path = str(tmp_path / "effects")
    job_ids, errors = [], []
    durations = []

    def enqueue_all():
        try:
            for n in range(1000):
                started = time.monotonic()
                job_ids.append(jobs.enqueue(tasks.record, path, f"job-{n}").id)
                durations.append(time.monotonic() - started)
                time.sleep(0.006)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    producer = threading.Thread(target=enqueue_all)
    producer.start()
    time.sleep(2.0)
    with faults.rabbitmq_stopped():
        time.sleep(3.0)
    producer.join(120)

    assert errors == [] and len(job_ids) == 1000, "every enqueue returned"
    done = all_final(job_ids, timeout=180)
    assert {job.state for job in done} == {JobState.SUCCEEDED}
    effects = tasks.lines(path)
    assert len(effects) == 1000 and len(set(effects)) == 1000, "each job's effect exactly once"
    reliability.record(
        "3", "Restart RabbitMQ while 1,000 jobs are enqueued and consumed",
        "`rabbitmqctl stop_app`, 3 s, `start_app`, 2 s into a paced stream of 1,000 single enqueues; "
        "worker, relay and enqueuer keep running",
        f"1,000 enqueues returned (slowest {max(durations) * 1000:.0f} ms); all 1,000 `succeeded`; "
        "1,000 distinct side effects, none twice",
        "test_rabbitmq_restart_while_1000_jobs_are_enqueued_and_consumed",
    )  # fmt: skip


def test_broker_down_for_20s_while_100_http_requests_enqueue(
    worker, relay, live_server, settings, reliability
):
    settings.CSRF_COOKIE_SECURE = settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain HTTP
    User.objects.create_superuser("clerk", "clerk@example.com", "a-long-test-password")
    customer = make_customer()
    invoices = [make_invoice(customer, lines=3) for _ in range(100)]
    session = requests.Session()
    session.get(f"{live_server.url}/admin/login/")
    login = session.post(
        f"{live_server.url}/admin/login/",
        data={"username": "clerk", "password": "a-long-test-password",
              "csrfmiddlewaretoken": session.cookies["csrftoken"], "next": "/admin/"},
    )  # fmt: skip
    assert login.ok and "sessionid" in session.cookies
    timings, answers = [], []

    with faults.rabbitmq_stopped():
        down_since = time.monotonic()
        for invoice in invoices:
            started = time.monotonic()
            response = session.post(
                f"{live_server.url}{reverse('invoices:request-invoice-pdf', args=[invoice.pk])}",
                headers={"X-CSRFToken": session.cookies["csrftoken"]},
                timeout=10,
            )
            timings.append(time.monotonic() - started)
            answers.append(response)
            time.sleep(0.1)
        pending = Job.objects.filter(state=JobState.PENDING, task_name="invoices.generate_pdf").count()
        time.sleep(max(0.0, 20.0 - (time.monotonic() - down_since)))

    assert [r.status_code for r in answers] == [202] * 100
    assert max(timings) < 2.0, f"slowest request {max(timings):.2f}s"
    assert pending == 100, "all waited in PostgreSQL while the broker was down"
    job_ids = [json.loads(r.content)["job"] for r in answers]
    done = all_final(job_ids, timeout=120)
    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert_one_pdf_each(invoices)
    reliability.record(
        "4", "RabbitMQ down for 20 s while the web app enqueues 100 jobs over HTTP",
        "`rabbitmqctl stop_app` for 20 s; 100 `POST /api/invoices/<id>/pdf` to a live server",
        f"100 × 202; slowest request {max(timings) * 1000:.0f} ms, median "
        f"{sorted(timings)[50] * 1000:.0f} ms; 100 jobs `pending` during the outage; after `start_app` the relay "
        "published them and all 100 `succeeded`, one PDF each",
        "test_broker_down_for_20s_while_100_http_requests_enqueue",
    )  # fmt: skip


def test_rabbitmq_blocking_publishers_holds_no_enqueue_past_its_own_timeout(
    worker, relay, tmp_path, settings, monkeypatch, reliability
):
    """Under a memory alarm RabbitMQ blocks publishers and no confirm comes. Eight
    threads (a web server's, sharing the process's publisher) enqueue at once: each
    must return within its own publish timeout, not one timeout per thread ahead of
    it, and every job waits in PostgreSQL until the alarm clears, then runs once."""
    from jobs.broker import publisher

    settings.JOBS_PUBLISH_TIMEOUT_SECONDS = 1.0
    # The failed publishes leave this process to the relay for a few seconds; the
    # next test has no relay, so that must end with this one.
    monkeypatch.setattr(publisher, "_broker_down_until", 0.0)
    path = str(tmp_path / "out")
    durations, ids, errors = [], [], []

    def enqueue_one(n):
        try:
            started = time.monotonic()
            ids.append(jobs.enqueue(tasks.record, path, f"t{n}").id)
            durations.append(time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    with faults.rabbitmq_blocking_publishers():
        threads = [threading.Thread(target=enqueue_one, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pending = Job.objects.filter(pk__in=ids, state=JobState.PENDING).count()

    assert errors == []
    assert max(durations) < 2.5, f"enqueue times {sorted(round(d, 2) for d in durations)}"
    assert pending == 8, "all waited in PostgreSQL while RabbitMQ blocked publishers"
    done = all_final(ids, timeout=60)
    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert sorted(tasks.lines(path)) == sorted(f"t{n}" for n in range(8))
    reliability.record(
        "11", "RabbitMQ blocks publishers (memory alarm) while 8 threads enqueue at once",
        "`rabbitmqctl set_vm_memory_high_watermark absolute 1`; JOBS_PUBLISH_TIMEOUT_SECONDS=1; 8 threads "
        "sharing one process's publisher each enqueue a job",
        f"every enqueue returned within {max(durations) * 1000:.0f} ms; 8 jobs `pending` during the alarm; "
        "once it cleared the relay published them and all 8 `succeeded`, one effect each",
        "test_rabbitmq_blocking_publishers_holds_no_enqueue_past_its_own_timeout",
    )  # fmt: skip


def test_a_frozen_rabbitmq_holds_no_enqueue_past_its_timeout_and_loses_nothing(
    worker, relay, tmp_path, settings, monkeypatch, reliability
):
    """RabbitMQ's process stopped (SIGSTOP): its port still accepts TCP connections
    but nothing answers. Enqueues paced over 7 s meet the kept connection (no confirm
    comes), the backoff after its failure, and new connections whose handshake gets
    no answer: each returns within its publish timeout or two, the jobs wait in
    PostgreSQL, and once RabbitMQ resumes each runs once, even those whose message
    it had taken before it froze."""
    from jobs.broker import publisher
    from project.celery import app

    settings.JOBS_PUBLISH_TIMEOUT_SECONDS = 1.0
    monkeypatch.setitem(app.conf, "broker_connection_timeout", 2.0)  # a new connection's handshake
    monkeypatch.setattr(publisher, "_broker_down_until", 0.0)  # the next test has no relay
    bound = max(settings.JOBS_PUBLISH_TIMEOUT_SECONDS, app.conf.broker_connection_timeout) + 0.5
    path = str(tmp_path / "out")
    warm = jobs.enqueue(tasks.record, path, "warm")  # the publisher's connection is open
    all_final([warm.id], timeout=30, worker=worker)
    durations, ids = [], []

    with faults.rabbitmq_frozen():
        for n in range(8):
            started = time.monotonic()
            ids.append(jobs.enqueue(tasks.record, path, f"f{n}").id)
            durations.append(time.monotonic() - started)
            time.sleep(max(0.0, 0.9 - durations[-1]))
        waiting = Job.objects.filter(pk__in=ids, state=JobState.PENDING).count()

    assert max(durations) < bound, f"enqueue times {[round(d, 2) for d in durations]}"
    assert waiting == 8, "all waited in PostgreSQL while RabbitMQ was frozen"
    done = all_final(ids, timeout=90, worker=worker)
    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert sorted(tasks.lines(path)) == sorted(["warm"] + [f"f{n}" for n in range(8)]), "each effect once"
    reliability.record(
        "12", "RabbitMQ frozen (SIGSTOP) while the app enqueues",
        "SIGSTOP of the RabbitMQ node's process for about 8 s, then SIGCONT; JOBS_PUBLISH_TIMEOUT_SECONDS=1, "
        "CELERY_BROKER_CONNECTION_TIMEOUT=2; "
        "8 single enqueues 0.9 s apart on a publisher whose connection was open",
        f"enqueue times {', '.join(f'{d * 1000:.0f}' for d in durations)} ms; all 8 `pending` while frozen; "
        "after SIGCONT the relay published them and all 8 `succeeded`, one effect each",
        "test_a_frozen_rabbitmq_holds_no_enqueue_past_its_timeout_and_loses_nothing",
    )  # fmt: skip


def test_jobs_whose_messages_a_purge_lost_are_rescued_by_the_relay_and_run_once(
    own_worker, no_relay, worker_env, tmp_path, reliability
):
    """Scenario 13: an operator purges a queue under jobs that wait and under one whose
    worker was killed mid-run, so RabbitMQ holds no message for any of them."""
    from project.celery import app

    long_one = make_invoice(lines=2500)  # renders for about a second
    own_worker.concurrency = 1
    own_worker.start()
    interrupted = invoice_services.request_pdf(long_one)
    wait_for(
        lambda: Job.objects.filter(pk=interrupted.id, state=JobState.STARTED).exists(),
        message="the render to start",
    )
    # At once: the render has about a second to go, where a fixed wait could outlast it.
    own_worker.kill()  # SIGKILL of the whole worker: its message goes back to the queue
    waiting = [make_invoice(lines=10) for _ in range(10)]
    ids = [invoice_services.request_pdf(invoice).id for invoice in waiting]
    with app.connection_for_write() as conn:
        purged = conn.default_channel.queue_purge("invoices")
    assert purged == 11, "the interrupted job's message and the ten waiting ones"
    # Fifteen minutes pass (JOBS_RESCUE_AFTER_SECONDS): the ledger's clocks are set
    # back, so that all 11 qualify at the relay's first pass. (Jobs that qualify at
    # different passes are rescued as their queue empties, which needs a worker.)
    long_ago = timezone.now() - datetime.timedelta(minutes=16)
    Job.objects.filter(pk__in=ids).update(queued_at=long_ago)
    Job.objects.filter(pk=interrupted.id).update(started_at=long_ago)
    wait_for(
        lambda: without_a_live_run([Job.objects.get(pk=interrupted.id)]),
        message="PostgreSQL to end the killed run's session, and its lease",
    )
    with background(manage_py("relay"), worker_env, tmp_path / "relay.log", graceful=True):
        wait_for(
            lambda: Job.objects.filter(pk__in=[*ids, interrupted.id], rescued_at__isnull=False).count() == 11,
            timeout=30,
            message="the relay's rescue of all 11",
        )
    own_worker.start()
    done = all_final([*ids, interrupted.id], timeout=90, worker=own_worker)
    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert_one_pdf_each([long_one, *waiting])
    interrupted = Job.objects.get(pk=interrupted.id)
    assert (interrupted.attempts, interrupted.lost_runs) == (2, 1), (
        "the killed run was counted, then run again"
    )
    assert "sent again the jobs whose messages looked lost" in (tmp_path / "relay.log").read_text()
    reliability.record(
        "13", "A queue purged by hand under waiting jobs and a job whose worker was killed mid-run",
        "`kill -9` of the worker during a 2,500-line PDF; 10 more PDF jobs enqueued with no worker; "
        "the `invoices` queue purged (11 messages); the ledger's clocks set back 16 minutes; the relay started",
        "the relay's rescue sent all 11 again (10 `queued`, 1 `started` with its lease free); a new worker ran "
        f"them: all 11 `succeeded`, one PDF each; the killed one at attempt {interrupted.attempts} with "
        f"{interrupted.lost_runs} lost run",
        "test_jobs_whose_messages_a_purge_lost_are_rescued_by_the_relay_and_run_once",
    )  # fmt: skip


def test_terminated_database_sessions_are_retried_and_the_ledger_stays_consistent(
    worker, worker_env, reliability
):
    customer = make_customer()
    invoices = [make_invoice(customer, lines=120) for _ in range(40)]
    job_ids = [j.id for j in jobs.enqueue_many(generate_pdf, [(invoice.id,) for invoice in invoices])]
    database = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        ours = cursor.fetchone()[0]  # the test's own session, which watches the ledger
    terminated = 0
    for _ in range(12):
        time.sleep(0.25)
        terminated += faults.terminate_connections(database, keep=(ours,))

    done = all_final(job_ids, timeout=120, worker=worker)
    states = {job.state for job in done}
    assert states == {JobState.SUCCEEDED}, [
        (j.id, j.state, j.last_error) for j in done if j.state != "succeeded"
    ]
    assert not Job.objects.filter(pk__in=job_ids, attempts=0).exists()
    assert_one_pdf_each(invoices)
    retried = sum(1 for job in done if job.attempts > 1)
    reliability.record(
        "5", "Terminate PostgreSQL connections while workers run",
        "40 PDF jobs; `pg_terminate_backend` on every session of the test database, 12 times in 3 s",
        f"{terminated} sessions terminated; {retried} jobs needed more than one attempt; all 40 `succeeded`, "
        "one PDF each, every ledger row final",
        "test_terminated_database_sessions_are_retried_and_the_ledger_stays_consistent",
    )  # fmt: skip


def test_cache_invalidation_waits_out_a_redis_outage(worker, client, reliability):
    client.force_login(make_invoice_reader())
    invoice = make_invoice(lines=1)
    url = reverse("invoices:customer-invoices-json", args=[invoice.customer_id])
    wait_for(lambda: not Job.objects.exclude(state__in=FINAL).exists(), message="creation's jobs")
    client.get(url)
    assert client.get(url)["X-Cache"] == "HIT"

    with faults.redis_stopped():
        InvoiceLine.objects.create(
            invoice=invoice, position=1, description="More", unit_price=Decimal("100.00")
        )
        job = Job.objects.filter(task_name="jobs.invalidate_cache").latest("created_at")
        wait_for(lambda: Job.objects.get(pk=job.id).attempts >= 2, timeout=30, message="the job to retry")
        during = client.get(url)
        retrying = Job.objects.get(pk=job.id)

    (job,) = all_final([job.id], timeout=60)
    after = client.get(url)
    assert during.status_code == 200 and during["X-Cache"] == "BYPASS"
    assert retrying.state in (JobState.RETRYING, JobState.STARTED) and "Connection" in retrying.last_error
    assert job.state == JobState.SUCCEEDED
    assert json.loads(after.content)["invoices"][0]["total"] == "132.01"
    reliability.record(
        "6", "Stop Redis",
        "`redis-cli shutdown nosave` while an edit enqueues its cache invalidation; restarted after it retried",
        f"the page was served uncached during the outage (X-Cache: BYPASS); the invalidation failed "
        f"{job.attempts - 1} time(s) with {retrying.last_error.split(':')[0]}, retried, and applied once Redis "
        "was back: the next response showed the edit",
        "test_cache_invalidation_waits_out_a_redis_outage",
    )  # fmt: skip
