"""Model signals: an edit of an invoice or its lines refreshes cached lists by a job."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from invoices import services
from invoices.models import Invoice, InvoiceLine


@receiver([post_save, post_delete], sender=Invoice)
def invoice_changed(sender, instance: Invoice, **kwargs) -> None:
    services.invalidate_customer_invoice_lists(instance.customer_id)


@receiver([post_save, post_delete], sender=InvoiceLine)
def invoice_line_changed(sender, instance: InvoiceLine, **kwargs) -> None:
    customer_id = Invoice.objects.filter(pk=instance.invoice_id).values_list("customer_id", flat=True).first()
    if customer_id is not None:
        services.invalidate_customer_invoice_lists(customer_id)
