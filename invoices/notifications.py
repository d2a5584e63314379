"""Invoice emails: issued (with its PDF), payment received, overdue reminders.

Composed here and queued with emails.services.queue_email, so the emails app knows
nothing of invoices. Each email has a key (the invoice's version, the invoice, or the
invoice and the day), so asking twice, or a redelivered job asking again, queues one.
"""

from __future__ import annotations

import datetime
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from emails.models import EmailTemplate, OutgoingEmail
from emails.services import EmailInputError, queue_email, record_refused_email
from invoices import selectors
from invoices.models import Invoice, InvoiceStatus
from jobs.errors import PermanentJobError, TransientJobError

logger = logging.getLogger(__name__)


def invoice_context(invoice: Invoice) -> dict:
    totals = selectors.invoice_totals(invoice)
    return {
        "customer_name": invoice.customer.name,
        "invoice_number": invoice.number,
        "total": str(totals.total),
        "currency": invoice.currency,
        "due_date": invoice.due_date.isoformat(),
        "seller_name": settings.INVOICE_SELLER_NAME,
    }


def queue_invoice_issued(invoice: Invoice, pdf_name: str, fingerprint: str) -> OutgoingEmail:
    """The invoice's PDF, emailed to its customer once per version of the invoice."""
    return queue_email(
        to=[invoice.customer.email],
        subject=f"Invoice {invoice.number}",
        template=EmailTemplate.INVOICE_ISSUED,
        context=invoice_context(invoice),
        attachments=[
            {"storage_name": pdf_name, "filename": f"{invoice.number}.pdf", "mimetype": "application/pdf"}
        ],
        key=f"invoice-issued:{invoice.id}:{fingerprint}",
    )


def email_issued_invoice(invoice_id: int) -> str:
    """The "invoice issued" subscriber: waits for the current PDF, then queues the email."""
    invoice = Invoice.objects.select_related("customer").filter(pk=invoice_id).first()
    if invoice is None:
        raise PermanentJobError(f"Invoice {invoice_id} does not exist; no email was queued.")
    document = selectors.invoice_document(invoice)
    fingerprint = selectors.document_fingerprint(document)
    if invoice.pdf_fingerprint != fingerprint or not invoice.pdf:
        raise TransientJobError(f"The PDF of invoice {invoice.number} is not stored yet; waiting for it.")
    email = queue_invoice_issued(invoice, invoice.pdf.name, fingerprint)
    return f"email {email.pk} queued"


def _queue_for_customer(invoice: Invoice, what: str, **fields) -> OutgoingEmail:
    """queue_email to the invoice's customer; a refused address (written by a path that
    skipped validation) is recorded as a failed email, then EmailInputError says so."""
    try:
        return queue_email(to=[invoice.customer.email], **fields)
    except EmailInputError as exc:
        refusal = (
            f"The {what} email for invoice {invoice.number} was not queued: {exc} Correct the "
            "customer's email address; the email is listed as failed under Outgoing emails."
        )
        fields.pop("priority", None)
        fields.pop("expires", None)
        record_refused_email(refusal, **fields)
        raise EmailInputError(refusal) from None


def queue_payment_received(invoice: Invoice) -> OutgoingEmail:
    """The "payment received" email, once per invoice.

    A customer address that cannot be emailed raises EmailInputError, after the email
    is recorded `failed` with the reason: the payment it reports stands (see
    invoices.services.mark_paid), and the refusal stays visible.
    """
    return _queue_for_customer(
        invoice,
        "payment-received",
        subject=f"Payment received for invoice {invoice.number}",
        template=EmailTemplate.PAYMENT_RECEIVED,
        context=invoice_context(invoice),
        key=f"payment-received:{invoice.id}",
    )


def _end_of(day: datetime.date) -> datetime.datetime:
    """The first moment after `day`, in the project's time zone."""
    return timezone.make_aware(datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time.min))


def queue_overdue_reminders(today: datetime.date | None = None) -> int:
    """Queues a reminder for every issued invoice past its due date; returns how many are new.

    The key carries the day, so running it twice on one day (beat and a manual run,
    or a redelivery) never sends two reminders for one invoice on the same day. A
    customer whose address cannot be emailed gets a `failed` reminder saying why, and
    the others still get theirs.
    """
    today = today or timezone.localdate()
    overdue = Invoice.objects.filter(status=InvoiceStatus.ISSUED, due_date__lt=today).select_related(
        "customer"
    )
    new = 0
    for invoice in overdue.iterator(chunk_size=200):
        key = f"payment-reminder:{invoice.id}:{today.isoformat()}"
        with transaction.atomic():
            if OutgoingEmail.objects.filter(key=key).exists():
                continue
            try:
                _queue_for_customer(
                    invoice,
                    "payment reminder",
                    subject=f"Reminder: invoice {invoice.number} is overdue",
                    template=EmailTemplate.PAYMENT_REMINDER,
                    context=invoice_context(invoice),
                    key=key,
                    priority="bulk",
                    # Not sent on its day, it is not sent the next (that day has its own).
                    expires=_end_of(today),
                )
            except EmailInputError as exc:
                logger.warning("invoice=%s payment reminder refused: %s", invoice.id, exc)
                continue
            new += 1
    return new
