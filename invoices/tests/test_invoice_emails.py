"""Invoice emails (invoices.notifications) against a real SMTP server with a real worker:
which email, when, once; and a customer's bad address never turns "Mark as paid" into
an error page."""

import datetime

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from emails.models import EmailStatus, EmailTemplate, OutgoingEmail
from invoices import notifications, services
from invoices.models import Customer, Invoice, InvoiceStatus
from invoices.tests.factories import make_customer, make_invoice
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import finished

pytestmark = pytest.mark.django_db(transaction=True)

INJECTING = "anna@example.com\nBcc: victim@example.com"


def test_invoice_pdf_is_emailed_with_its_attachment_intact(worker, smtp):
    invoice = make_invoice(lines=2)

    job = services.request_pdf(invoice, email=True)

    message = wait_for(lambda: smtp.received, message="the invoice email")[0]
    assert Job.objects.get(pk=job.id).state == JobState.SUCCEEDED
    invoice.refresh_from_db()
    email = OutgoingEmail.objects.get(template=EmailTemplate.INVOICE_ISSUED)
    assert finished(email.job_id).state == JobState.SUCCEEDED
    assert message["Message-ID"] == email.message_id
    assert message["To"] == invoice.customer.email
    assert message["Subject"] == f"Invoice {invoice.number}"
    assert invoice.number in message.get_body(("plain",)).get_content()
    assert "<strong>" in message.get_body(("html",)).get_content()
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == f"{invoice.number}.pdf"
    with default_storage.open(invoice.pdf.name, "rb") as fh:
        assert attachment.get_content() == fh.read()
    email.refresh_from_db()
    assert email.status == EmailStatus.SENT and email.sent_at is not None


def test_overdue_reminders_are_sent_once_per_invoice_per_day(worker, smtp):
    customer = make_customer()
    today = timezone.localdate()
    overdue = make_invoice(customer, issue_date=today - datetime.timedelta(days=30))
    make_invoice(customer, issue_date=today)  # not due yet
    Invoice.objects.update(status=InvoiceStatus.ISSUED)  # issued long ago (no new event now)

    assert notifications.queue_overdue_reminders(today) == 1
    assert notifications.queue_overdue_reminders(today) == 0
    assert notifications.queue_overdue_reminders(today + datetime.timedelta(days=1)) == 1

    reminders = OutgoingEmail.objects.filter(template=EmailTemplate.PAYMENT_REMINDER)
    wait_for(lambda: reminders.filter(status=EmailStatus.SENT).count() == 2, message="two reminders")
    assert {m["Subject"] for m in smtp.received} == {f"Reminder: invoice {overdue.number} is overdue"}
    assert len(smtp.received) == 2


def test_a_reminder_not_sent_on_its_day_is_not_sent_the_next(own_worker, smtp):
    customer = make_customer()
    yesterday = timezone.localdate() - datetime.timedelta(days=1)
    make_invoice(customer, issue_date=yesterday - datetime.timedelta(days=30))
    Invoice.objects.update(status=InvoiceStatus.ISSUED)
    assert notifications.queue_overdue_reminders(yesterday) == 1  # the workers were down all that day
    email = OutgoingEmail.objects.get(template=EmailTemplate.PAYMENT_REMINDER)
    job = Job.objects.get(pk=email.job_id)
    assert timezone.localtime(job.expires_at) == timezone.make_aware(
        datetime.datetime.combine(yesterday + datetime.timedelta(days=1), datetime.time.min)
    )

    own_worker.start()

    job = finished(job.id)
    assert job.state == JobState.CANCELLED and job.last_error_class == "jobs.errors.JobExpired"
    email = wait_for(
        lambda: OutgoingEmail.objects.filter(pk=email.pk, status=EmailStatus.FAILED).first(), message="failed"
    )
    assert email.last_error.startswith("Not sent: JobExpired: Not started by its deadline")
    assert smtp.received == []


def test_payment_received_email_follows_mark_paid(worker, smtp):
    invoice = make_invoice()
    Invoice.objects.filter(pk=invoice.pk).update(status=InvoiceStatus.ISSUED)
    assert services.mark_paid(invoice)
    assert not services.mark_paid(invoice), "paid once"

    message = wait_for(lambda: smtp.received, message="the payment email")[0]
    assert message["Subject"] == f"Payment received for invoice {invoice.number}"
    assert OutgoingEmail.objects.filter(template=EmailTemplate.PAYMENT_RECEIVED).count() == 1


def _paid_in_the_admin(client, invoice):
    return client.post(
        reverse("admin:invoices_invoice_changelist"),
        {"action": "mark_paid", "_selected_action": [invoice.pk]},
        follow=True,
    )


@pytest.mark.parametrize("address", [INJECTING, "anna@example.com\r\nBcc: victim@example.com"])
def test_mark_paid_in_the_admin_records_the_payment_and_says_the_email_was_refused(worker, client, address):
    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw"))
    invoice = make_invoice()
    Invoice.objects.filter(pk=invoice.pk).update(status=InvoiceStatus.ISSUED)
    # Written by a path that skips the form's validation.
    Customer.objects.filter(pk=invoice.customer_id).update(email=address)

    response = _paid_in_the_admin(client, invoice)

    assert response.status_code == 200
    shown = [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]
    assert ("success", "1 invoice(s) marked paid.") in shown
    (warning,) = [text for level, text in shown if level == "warning"]
    assert warning.startswith(
        f"Invoice {invoice.number} is marked paid. "
        f"The payment-received email for invoice {invoice.number} was not queued: The to address"
    )
    assert "contains a line break" in warning and "Correct the customer's email address" in warning
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    email = OutgoingEmail.objects.get(key=f"payment-received:{invoice.pk}")
    assert email.status == EmailStatus.FAILED and email.job_id is None and email.to == []
    assert "contains a line break" in email.last_error and repr(address) in email.last_error
    assert not Job.objects.filter(task_name="emails.send").exists(), "nothing to send, no send job"

    # The failed email is visible in the admin, with its reason.
    page = client.get(reverse("admin:emails_outgoingemail_change", args=[email.pk])).content.decode()
    assert "contains a line break" in page


def test_mark_paid_in_the_admin_with_a_good_address_queues_the_email(worker, smtp, client):
    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw"))
    invoice = make_invoice()
    Invoice.objects.filter(pk=invoice.pk).update(status=InvoiceStatus.ISSUED)

    response = _paid_in_the_admin(client, invoice)

    shown = [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]
    assert shown == [("success", "1 invoice(s) marked paid.")]
    email = OutgoingEmail.objects.get(key=f"payment-received:{invoice.pk}")
    assert email.job_id is not None
    wait_for(
        lambda: OutgoingEmail.objects.filter(pk=email.pk, status=EmailStatus.SENT).exists(), message="sent"
    )


def test_one_customer_with_a_bad_address_does_not_hold_back_the_other_reminders(worker, smtp):
    today = timezone.localdate()
    long_ago = today - datetime.timedelta(days=30)
    bad = make_invoice(make_customer("Bad", "bad@example.com"), issue_date=long_ago)
    make_invoice(make_customer("Good", "good@example.com"), issue_date=long_ago)
    Invoice.objects.update(status=InvoiceStatus.ISSUED)
    Customer.objects.filter(pk=bad.customer_id).update(email=INJECTING)

    assert notifications.queue_overdue_reminders(today) == 1

    reminders = OutgoingEmail.objects.filter(template=EmailTemplate.PAYMENT_REMINDER)
    assert reminders.exclude(status=EmailStatus.FAILED).get().to == ["good@example.com"]
    wait_for(lambda: reminders.filter(status=EmailStatus.SENT).exists(), message="the good reminder")
    assert [m["To"] for m in smtp.received] == ["good@example.com"]
    refused = reminders.get(status=EmailStatus.FAILED)
    assert refused.key == f"payment-reminder:{bad.pk}:{today.isoformat()}"
    assert "line break" in refused.last_error and not refused.job_id


def test_issuing_emails_the_invoice_once_its_pdf_is_stored_and_asking_again_sends_no_second(worker, smtp):
    invoice = make_invoice(lines=1)

    assert services.issue_invoice(invoice)

    message = wait_for(lambda: smtp.received, message="the invoice email")[0]
    assert message["Subject"] == f"Invoice {invoice.number}"
    invoice.refresh_from_db()
    assert [a.get_filename() for a in message.iter_attachments()] == [f"{invoice.number}.pdf"]
    # "Generate PDF and email it" for the same version finds the email already queued.
    pdf_job = services.request_pdf(invoice, email=True)
    wait_for(
        lambda: Job.objects.filter(pk=pdf_job.id, state=JobState.SUCCEEDED).exists(), message="the PDF job"
    )
    assert OutgoingEmail.objects.filter(template=EmailTemplate.INVOICE_ISSUED).count() == 1
    assert len(smtp.received) == 1
