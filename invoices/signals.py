"""Signals other apps connect to, so that invoices never imports them."""

from django.dispatch import Signal

# Sent inside the transaction that stores an invoice's PDF, when the job was asked to
# email it ("Generate PDF and email it"): sender=Invoice, invoice=<Invoice>,
# pdf_name=<storage name>, fingerprint=<str>, email_requested=True. A receiver (the
# emails app) enqueues its job there, so that job commits with the PDF; it must use an
# idempotency key, because a redelivered PDF job sends the signal again.
pdf_ready = Signal()

# Sent inside the transaction that marks an invoice paid: sender=Invoice, invoice=<Invoice>.
invoice_paid = Signal()
