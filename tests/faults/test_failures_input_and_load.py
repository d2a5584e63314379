"""Scenarios 7-10 of the fault suite: SMTP failures, poison, bad input, and load."""

import json
import time
import uuid

import pytest
from kombu import Exchange, Producer

import jobs
from emails import services as email_services
from emails.models import EmailStatus, EmailTemplate, OutgoingEmail
from invoices.tasks import generate_pdf
from invoices.tests.factories import make_invoice
from jobs.models import DeadLetter, Job, JobState
from jobs.services import EnqueueError
from jobs.testing import wait_for
from jobs.testing.finishing import finished
from jobs.tests import tasks

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]


def send_one(smtp, script) -> tuple[OutgoingEmail, Job, int]:
    """Queues one email with the SMTP server scripted; (email, job, copies the server accepted)."""
    smtp.reset(script)
    email = email_services.queue_email(
        to=["anna@example.com"],
        subject="Fault",
        template=EmailTemplate.TEST,
        context={"requested_by": "faults"},
    )
    job = finished(email.job_id, timeout=60)
    email.refresh_from_db()
    return email, job, len(smtp.by_message_id(email.message_id))


def test_smtp_4xx_5xx_and_a_dropped_connection(worker, smtp, reliability):
    busy, busy_job, busy_copies = send_one(smtp, ["451 4.3.0 try again later"])
    rejected, rejected_job, rejected_copies = send_one(smtp, ["550 5.1.1 recipient rejected"])
    dropped, dropped_job, dropped_copies = send_one(smtp, ["drop"])

    assert (busy_job.state, busy.status, busy.attempts, busy_copies) == (
        JobState.SUCCEEDED,
        EmailStatus.SENT,
        2,
        1,
    )
    assert (rejected_job.state, rejected.status, rejected.attempts, rejected_copies) == (
        JobState.DEAD, EmailStatus.FAILED, 1, 0,
    )  # fmt: skip
    assert "550 5.1.1 recipient rejected" in rejected_job.last_error
    assert (dropped_job.state, dropped.status, dropped.attempts, dropped_copies) == (
        JobState.SUCCEEDED, EmailStatus.SENT, 2, 1,
    )  # fmt: skip
    reliability.record(
        "7", "SMTP 4xx, 5xx and a dropped connection",
        "the test SMTP server (aiosmtpd) answers 451, then 550, then closes the connection mid-DATA",
        "451: retried, sent once (2 attempts); 550: `dead` at once with the server's reply, email `failed`, "
        "nothing delivered; dropped: retried, sent once. Counted at the server by Message-ID",
        "test_smtp_4xx_5xx_and_a_dropped_connection",
    )  # fmt: skip


def test_poison_jobs_end_dead_and_the_worker_goes_on(own_worker, tmp_path, reliability):
    own_worker.start()
    raising = jobs.enqueue(tasks.always_transient, str(tmp_path / "raising"))
    killing = jobs.enqueue(tasks.exit_worker, str(tmp_path / "killing"))
    healthy = [jobs.enqueue(tasks.record, str(tmp_path / "healthy"), str(n)) for n in range(20)]

    raising, killing = finished(raising.id, timeout=60), finished(killing.id, timeout=60)
    for job in healthy:
        assert finished(job.id, timeout=60).state == JobState.SUCCEEDED

    assert raising.state == JobState.DEAD and raising.attempts == 3
    assert killing.state == JobState.DEAD and "dead-lettered as poison" in killing.last_error
    assert len(tasks.lines(str(tmp_path / "healthy"))) == 20
    reliability.record(
        "8", "Poison: a job that always raises, and one that kills its worker",
        "`tests.always_transient` (max_retries 2) and `tests.exit_worker` (`os._exit` every run, "
        "JOBS_MAX_LOST_RUNS=2), among 20 healthy jobs",
        f"the raising job ended `dead` after {raising.attempts} attempts; the killing job ended `dead` after "
        f"{killing.lost_runs} lost runs, as a dead letter; all 20 healthy jobs `succeeded` meanwhile",
        "test_poison_jobs_end_dead_and_the_worker_goes_on",
    )  # fmt: skip


def test_bad_input_ends_as_dead_letters_or_clear_errors_and_a_valid_job_still_runs(
    worker, keeper, platform, tmp_path, reliability
):
    marker = tmp_path / "pwned"
    ids = {name: str(uuid.uuid4()) for name in ("unknown", "undecodable", "pickle")}

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with platform.connection_for_write() as conn:
        producer = Producer(conn.default_channel, exchange=Exchange("jobs", type="direct"))
        headers = {"lang": "py"}
        producer.publish(
            json.dumps([[], {}, {}]),
            routing_key="default",
            content_type="application/json",
            content_encoding="utf-8",
            headers={**headers, "task": "no.such.job", "id": ids["unknown"]},
        )
        producer.publish(
            b"{broken",
            routing_key="default",
            content_type="application/json",
            content_encoding="utf-8",
            headers={**headers, "task": "tests.record", "id": ids["undecodable"]},
        )
        producer.publish([[Exploit()], {}, {}], routing_key="default", serializer="pickle",
                         headers={**headers, "task": "tests.record", "id": ids["pickle"]})  # fmt: skip
    with pytest.raises(EnqueueError, match="the limit is") as too_big:
        jobs.enqueue(tasks.record, "x" * (10 * 1024 * 1024))
    invalid = make_invoice(lines=1)
    invalid.lines.update(quantity=-1)
    invalid_job = jobs.enqueue(generate_pdf, invalid.id)

    letters = {
        name: wait_for(
            lambda i=i: DeadLetter.objects.filter(identity=i).first(), message=f"{name} dead letter"
        )
        for name, i in ids.items()
    }
    invalid_job = finished(invalid_job.id, timeout=60)
    valid = finished(jobs.enqueue(tasks.record, str(tmp_path / "valid")).id, timeout=60)

    assert "No job is registered as 'no.such.job'" in letters["unknown"].error
    assert "could not be decoded as JSON" in letters["undecodable"].error
    assert "application/x-python-serialize is not accepted" in letters["pickle"].error
    assert not marker.exists(), "the pickle was never deserialized"
    assert not Job.objects.filter(args__0__startswith="xxxx").exists()
    assert invalid_job.state == JobState.DEAD and "quantities must be positive" in invalid_job.last_error
    assert valid.state == JobState.SUCCEEDED and worker.running
    reliability.record(
        "9", "Bad input",
        "an unknown task name, a body that is not JSON, a pickle message (whose payload would write a "
        "marker file), 10 MB of arguments, an invoice with a negative quantity",
        "the first three became dead letters with their reason (the marker file stays absent); "
        f"10 MB was refused at enqueue: “{str(too_big.value)[:90]}…”; the invoice job ended `dead`: "
        f"“{invalid_job.last_error[:70]}…”; the worker stayed up and a valid job right after `succeeded`",
        "test_bad_input_ends_as_dead_letters_or_clear_errors_and_a_valid_job_still_runs",
    )  # fmt: skip


def test_load_of_10000_jobs_on_two_worker_processes(worker, tmp_path, reliability, capsys):
    path = str(tmp_path / "effects")
    started = time.monotonic()
    batch = jobs.enqueue_many(tasks.record, [(path, f"job-{n}") for n in range(10_000)])
    enqueued = time.monotonic()
    ids = [job.id for job in batch]

    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == 10_000,
        timeout=240,
        interval=1.0,
        message="10,000 jobs",
    )
    drained = time.monotonic()
    effects = tasks.lines(path)

    assert len(effects) == 10_000, f"{10_000 - len(effects)} lost"
    assert len(set(effects)) == 10_000, "a job's effect happened twice"
    assert not Job.objects.filter(pk__in=ids, attempts__gt=1).exists()
    throughput = 10_000 / (drained - started)
    with capsys.disabled():
        print(
            f"\nload: 10,000 jobs enqueued in {enqueued - started:.1f}s, all done after {drained - started:.1f}s "
            f"= {throughput:.0f} jobs/s end to end (2 prefork processes)"
        )
    reliability.record(
        "10", "Load: 10,000 jobs on 2 worker processes",
        "`jobs.enqueue_many` of 10,000 `tests.record` jobs; one worker, concurrency 2",
        f"0 lost, 0 duplicate effects, every job one attempt; enqueued in {enqueued - started:.1f} s, "
        f"all done in {drained - started:.1f} s ({throughput:.0f} jobs/s end to end)",
        "test_load_of_10000_jobs_on_two_worker_processes",
    )  # fmt: skip
