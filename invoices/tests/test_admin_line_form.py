"""The admin's invoice line form refuses what the PDF job would refuse."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from invoices.forms import InvoiceLineForm
from invoices.models import Invoice
from invoices.tests.factories import make_customer

pytestmark = pytest.mark.django_db


def line(**values) -> dict:
    return {
        "position": "0",
        "description": "Consulting",
        "quantity": "1",
        "unit_price": "10.00",
        "tax_rate": "0.20",
    } | values


@pytest.mark.parametrize("quantity", ["0", "-1", "-0.001"])
def test_line_form_refuses_a_quantity_of_zero_or_less(quantity):
    form = InvoiceLineForm(data=line(quantity=quantity))

    assert not form.is_valid()
    assert form.errors["quantity"] == ["Enter a quantity greater than 0."]


def test_line_form_refuses_a_negative_unit_price_and_accepts_a_free_line():
    refused = InvoiceLineForm(data=line(unit_price="-0.01"))
    free = InvoiceLineForm(data=line(unit_price="0"))

    assert refused.errors["unit_price"] == [
        "Enter a unit price of 0 or more; a negative price is not allowed."
    ]
    assert free.is_valid(), free.errors
    assert free.cleaned_data["unit_price"] == Decimal("0")


def _add_invoice(client, customer, **line_values):
    return client.post(
        reverse("admin:invoices_invoice_add"),
        {
            "customer": customer.pk,
            "issue_date": "2026-11-23",
            "due_date": "2026-12-07",
            "currency": "EUR",
            "status": "draft",
            "created_at_0": "2026-11-23",
            "created_at_1": "09:00:00",
            "lines-TOTAL_FORMS": "1",
            "lines-INITIAL_FORMS": "0",
            **{f"lines-0-{name}": value for name, value in line(**line_values).items()},
            "events-TOTAL_FORMS": "0",
            "events-INITIAL_FORMS": "0",
        },
    )


def test_admin_refuses_an_invoice_line_with_quantity_zero_or_a_negative_price(client):
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    customer = make_customer()

    response = _add_invoice(client, customer, quantity="0", unit_price="-5.00")

    assert response.status_code == 200  # the form again, with its errors
    page = response.content.decode()
    assert "Enter a quantity greater than 0." in page
    assert "Enter a unit price of 0 or more; a negative price is not allowed." in page
    assert not Invoice.objects.exists()

    accepted = _add_invoice(client, customer, quantity="2", unit_price="5.00")
    assert accepted.status_code == 302
    assert Invoice.objects.get().lines.get().quantity == Decimal("2")
