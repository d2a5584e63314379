"""Writes of emails: validate and queue an email, deliver it once, resend it."""

from __future__ import annotations

import datetime
import logging
import re
import smtplib
import uuid
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone

import jobs
from emails.models import EmailStatus, EmailTemplate, OutgoingEmail
from invoices import selectors as invoice_selectors
from invoices.models import Invoice, InvoiceStatus
from jobs.base import PermanentJobError, TransientJobError

logger = logging.getLogger(__name__)


class EmailInputError(ValueError):
    """An email that cannot be queued; the message says what to fix."""


# Not only CR and LF end a line: Python's str.splitlines(), which the email package
# uses on header values, breaks at each of these too.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 and C1 control characters (tab aside, for a subject): no address holds one, and
# what a mail server makes of one in a header is anyone's guess.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _check_header(value: str, what: str, allow_tab: bool = True) -> None:
    """Refuses what could end or corrupt the header `value` goes into (header injection)."""
    if _LINE_BREAK.search(value):
        problem = "a line break"
    elif "\x00" in value:
        problem = "a NUL character"
    elif control := _CONTROL.search(value) or (None if allow_tab else re.search("\t", value)):
        problem = f"a control character ({control.group()!r})"
    else:
        return
    raise EmailInputError(f"The {what} contains {problem}, which email headers cannot carry; remove it.")


def _clean_addresses(addresses: Iterable[str], what: str, required: bool = False) -> list[str]:
    cleaned = []
    for address in addresses:
        if not isinstance(address, str):
            raise EmailInputError(f"Every {what} address must be text; got {address!r}.")
        _check_header(address, f"{what} address {address!r}", allow_tab=False)
        try:
            validate_email(address)
        except ValidationError:
            raise EmailInputError(f"{address!r} is not a valid {what} address.") from None
        cleaned.append(address)
    if required and not cleaned:
        raise EmailInputError(f"An email needs at least one {what} address.")
    return cleaned


def _message_id_domain() -> str:
    return settings.DEFAULT_FROM_EMAIL.rsplit("@", 1)[-1].strip("> ") or "localhost"


def queue_email(
    *,
    to: Sequence[str],
    subject: str,
    template: str,
    context: dict | None = None,
    cc: Sequence[str] = (),
    reply_to: Sequence[str] = (),
    attachments: Sequence[dict] = (),
    key: str | None = None,
    priority: str | None = None,
) -> OutgoingEmail:
    """Records an email and enqueues its send job, in the caller's transaction.

    Refuses, before anything is written, a line break, a NUL or another control
    character in the subject or an address (header injection), invalid addresses
    and unknown templates. With `key`, queuing the same key again returns the email
    already queued.
    """
    to = _clean_addresses(to, "to", required=True)
    cc = _clean_addresses(cc, "cc")
    reply_to = _clean_addresses(reply_to, "reply-to")
    _check_header(subject, "subject")
    if template not in EmailTemplate.values:
        raise EmailInputError(
            f"Unknown email template {template!r}; use one of {', '.join(EmailTemplate.values)}."
        )
    if key is not None:
        existing = OutgoingEmail.objects.filter(key=key).first()
        if existing is not None:
            return existing
    email = OutgoingEmail(
        to=to,
        cc=cc,
        reply_to=reply_to,
        subject=subject,
        template=template,
        context=context or {},
        attachments=list(attachments),
        key=key,
    )
    email.message_id = f"<{email.uuid}@{_message_id_domain()}>"
    try:
        with transaction.atomic():
            email.save(force_insert=True)
            from emails.tasks import send_email

            email.job = jobs.enqueue(send_email, email.id, priority=priority)
            email.save(update_fields=["job"])
    except IntegrityError:
        if key is None:
            raise
        return OutgoingEmail.objects.get(key=key)
    return email


def render_bodies(email: OutgoingEmail) -> tuple[str, str]:
    """The plain text and HTML bodies of `email`."""
    base = f"emails/{email.template}"
    return (
        render_to_string(f"{base}/body.txt", email.context).strip() + "\n",
        render_to_string(f"{base}/body.html", email.context),
    )


def build_message(email: OutgoingEmail, connection=None) -> EmailMultiAlternatives:
    text, html = render_bodies(email)
    message = EmailMultiAlternatives(
        subject=email.subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=email.to,
        cc=email.cc,
        reply_to=email.reply_to,
        # The record's own Message-ID: a copy sent twice can be recognized as one email.
        headers={"Message-ID": email.message_id},
        connection=connection,
    )
    message.attach_alternative(html, "text/html")
    for attachment in email.attachments:
        name = attachment["storage_name"]
        try:
            with default_storage.open(name, "rb") as fh:
                content = fh.read()
        except FileNotFoundError:
            raise PermanentJobError(
                f"Attachment {name} is missing from storage; the email was not sent."
            ) from None
        message.attach(
            attachment.get("filename") or name.rsplit("/", 1)[-1], content, attachment.get("mimetype")
        )
    return message


def classify_smtp_error(exc: BaseException) -> tuple[bool, str]:
    """(transient?, description with the server's reply) for an SMTP failure."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {
            addr: (code, text.decode(errors="replace")) for addr, (code, text) in exc.recipients.items()
        }
        transient = all(400 <= code < 500 for code, _ in replies.values())
        described = "; ".join(f"{addr}: {code} {text}" for addr, (code, text) in replies.items())
        return transient, f"recipients refused: {described}"
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        return 400 <= exc.smtp_code < 500, f"{exc.smtp_code} {reply}"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return False, f"SMTP server does not support what was asked: {exc}"
    if isinstance(exc, (smtplib.SMTPException, OSError)):
        return True, f"{exc.__class__.__name__}: {exc}"
    return False, f"{exc.__class__.__name__}: {exc}"


def send_outgoing_email(email_id: int) -> str:
    """Delivers the email once; a redelivered job for a sent email sends nothing.

    The status is `sending` while SMTP has the message. If the worker dies after the
    server's 250 but before `sent` is committed, the job runs again and the message
    goes out a second time with the same Message-ID (see README, "No double sends").
    Transient SMTP failures raise TransientJobError (retried with backoff); 5xx
    replies raise PermanentJobError with the server's reply (dead at once).
    """
    email = OutgoingEmail.objects.filter(pk=email_id).first()
    if email is None:
        raise PermanentJobError(f"Outgoing email {email_id} does not exist; nothing was sent.")
    if email.status == EmailStatus.SENT:
        return f"already sent at {email.sent_at:%Y-%m-%d %H:%M:%S}"
    try:
        # Again at send time: a record written by another path than queue_email.
        for addresses, what in ((email.to, "to"), (email.cc, "cc"), (email.reply_to, "reply-to")):
            _clean_addresses(addresses, what, required=what == "to")
        _check_header(email.subject, "subject")
    except EmailInputError as exc:
        raise PermanentJobError(f"Not sent: {exc}") from None
    connection = get_connection(fail_silently=False)
    message = build_message(email, connection)
    OutgoingEmail.objects.filter(pk=email.pk).update(status=EmailStatus.SENDING, attempts=F("attempts") + 1)
    try:
        connection.send_messages([message])
    except Exception as exc:  # noqa: BLE001 - classified right here
        transient, description = classify_smtp_error(exc)
        OutgoingEmail.objects.filter(pk=email.pk).update(
            status=EmailStatus.QUEUED if transient else EmailStatus.FAILED, last_error=description
        )
        raise (TransientJobError if transient else PermanentJobError)(description) from exc
    OutgoingEmail.objects.filter(pk=email.pk).update(
        status=EmailStatus.SENT, sent_at=timezone.now(), last_error=""
    )
    return f"sent {email.message_id}"


def mark_failed(email_id: int, error: str) -> None:
    """Called when the send job ends dead (retries exhausted)."""
    OutgoingEmail.objects.filter(pk=email_id).exclude(status=EmailStatus.SENT).update(
        status=EmailStatus.FAILED, last_error=error
    )


def resend(email: OutgoingEmail) -> OutgoingEmail:
    """Queues a copy of `email` as a new record (new Message-ID, no key)."""
    return queue_email(
        to=email.to,
        cc=email.cc,
        reply_to=email.reply_to,
        subject=email.subject,
        template=email.template,
        context=email.context,
        attachments=email.attachments,
    )


def send_test_email(to: str, requested_by: str) -> OutgoingEmail:
    return queue_email(
        to=[to],
        subject="Test email from the job platform",
        template=EmailTemplate.TEST,
        context={"requested_by": requested_by},
        priority="urgent",
    )


# -- invoices -------------------------------------------------------------------------


def invoice_context(invoice: Invoice) -> dict:
    totals = invoice_selectors.invoice_totals(invoice)
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
    document = invoice_selectors.invoice_document(invoice)
    fingerprint = invoice_selectors.document_fingerprint(document)
    if invoice.pdf_fingerprint != fingerprint or not invoice.pdf:
        raise TransientJobError(f"The PDF of invoice {invoice.number} is not stored yet; waiting for it.")
    email = queue_invoice_issued(invoice, invoice.pdf.name, fingerprint)
    return f"email {email.pk} queued"


def _record_refused(refusal: str, *, key: str, subject: str, template: str, context: dict) -> OutgoingEmail:
    """Records an email that queue_email refused, as `failed` with the refusal as its
    error and no recipient or job, where operators look for emails; the email already
    recorded under `key`, if any, is left as it is."""
    record_uuid = uuid.uuid4()
    email, _ = OutgoingEmail.objects.get_or_create(
        key=key,
        defaults={
            "uuid": record_uuid,
            "message_id": f"<{record_uuid}@{_message_id_domain()}>",
            "to": [],
            "subject": subject,
            "template": template,
            "context": context,
            "status": EmailStatus.FAILED,
            "last_error": refusal,
        },
    )
    return email


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
        _record_refused(refusal, **fields)
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
                )
            except EmailInputError as exc:
                logger.warning("invoice=%s payment reminder refused: %s", invoice.id, exc)
                continue
            new += 1
    return new
