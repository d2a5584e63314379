"""Forms of invoices: the checks a person gets while typing, before any job runs."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from invoices.models import InvoiceLine


class InvoiceLineForm(forms.ModelForm):
    """An invoice line as the admin edits it; refuses what the PDF job would refuse
    (services._validate_for_pdf), so the mistake shows on the form, not in a dead job."""

    class Meta:
        model = InvoiceLine
        fields = ["position", "description", "quantity", "unit_price", "tax_rate"]

    def clean_quantity(self) -> Decimal | None:
        quantity = self.cleaned_data.get("quantity")
        if quantity is not None and quantity <= 0:
            raise forms.ValidationError("Enter a quantity greater than 0.", code="min_value")
        return quantity

    def clean_unit_price(self) -> Decimal | None:
        price = self.cleaned_data.get("unit_price")
        if price is not None and price < 0:
            raise forms.ValidationError(
                "Enter a unit price of 0 or more; a negative price is not allowed.", code="min_value"
            )
        return price
