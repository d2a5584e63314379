"""Addresses that could inject email headers are refused for every caller, and a
customer's bad address never turns "Mark as paid" into an error page."""

import datetime

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.urls import reverse

from emails import services
from emails.models import EmailStatus, EmailTemplate, OutgoingEmail
from invoices.models import Customer, Invoice, InvoiceStatus
from invoices.tests.factories import make_customer, make_invoice
from jobs.models import Job
from jobs.testing import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

INJECTING = "anna@example.com\nBcc: victim@example.com"


@pytest.mark.parametrize(
    ("field", "address", "words"),
    [
        ("to", "anna@example.com\nBcc: victim@example.com", "contains a line break"),
        ("to", "anna@example.com\rBcc: victim@example.com", "contains a line break"),
        ("to", "anna@example.com\r\n", "contains a line break"),
        ("to", "anna@exa\x00mple.com", "contains a NUL character"),
        ("cc", "anna@example.com\x00", "contains a NUL character"),
        ("reply_to", '"anna\x0bBcc: victim"@example.com', "contains a line break"),
        ("to", '"anna\x0cx"@example.com', "contains a line break"),
        ("to", '"anna\x01x"@example.com', "contains a control character ('\\x01')"),
        ("cc", '"anna\tx"@example.com', "contains a control character ('\\t')"),
        ("to", "anna@example.com\u2028Bcc: victim@example.com", "contains a line break"),
        ("to", "anna@example.com\x85Bcc: victim@example.com", "contains a line break"),
    ],
)
def test_queue_email_refuses_header_injection_in_any_address_before_writing(field, address, words):
    fields = {"to": ["bob@example.com"], field: [address]}

    with pytest.raises(services.EmailInputError) as raised:
        services.queue_email(subject="Hello", template=EmailTemplate.TEST, context={}, **fields)

    message = str(raised.value)
    assert words in message and "remove it" in message, message
    assert "\n" not in message and "\x00" not in message, "the sentence names the address escaped"
    assert OutgoingEmail.objects.count() == Job.objects.count() == 0


@pytest.mark.parametrize("subject", ["Hi\x00there", "Hi\u2028Bcc: victim@example.com", "Hi\x0bthere"])
def test_queue_email_refuses_a_subject_that_could_break_its_header(subject):
    with pytest.raises(services.EmailInputError, match="subject contains"):
        services.queue_email(to=["bob@example.com"], subject=subject, template=EmailTemplate.TEST)
    assert OutgoingEmail.objects.count() == Job.objects.count() == 0


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
    today = datetime.date(2026, 11, 23)
    long_ago = today - datetime.timedelta(days=30)
    bad = make_invoice(make_customer("Bad", "bad@example.com"), issue_date=long_ago)
    make_invoice(make_customer("Good", "good@example.com"), issue_date=long_ago)
    Invoice.objects.update(status=InvoiceStatus.ISSUED)
    Customer.objects.filter(pk=bad.customer_id).update(email=INJECTING)

    assert services.queue_overdue_reminders(today) == 1

    reminders = OutgoingEmail.objects.filter(template=EmailTemplate.PAYMENT_REMINDER)
    assert reminders.exclude(status=EmailStatus.FAILED).get().to == ["good@example.com"]
    wait_for(lambda: reminders.filter(status=EmailStatus.SENT).exists(), message="the good reminder")
    assert [m["To"] for m in smtp.received] == ["good@example.com"]
    refused = reminders.get(status=EmailStatus.FAILED)
    assert refused.key == f"payment-reminder:{bad.pk}:{today.isoformat()}"
    assert "line break" in refused.last_error and not refused.job_id
