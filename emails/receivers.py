"""Listens to invoices: "Generate PDF and email it" and payments become emails."""

from django.dispatch import receiver

from emails import services
from invoices.signals import invoice_paid, pdf_ready


@receiver(pdf_ready)
def email_invoice_pdf(
    sender, invoice, pdf_name: str, fingerprint: str, email_requested: bool, **kwargs
) -> None:
    if email_requested:
        services.queue_invoice_issued(invoice, pdf_name, fingerprint)


@receiver(invoice_paid)
def email_payment_received(sender, invoice, **kwargs) -> None:
    services.queue_payment_received(invoice)
