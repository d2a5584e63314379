"""Admin for customers and invoices; actions call invoices.services."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from invoices import selectors, services
from invoices.forms import InvoiceLineForm
from invoices.models import Customer, Invoice, InvoiceEvent, InvoiceLine
from invoices.totals import compute_totals
from jobs.admin_actions import StrictActionsMixin


@admin.register(Customer)
class CustomerAdmin(StrictActionsMixin, admin.ModelAdmin):
    list_display = ["name", "email", "invoice_list"]
    search_fields = ["name", "email"]

    @admin.display(description="Invoice list")
    def invoice_list(self, obj):
        return format_html(
            '<a href="{}">cached list</a>', reverse("invoices:customer-invoices", args=[obj.pk])
        )


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    form = InvoiceLineForm
    extra = 1
    fields = ["position", "description", "quantity", "unit_price", "tax_rate"]


class InvoiceEventInline(admin.TabularInline):
    model = InvoiceEvent
    extra = 0
    fields = ["created_at", "type", "data"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(StrictActionsMixin, admin.ModelAdmin):
    list_display = [
        "number",
        "customer",
        "status",
        "issue_date",
        "due_date",
        "total",
        "pdf_job_state",
        "pdf_link",
    ]
    list_filter = ["status", "currency", "issue_date"]
    search_fields = ["number", "customer__name", "customer__email"]
    list_select_related = ["customer", "last_pdf_job"]
    readonly_fields = ["number", "pdf_job_state", "pdf_link", "pdf_generated_at", "totals_summary"]
    inlines = [InvoiceLineInline, InvoiceEventInline]
    actions = ["issue", "generate_pdf", "generate_pdf_and_email", "mark_paid", "refresh_cached_lists"]
    autocomplete_fields = ["customer"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("lines")

    def save_model(self, request, obj, form, change):
        services.assign_number(obj)
        super().save_model(request, obj, form, change)

    @admin.display(description="Total")
    def total(self, obj):
        totals = compute_totals(obj.lines.all())
        return f"{totals.total} {obj.currency}"

    @admin.display(description="Totals")
    def totals_summary(self, obj):
        if obj.pk is None:
            return "-"
        totals = selectors.invoice_totals(obj)
        return f"subtotal {totals.subtotal} · tax {totals.tax} · total {totals.total} {obj.currency}"

    @admin.display(description="PDF job")
    def pdf_job_state(self, obj):
        job = obj.last_pdf_job
        if job is None:
            return "-"
        url = reverse("admin:jobs_job_change", args=[job.pk])
        return format_html('<a href="{}">{}</a>', url, job.get_state_display())

    @admin.display(description="PDF")
    def pdf_link(self, obj):
        if not obj.pdf:
            return "-"
        url = reverse("admin:invoices_invoice_pdf", args=[obj.pk])
        return format_html('<a href="{}">download</a>', url)

    def get_urls(self):
        return [
            path(
                "<int:invoice_id>/pdf/",
                self.admin_site.admin_view(self.download_pdf),
                name="invoices_invoice_pdf",
            ),
            *super().get_urls(),
        ]

    def download_pdf(self, request, invoice_id: int):
        if not self.has_view_permission(request):
            raise PermissionDenied
        invoice = get_object_or_404(Invoice, pk=invoice_id)
        if not invoice.pdf:
            raise Http404("This invoice has no PDF yet; run “Generate PDF” first.")
        try:
            handle = invoice.pdf.open("rb")
        except FileNotFoundError:
            raise Http404("The PDF file is missing from storage; run “Generate PDF” again.") from None
        return FileResponse(handle, as_attachment=True, filename=f"{invoice.number}.pdf")

    def _request_pdfs(self, request, queryset, email: bool):
        with transaction.atomic():
            job_count = sum(1 for invoice in queryset if services.request_pdf(invoice, email=email))
        what = "PDF and email" if email else "PDF"
        self.message_user(
            request,
            f"{what} job(s) enqueued for {job_count} invoice(s); the PDF job column shows their state.",
            messages.SUCCESS,
        )

    @admin.action(description="Generate PDF", permissions=["change"])
    def generate_pdf(self, request, queryset):
        self._request_pdfs(request, queryset, email=False)

    @admin.action(description="Generate PDF and email it", permissions=["change"])
    def generate_pdf_and_email(self, request, queryset):
        self._request_pdfs(request, queryset, email=True)

    @admin.action(description="Issue (PDF, refreshed lists and email follow)", permissions=["change"])
    def issue(self, request, queryset):
        with transaction.atomic():
            issued = sum(services.issue_invoice(invoice) for invoice in queryset)
        self.message_user(
            request, f"{issued} invoice(s) issued; their PDFs and emails follow.", messages.SUCCESS
        )
        if issued < len(queryset):
            self.message_user(
                request, f"{len(queryset) - issued} skipped: only drafts can be issued.", messages.WARNING
            )

    @admin.action(description="Mark as paid", permissions=["change"])
    def mark_paid(self, request, queryset):
        with transaction.atomic():
            outcomes = [(invoice, services.mark_paid(invoice)) for invoice in queryset]
        paid = sum(bool(outcome) for _, outcome in outcomes)
        self.message_user(request, f"{paid} invoice(s) marked paid.", messages.SUCCESS)
        for invoice, outcome in outcomes:
            for refusal in outcome.refusals:
                self.message_user(
                    request, f"Invoice {invoice.number} is marked paid. {refusal}", messages.WARNING
                )
        if paid < len(queryset):
            self.message_user(
                request,
                f"{len(queryset) - paid} skipped: only issued invoices can be paid.",
                messages.WARNING,
            )

    @admin.action(description="Refresh cached lists", permissions=["change"])
    def refresh_cached_lists(self, request, queryset):
        count = services.refresh_cached_lists(queryset)
        self.message_user(request, f"Cache refresh enqueued for {count} customer(s).", messages.SUCCESS)
