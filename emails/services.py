"""Writes of emails, request side: validate and queue an email, record a refused one,
resend one. Sending it is the worker's (emails.delivery, run by emails.tasks)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence

from django.conf import settings
from django.db import IntegrityError, transaction

import jobs
from emails.models import EmailStatus, EmailTemplate, OutgoingEmail
from emails.tasks import send_email
from emails.validation import EmailInputError, check_header, clean_addresses


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
    expires: datetime.datetime | None = None,
) -> OutgoingEmail:
    """Records an email and enqueues its send job, in the caller's transaction.

    Refuses, before anything is written, a line break, a NUL or another control
    character in the subject or an address (header injection), invalid addresses
    and unknown templates. With `key`, queuing the same key again returns the email
    already queued.
    """
    to = clean_addresses(to, "to", required=True)
    cc = clean_addresses(cc, "cc")
    reply_to = clean_addresses(reply_to, "reply-to")
    check_header(subject, "subject")
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
            email.job = jobs.enqueue(send_email, email.id, priority=priority, expires=expires)
            email.save(update_fields=["job"])
    except IntegrityError:
        if key is None:
            raise
        return OutgoingEmail.objects.get(key=key)
    return email


def record_refused_email(
    refusal: str, *, key: str, subject: str, template: str, context: dict
) -> OutgoingEmail:
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
