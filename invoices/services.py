"""Writes of invoices: numbering, creation, PDF requests and generation, cache refresh."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

import jobs
from invoices import selectors
from invoices.models import (
    Customer,
    Invoice,
    InvoiceEvent,
    InvoiceEventType,
    InvoiceLine,
    InvoiceStatus,
)
from invoices.pdf import render_pdf
from invoices.signals import invoice_paid, pdf_ready
from invoices.storage import remove_partial_files, write_atomically
from jobs.base import PermanentJobError
from jobs.models import Job, JobState
from jobs.services import invalidate_cache_on_commit


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


def record_event(invoice: Invoice, type_: InvoiceEventType, **data) -> InvoiceEvent:
    return InvoiceEvent.objects.create(invoice=invoice, type=type_, data=data)


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
    record_event(invoice, InvoiceEventType.CREATED)
    invalidate_customer_invoice_lists(customer.id)
    if invoice.status == InvoiceStatus.ISSUED:
        publish_invoice_issued(invoice)
    return invoice


INVOICE_ISSUED = "invoice.issued"


def publish_invoice_issued(invoice: Invoice):
    """The "invoice issued" event: its subscribers make the PDF, refresh lists, email it."""
    return jobs.publish(INVOICE_ISSUED, {"invoice_id": invoice.id, "customer_id": invoice.customer_id})


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
    publish_invoice_issued(invoice)
    return True


def invoice_list_namespace(customer_id: int) -> str:
    return f"customer-invoices:{customer_id}"


def invalidate_customer_invoice_lists(customer_id: int) -> Job | None:
    """Enqueues the invalidation of a customer's cached invoice lists, on commit."""
    return invalidate_cache_on_commit(namespace=invoice_list_namespace(customer_id))


def pdf_name(invoice_id: int, fingerprint: str) -> str:
    # Built from the id and a hex digest only, never from user text.
    return f"invoices/{int(invoice_id)}/invoice-{int(invoice_id)}-{fingerprint[:16]}.pdf"


@transaction.atomic
def request_pdf(invoice: Invoice, *, email: bool = False, priority: str | None = None) -> Job:
    """Enqueues the PDF job of the invoice as it is now; a double click gives one job.

    The job's key is the invoice's content fingerprint, so asking again for an
    unchanged invoice returns the job already asked for, and an edited invoice gets
    a new job and a new PDF. With `email`, the PDF is sent to the customer once
    stored (by whatever app listens to invoices.signals.pdf_ready).
    """
    fingerprint = selectors.document_fingerprint(selectors.invoice_document(invoice))
    from invoices.tasks import generate_pdf

    key = f"invoice-pdf:{invoice.id}:{fingerprint}" + (":email" if email else "")
    job = jobs.enqueue(generate_pdf, invoice.id, email_to_customer=email, key=key, priority=priority)
    Invoice.objects.filter(pk=invoice.pk).update(last_pdf_job=job)
    invoice.last_pdf_job = job
    record_event(invoice, InvoiceEventType.PDF_REQUESTED, job=str(job.id), email=email)
    return job


def _validate_for_pdf(invoice: Invoice, lines: list[InvoiceLine]) -> None:
    if not lines:
        raise PermanentJobError(f"Invoice {invoice.number} has no lines; add at least one line, then retry.")
    for position, line in enumerate(lines, start=1):
        try:
            values = [Decimal(line.quantity), Decimal(line.unit_price), Decimal(line.tax_rate)]
        except (InvalidOperation, TypeError):
            raise PermanentJobError(f"Invoice {invoice.number}, line {position}: not a number.") from None
        if values[0] <= 0:
            raise PermanentJobError(
                f"Invoice {invoice.number}, line {position} ({line.description!r}) has quantity "
                f"{line.quantity}; quantities must be positive."
            )
        if values[1] < 0 or values[2] < 0:
            raise PermanentJobError(
                f"Invoice {invoice.number}, line {position}: a negative price or tax rate is not allowed."
            )
    if invoice.status == InvoiceStatus.VOID:
        raise PermanentJobError(f"Invoice {invoice.number} is void; a void invoice gets no PDF.")


def generate_pdf(invoice_id: int, *, email_to_customer: bool = False) -> str:
    """Renders and stores the invoice's PDF unless the current one is already stored.

    Idempotent: the file name comes from the invoice id and the fingerprint of what
    the PDF shows, and the row is locked while it renders, so a redelivered job, a
    double click or two workers at once produce one file per version of the invoice.
    Invalid data raises PermanentJobError: the job ends dead with that message.
    """
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_for_update(of=("self",))
            .select_related("customer")
            .filter(pk=invoice_id)
            .first()
        )
        if invoice is None:
            raise PermanentJobError(f"Invoice {invoice_id} does not exist (deleted?); no PDF was made.")
        lines = list(invoice.lines.all())
        _validate_for_pdf(invoice, lines)
        document = selectors.invoice_document(invoice)
        fingerprint = selectors.document_fingerprint(document)
        name = pdf_name(invoice.id, fingerprint)
        rendered = False
        # A run killed while writing (its worker SIGKILLed) left its temporary file.
        remove_partial_files(default_storage, name)
        if not (invoice.pdf_fingerprint == fingerprint and default_storage.exists(name)):
            if not default_storage.exists(name):
                write_atomically(default_storage, name, render_pdf(document))
                rendered = True
            # An update, not save(): a new PDF changes no cached list, so no signal.
            Invoice.objects.filter(pk=invoice.pk).update(
                pdf=name, pdf_fingerprint=fingerprint, pdf_generated_at=timezone.now()
            )
            record_event(invoice, InvoiceEventType.PDF_GENERATED, file=name, fingerprint=fingerprint)
        if email_to_customer:
            record_event(invoice, InvoiceEventType.EMAIL_REQUESTED, file=name)
            # Inside the transaction: what a receiver enqueues commits with the PDF's row.
            pdf_ready.send(
                Invoice, invoice=invoice, pdf_name=name, fingerprint=fingerprint, email_requested=True
            )
    return f"{name} ({'rendered' if rendered else 'already stored'})"


def refresh_cached_lists(invoices: Iterable[Invoice]) -> int:
    """Enqueues an invalidation of the invoice lists of these invoices' customers.

    A unique job per customer: clicking again while one waits adds nothing.
    """
    from jobs.tasks import invalidate_cache

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
    refusals: tuple[str, ...] = ()  # what receivers of invoice_paid refused to do, as sentences

    def __bool__(self) -> bool:
        return self.paid


@transaction.atomic
def mark_paid(invoice: Invoice) -> PaymentOutcome:
    """Marks an issued invoice paid and sends invoice_paid; false if it was not issued.

    Every receiver runs. One that refuses its input by raising ValueError (an email
    address that cannot be emailed, say) does not undo the payment: its message is in
    the outcome's `refusals`. Such a receiver refuses before writing anything it cannot
    finish; any other error rolls the payment back with everything else.
    """
    if not _move_status(invoice, InvoiceStatus.ISSUED, InvoiceStatus.PAID):
        return PaymentOutcome(paid=False)
    refusals = []
    for _receiver, response in invoice_paid.send_robust(Invoice, invoice=invoice):
        if isinstance(response, ValueError):
            refusals.append(str(response))
        elif isinstance(response, Exception):
            raise response
    return PaymentOutcome(paid=True, refusals=tuple(refusals))
