"""Outgoing emails: one record per email, which the send job delivers once."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class EmailStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"  # handed to SMTP; a crash here is the duplicate window
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class EmailTemplate(models.TextChoices):
    INVOICE_ISSUED = "invoice_issued", "Invoice issued"
    PAYMENT_REMINDER = "payment_reminder", "Payment reminder"
    PAYMENT_RECEIVED = "payment_received", "Payment received"
    TEST = "test", "Test email"


class OutgoingEmail(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    to = models.JSONField(default=list, help_text="Recipient addresses.")
    cc = models.JSONField(default=list, blank=True)
    reply_to = models.JSONField(default=list, blank=True)
    subject = models.CharField(max_length=300)
    template = models.CharField(max_length=32, choices=EmailTemplate.choices)
    context = models.JSONField(default=dict, blank=True)
    # By reference: [{"storage_name": ..., "filename": ..., "mimetype": ...}], read at send time.
    attachments = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=8, choices=EmailStatus.choices, default=EmailStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    message_id = models.CharField(max_length=255, unique=True, editable=False)
    key = models.CharField(max_length=255, unique=True, null=True, blank=True)
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.subject} → {', '.join(self.to)}"
