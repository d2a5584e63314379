"""Writes of invoices, request side: numbering, creation, issuing, payment, PDF requests
and cache refreshes. These decide and enqueue; the jobs' work is in the worker-side
modules (rendering, notifications, cached_lists) that invoices.tasks runs."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

import jobs
from invoices import events, notifications, selectors
from invoices.cached_lists import invoice_list_namespace
from invoices.models import Customer, Invoice, InvoiceLine, InvoiceStatus
from invoices.tasks import generate_pdf
from jobs.cache import invalidate_on_commit
from jobs.models import Job, JobState
from jobs.tasks import invalidate_cache


def next_invoice_number(year: int) -> str:
    """The next number of `year` (INV-2026-000123), unique under concurrency.

    One upsert statement both creates the year's counter and increments it; the row
    lock it takes serializes concurrent callers until their transactions end, so
    two invoices never share a number.
    """
    table = connection.ops.quote_name("invoices_invoicenumbersequence")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (year, last) VALUES (%s, 1) "
            f"ON CONFLICT (year) DO UPDATE SET last = {table}.last + 1 RETURNING last",
            [year],
        )
        sequence = cursor.fetchone()[0]
    return f"INV-{year}-{sequence:06d}"


def assign_number(invoice: Invoice) -> None:
    if not invoice.number:
        invoice.number = next_invoice_number(invoice.issue_date.year)


@transaction.atomic
def create_invoice(
    customer: Customer,
    lines: Iterable[dict],
    *,
    issue_date: datetime.date | None = None,
    due_date: datetime.date | None = None,
    currency: str = "EUR",
    status: str = InvoiceStatus.ISSUED,
) -> Invoice:
    """Creates an invoice with its lines and a fresh number, in one transaction."""
    issue_date = issue_date or timezone.localdate()
    invoice = Invoice(
        customer=customer,
        issue_date=issue_date,
        due_date=due_date or issue_date + datetime.timedelta(days=14),
        currency=currency,
        status=status,
    )
    assign_number(invoice)
    invoice.save()
    InvoiceLine.objects.bulk_create(
        InvoiceLine(invoice=invoice, position=position, **line) for position, line in enumerate(lines)
    )
    events.record_created(invoice)
    invalidate_customer_invoice_lists(customer.id)
    if invoice.status == InvoiceStatus.ISSUED:
        events.publish_invoice_issued(invoice)
    return invoice


def _move_status(invoice: Invoice, source: InvoiceStatus, target: InvoiceStatus) -> bool:
    """Moves the invoice from `source` to `target` (a conditional UPDATE); False if it was not in `source`."""
    if not Invoice.objects.filter(pk=invoice.pk, status=source).update(status=target):
        return False
    invoice.status = target
    invalidate_customer_invoice_lists(invoice.customer_id)
    return True


@transaction.atomic
def issue_invoice(invoice: Invoice) -> bool:
    """Issues a draft invoice (publishing "invoice.issued"); False if it was not a draft."""
    if not _move_status(invoice, InvoiceStatus.DRAFT, InvoiceStatus.ISSUED):
        return False
    events.publish_invoice_issued(invoice)
    return True


def invalidate_customer_invoice_lists(customer_id: int) -> Job | None:
    """Enqueues the invalidation of a customer's cached invoice lists, on commit."""
    return invalidate_on_commit(namespace=invoice_list_namespace(customer_id))


@transaction.atomic
def request_pdf(invoice: Invoice, *, email: bool = False, priority: str | None = None) -> Job:
    """Enqueues the PDF job of the invoice as it is now; a double click gives one job.

    The job's key is the invoice's content fingerprint, so asking again for an
    unchanged invoice returns the job already asked for, and an edited invoice gets
    a new job and a new PDF. With `email`, the job emails the PDF to the customer
    once stored, in the transaction that stores it (invoices.rendering).
    """
    fingerprint = selectors.document_fingerprint(selectors.invoice_document(invoice))
    key = f"invoice-pdf:{invoice.id}:{fingerprint}" + (":email" if email else "")
    job = jobs.enqueue(generate_pdf, invoice.id, email_to_customer=email, key=key, priority=priority)
    Invoice.objects.filter(pk=invoice.pk).update(last_pdf_job=job)
    invoice.last_pdf_job = job
    events.record_pdf_requested(invoice, job, email=email)
    return job


def refresh_cached_lists(invoices: Iterable[Invoice]) -> int:
    """Enqueues an invalidation of the invoice lists of these invoices' customers.

    A unique job per customer: clicking again while one waits adds nothing.
    """
    customer_ids = {invoice.customer_id for invoice in invoices}
    with transaction.atomic():
        for customer_id in customer_ids:
            namespace = invoice_list_namespace(customer_id)
            jobs.enqueue(
                invalidate_cache,
                namespace=namespace,
                unique_key=f"cache-refresh:{namespace}",
                unique_states=(JobState.PENDING, JobState.QUEUED),
            )
    return len(customer_ids)


@dataclass(frozen=True)
class PaymentOutcome:
    """What mark_paid did; true when the invoice was marked paid."""

    paid: bool
    refusals: tuple[str, ...] = ()  # why its email was not queued, as sentences

    def __bool__(self) -> bool:
        return self.paid


@transaction.atomic
def mark_paid(invoice: Invoice) -> PaymentOutcome:
    """Marks an issued invoice paid and queues the payment-received email; false if it
    was not issued.

    A customer address that cannot be emailed does not undo the payment: the refusal
    (recorded as a failed email before it is raised) is in the outcome's `refusals`.
    Any other error rolls the payment back with everything else.
    """
    if not _move_status(invoice, InvoiceStatus.ISSUED, InvoiceStatus.PAID):
        return PaymentOutcome(paid=False)
    try:
        notifications.queue_payment_received(invoice)
    except ValueError as exc:  # emails.services.EmailInputError, say: it refuses before writing
        return PaymentOutcome(paid=True, refusals=(str(exc),))
    return PaymentOutcome(paid=True)
