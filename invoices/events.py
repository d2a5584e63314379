"""What happens to an invoice: the "invoice issued" event, and the invoice's history.

`invoice.issued` goes out through jobs.events: each of its subscribers (invoices.tasks)
runs as its own job, with its own retries. The history is `InvoiceEvent` rows, written
as things happen and shown on the invoice's admin page.
"""

from __future__ import annotations

import jobs
from invoices.models import Invoice, InvoiceEvent, InvoiceEventType
from jobs.models import Event, Job

INVOICE_ISSUED = "invoice.issued"


def publish_invoice_issued(invoice: Invoice) -> Event:
    """Publishes "invoice issued" in the caller's transaction: its subscribers make the
    PDF, refresh the customer's cached lists and email the invoice."""
    return jobs.publish(INVOICE_ISSUED, {"invoice_id": invoice.id, "customer_id": invoice.customer_id})


def _record(invoice: Invoice, type_: InvoiceEventType, **data) -> InvoiceEvent:
    return InvoiceEvent.objects.create(invoice=invoice, type=type_, data=data)


def record_created(invoice: Invoice) -> InvoiceEvent:
    return _record(invoice, InvoiceEventType.CREATED)


def record_pdf_requested(invoice: Invoice, job: Job, *, email: bool) -> InvoiceEvent:
    return _record(invoice, InvoiceEventType.PDF_REQUESTED, job=str(job.id), email=email)


def record_pdf_generated(invoice: Invoice, name: str, fingerprint: str) -> InvoiceEvent:
    return _record(invoice, InvoiceEventType.PDF_GENERATED, file=name, fingerprint=fingerprint)


def record_email_requested(invoice: Invoice, name: str) -> InvoiceEvent:
    return _record(invoice, InvoiceEventType.EMAIL_REQUESTED, file=name)


def record_pdf_failed(invoice_id: int, job: Job, error: str) -> InvoiceEvent | None:
    """Records that a PDF job of the invoice ended dead, with its error; nothing if the
    invoice no longer exists (deleted, which may be why the job died)."""
    invoice = Invoice.objects.filter(pk=invoice_id).first()
    if invoice is None:
        return None
    return _record(invoice, InvoiceEventType.PDF_FAILED, job=str(job.id), error=error)
