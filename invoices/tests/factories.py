from decimal import Decimal

from invoices import services
from invoices.models import Customer, InvoiceStatus


def make_customer(name: str = "Zofia Łukasiewicz-Müller", email: str = "zofia@example.com") -> Customer:
    return Customer.objects.create(
        name=name, email=email, billing_address="Straße des 17. Juni 1\n10623 Berlin"
    )


def make_invoice(
    customer: Customer | None = None, lines: int = 3, status: str = InvoiceStatus.DRAFT, **kwargs
):
    """A draft by default: issuing publishes "invoice.issued" (PDF, email), which most tests do not want."""
    customer = customer or make_customer()
    rows = [
        {
            "description": f"Item {n} – café crème",
            "quantity": Decimal(n + 1),
            "unit_price": Decimal("10.01"),
            "tax_rate": Decimal("0.20"),
        }
        for n in range(lines)
    ]
    return services.create_invoice(customer, rows, status=status, **kwargs)


def make_invoice_reader(username: str = "clerk"):
    """A staff user who may read customers' invoice lists (view_invoice, view_customer)."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_invoice", "view_customer"]))
    return user


def make_document(customer, rows=None):
    """An InvoiceDocument for the renderer alone (no database): `customer` is a Party,
    `rows` DocumentLines (one 2 x 12.50 line if None)."""
    from invoices.pdf import DocumentLine, InvoiceDocument, Party
    from invoices.totals import compute_totals

    if rows is None:
        rows = [DocumentLine("Consulting", Decimal("2"), Decimal("12.50"), Decimal("0.20"), Decimal("25.00"))]
    return InvoiceDocument(
        number="INV-2026-000123",
        issue_date="2026-11-23",
        due_date="2026-12-07",
        currency="EUR",
        seller=Party("Example Trading GmbH", "Hauptstraße 1\n10115 Berlin"),
        customer=customer,
        lines=tuple(rows),
        totals=compute_totals(rows),
    )
