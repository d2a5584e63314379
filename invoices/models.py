"""Invoices: customers, invoices with their lines, their numbering and their events."""

from __future__ import annotations

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


class Customer(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField()
    billing_address = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ISSUED = "issued", "Issued"
    PAID = "paid", "Paid"
    VOID = "void", "Void"


class Invoice(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    number = models.CharField(max_length=32, unique=True, editable=False)
    issue_date = models.DateField(default=timezone.localdate)
    due_date = models.DateField()
    currency = models.CharField(max_length=3, default="EUR")
    status = models.CharField(max_length=8, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    # The stored PDF and the fingerprint of the data it was rendered from: a PDF is
    # current while the invoice's fingerprint still equals pdf_fingerprint.
    pdf = models.FileField(upload_to="invoices/", blank=True, editable=False)
    pdf_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    pdf_generated_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_pdf_job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-issue_date", "-number"]
        indexes = [models.Index(fields=["customer", "-issue_date"], name="invoice_customer_date_idx")]

    def __str__(self) -> str:
        return self.number or f"invoice {self.pk}"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField(default=0)
    description = models.CharField(max_length=500)
    quantity = models.DecimalField(max_digits=12, decimal_places=3, default=Decimal("1"))
    unit_price = models.DecimalField(max_digits=14, decimal_places=2)
    tax_rate = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.20"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="A fraction: 0.20 is 20 %.",
    )

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.description


class InvoiceNumberSequence(models.Model):
    """The last invoice number handed out per year (see services.next_invoice_number)."""

    year = models.PositiveIntegerField(primary_key=True)
    last = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last}"


class InvoiceEventType(models.TextChoices):
    CREATED = "created", "Created"
    PDF_REQUESTED = "pdf_requested", "PDF requested"
    PDF_GENERATED = "pdf_generated", "PDF generated"
    PDF_FAILED = "pdf_failed", "PDF failed"
    EMAIL_REQUESTED = "email_requested", "Email requested"


class InvoiceEvent(models.Model):
    """What happened to an invoice, recorded as it happened."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=32, choices=InvoiceEventType.choices)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.invoice_id} {self.type}"
