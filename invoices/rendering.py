"""Worker side of invoice PDFs: check, render and store one PDF per version of an invoice.

The PDF jobs (invoices.tasks) run `generate_pdf`; invoices.services decides when to
ask for one.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from invoices import events, notifications, selectors
from invoices.models import Invoice, InvoiceLine, InvoiceStatus
from invoices.pdf import render_pdf
from invoices.storage import remove_partial_files, write_atomically
from jobs.errors import PermanentJobError


def pdf_name(invoice_id: int, fingerprint: str) -> str:
    # Built from the id and a hex digest only, never from user text.
    return f"invoices/{int(invoice_id)}/invoice-{int(invoice_id)}-{fingerprint[:16]}.pdf"


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
    With `email_to_customer`, the invoice email is queued once per version too.
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
            # An update, not save(): a new PDF changes no cached list, so no model signal.
            Invoice.objects.filter(pk=invoice.pk).update(
                pdf=name, pdf_fingerprint=fingerprint, pdf_generated_at=timezone.now()
            )
            events.record_pdf_generated(invoice, name, fingerprint)
        if email_to_customer:
            events.record_email_requested(invoice, name)
            # Inside the transaction: the email and its send job commit with the PDF's
            # row. Its key is the invoice's version, so a redelivered job queues no other.
            notifications.queue_invoice_issued(invoice, name, fingerprint)
    return f"{name} ({'rendered' if rendered else 'already stored'})"
