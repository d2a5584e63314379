"""Reads of invoices: totals, documents to render, fingerprints, customer summaries."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from decimal import Decimal

from django.conf import settings

from invoices.models import Invoice
from invoices.pdf import DocumentLine, InvoiceDocument, Party
from invoices.totals import Totals, compute_totals

# Bump when the PDF layout changes, so every invoice gets a fresh PDF.
RENDERER_VERSION = 2  # 2: WeasyPrint with Noto fonts (every script shaped)


def invoice_totals(invoice: Invoice) -> Totals:
    return compute_totals(invoice.lines.all())


def invoice_document(invoice: Invoice) -> InvoiceDocument:
    lines = list(invoice.lines.all())
    totals = compute_totals(lines)
    customer = invoice.customer
    return InvoiceDocument(
        number=invoice.number,
        issue_date=invoice.issue_date.isoformat(),
        due_date=invoice.due_date.isoformat(),
        currency=invoice.currency,
        seller=Party(name=settings.INVOICE_SELLER_NAME, address=settings.INVOICE_SELLER_ADDRESS),
        customer=Party(name=customer.name, address=customer.billing_address, email=customer.email),
        lines=tuple(
            DocumentLine(
                description=line.description,
                quantity=line.quantity,
                unit_price=line.unit_price,
                tax_rate=line.tax_rate,
                net=amounts.net,
            )
            for line, amounts in zip(lines, totals.lines, strict=True)
        ),
        totals=totals,
    )


def document_fingerprint(document: InvoiceDocument) -> str:
    """A hash of everything the PDF shows: equal fingerprints, equal PDFs."""

    def plain(value):
        if isinstance(value, Decimal):
            return str(value)
        raise TypeError(type(value))

    payload = json.dumps([RENDERER_VERSION, asdict(document)], default=plain, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def customer_invoice_summary(customer_id: int) -> dict:
    """A customer's invoices with their totals, and the sums per currency."""
    invoices = (
        Invoice.objects.filter(customer_id=customer_id)
        .select_related("customer")
        .prefetch_related("lines")
        .order_by("-issue_date", "-number")
    )
    rows = []
    sums: dict[str, Decimal] = {}
    for invoice in invoices:
        totals = compute_totals(invoice.lines.all())
        rows.append(
            {
                "id": invoice.id,
                "number": invoice.number,
                "status": invoice.status,
                "issue_date": invoice.issue_date.isoformat(),
                "due_date": invoice.due_date.isoformat(),
                "currency": invoice.currency,
                "subtotal": str(totals.subtotal),
                "tax": str(totals.tax),
                "total": str(totals.total),
            }
        )
        if invoice.status != "void":
            sums[invoice.currency] = sums.get(invoice.currency, Decimal("0.00")) + totals.total
    return {
        "customer_id": customer_id,
        "invoices": rows,
        "totals": {currency: str(amount) for currency, amount in sorted(sums.items())},
    }
