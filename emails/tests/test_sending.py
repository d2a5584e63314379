"""Email jobs against a real SMTP server (aiosmtpd) with a real worker."""

import datetime

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from emails import services
from emails.models import EmailStatus, EmailTemplate, OutgoingEmail
from jobs.broker.publisher import publish_jobs
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import finished

pytestmark = pytest.mark.django_db(transaction=True)


def queue_test_email(**overrides) -> OutgoingEmail:
    fields = {
        "to": ["anna@example.com"],
        "subject": "Hello",
        "template": EmailTemplate.TEST,
        "context": {"requested_by": "tests"},
    }
    return services.queue_email(**{**fields, **overrides})


def test_4xx_twice_then_success_delivers_exactly_one_message(worker, smtp):
    smtp.reset(["451 4.3.0 mailbox busy, try later", "452 4.2.2 over quota for now"])
    email = queue_test_email()

    assert finished(email.job_id).state == JobState.SUCCEEDED

    email.refresh_from_db()
    assert email.status == EmailStatus.SENT
    assert email.attempts == 3
    assert len(smtp.by_message_id(email.message_id)) == 1
    assert smtp.answers == ["451 4.3.0 mailbox busy, try later", "452 4.2.2 over quota for now", "accept"]


def test_dropped_connection_is_retried(worker, smtp):
    smtp.reset(["drop"])
    email = queue_test_email()

    assert finished(email.job_id).state == JobState.SUCCEEDED
    email.refresh_from_db()
    assert email.attempts == 2
    assert len(smtp.by_message_id(email.message_id)) == 1


def test_5xx_ends_dead_at_once_with_the_servers_reply(worker, smtp, dead_letters):
    smtp.reset(["550 5.1.1 <anna@example.com>: recipient rejected"])
    email = queue_test_email()

    job = finished(email.job_id)

    assert job.state == JobState.DEAD
    assert job.attempts == 1
    assert "550 5.1.1 <anna@example.com>: recipient rejected" in job.last_error
    email.refresh_from_db()
    assert email.status == EmailStatus.FAILED
    assert "550 5.1.1" in email.last_error
    assert smtp.answers == ["550 5.1.1 <anna@example.com>: recipient rejected"]
    assert dead_letters.find(job.id)


def test_redelivered_job_of_a_sent_email_sends_no_second_message(worker, smtp):
    email = queue_test_email()
    job = finished(email.job_id)
    assert job.state == JobState.SUCCEEDED

    Job.objects.filter(pk=job.id).update(state=JobState.QUEUED)  # as if the ack was lost
    publish_jobs([job], force=True)

    wait_for(
        lambda: (
            "already sent"
            in str(
                Job.objects.filter(pk=job.id, state=JobState.SUCCEEDED)
                .values_list("result", flat=True)
                .first()
            )
        ),
        message="the redelivery to finish",
    )
    assert len(smtp.by_message_id(email.message_id)) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject contains a line break"),
        ({"to": ["anna@example.com\nBcc: victim@example.com"]}, "contains a line break"),
        ({"reply_to": ["x@example.com\r\nX-Evil: 1"]}, "contains a line break"),
        ({"to": ["not-an-address"]}, "not a valid to address"),
        ({"to": []}, "at least one to address"),
        ({"template": "nope"}, "Unknown email template"),
    ],
)
def test_header_injection_and_bad_addresses_are_refused_before_any_job(fields, message):
    with pytest.raises(services.EmailInputError, match=message):
        queue_test_email(**fields)
    assert OutgoingEmail.objects.count() == 0
    assert Job.objects.count() == 0


@pytest.mark.django_db  # not transactional: the data migration's row is still there
def test_overdue_reminder_schedule_is_a_beat_entry_editable_in_the_admin(admin_client):
    from django_celery_beat.models import PeriodicTask

    entry = PeriodicTask.objects.get(task="emails.send_overdue_reminders")
    assert entry.crontab.hour == "8" and entry.enabled
    page = admin_client.get(reverse("admin:django_celery_beat_periodictask_change", args=[entry.pk]))
    assert page.status_code == 200 and "Daily overdue-invoice reminders" in page.content.decode()


def test_sending_is_throttled_by_the_configured_rate_limit(own_worker, worker_env, smtp):
    own_worker.env = {**worker_env, "EMAILS_RATE_LIMIT": "4/s"}
    own_worker.start()
    emails = [queue_test_email(subject=f"Bulk {n}") for n in range(9)]

    rows = OutgoingEmail.objects.filter(pk__in=[e.pk for e in emails])
    # The SMTP server sees a message before its row is marked sent: wait for the rows.
    wait_for(lambda: rows.filter(status=EmailStatus.SENT).count() == 9, timeout=30, message="nine sent")
    assert len(smtp.received) == 9
    sent = sorted(rows.values_list("sent_at", flat=True))
    # 4 per one-second window, across worker processes: nine emails need three
    # windows, so the last leaves more than a second after the first.
    assert sent[-1] - sent[0] > datetime.timedelta(seconds=1)
    assert "over the 4/s limit of task:emails.send" in own_worker.log()


def test_admin_preview_resend_and_test_email(worker, smtp, client):
    admin_user = User.objects.create_superuser("boss", email="boss@example.com", password="pw")
    client.force_login(admin_user)
    email = queue_test_email()
    finished(email.job_id)

    detail = client.get(reverse("admin:emails_outgoingemail_change", args=[email.pk])).content.decode()
    assert "If you can read it, SMTP delivery works." in detail and "srcdoc=" in detail

    client.post(
        reverse("admin:emails_outgoingemail_changelist"),
        {"action": "resend", "_selected_action": [email.pk]},
    )
    copy = OutgoingEmail.objects.exclude(pk=email.pk).get()
    assert copy.message_id != email.message_id and copy.subject == email.subject

    send_test = reverse("admin:emails_outgoingemail_send_test")
    assert client.get(send_test).status_code == 200
    assert OutgoingEmail.objects.count() == 2, "a GET sends nothing"
    client.post(send_test, {"to": "ops@example.com"})

    wait_for(lambda: len(smtp.received) == 3, message="original, resend and test email")
    assert sorted(m["To"] for m in smtp.received) == [
        "anna@example.com",
        "anna@example.com",
        "ops@example.com",
    ]


def test_an_email_whose_job_rabbitmq_dead_lettered_is_marked_failed_with_the_reason(
    own_worker, keeper, platform
):
    """A job that ends dead outside its body (here RabbitMQ dead-letters its message, as
    a quorum queue's delivery limit does) runs the same on_dead hook as one whose body
    failed: the email does not stay `queued` for ever. No worker runs here."""
    from kombu import Producer

    from jobs.topology import Workload, dead_letter_exchange

    email = queue_test_email()
    wait_for(lambda: Job.objects.filter(pk=email.job_id, state=JobState.QUEUED).exists(), message="published")
    with platform.connection_for_write() as conn:
        # Its real message would wait for the next test's worker, which would find no
        # email (this test's rows are gone by then) and record a stray dead job.
        conn.default_channel.queue_purge(Workload.EMAILS.value)
        Producer(conn.default_channel).publish(
            b"[[1], {}, {}]",
            exchange=dead_letter_exchange(),
            routing_key="emails",
            content_type="application/json",
            content_encoding="utf-8",
            headers={
                "id": str(email.job_id),
                "task": "emails.send",
                "x-delivery-count": 20,
                "x-death": [{"reason": "delivery_limit", "queue": "emails", "count": 1, "exchange": "jobs"}],
            },
            delivery_mode=2,
        )

    email = wait_for(
        lambda: OutgoingEmail.objects.filter(pk=email.pk, status=EmailStatus.FAILED).first(),
        timeout=30,
        message="the email marked failed",
    )
    assert "the quorum queue's delivery limit" in email.last_error
    assert Job.objects.get(pk=email.job_id).state == JobState.DEAD
