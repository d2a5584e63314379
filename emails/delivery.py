"""Worker side of emails: render an `OutgoingEmail`, hand it to SMTP once, classify the
server's answer. The `emails.send` job (emails.tasks) runs `send_outgoing_email`."""

from __future__ import annotations

import smtplib

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone

from emails.models import EmailStatus, OutgoingEmail
from emails.validation import EmailInputError, check_header, clean_addresses
from jobs.errors import PermanentJobError, TransientJobError


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
            clean_addresses(addresses, what, required=what == "to")
        check_header(email.subject, "subject")
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
