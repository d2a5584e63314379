import datetime
import random
from decimal import Decimal

from django.core.management.base import BaseCommand

from invoices import services
from invoices.models import Customer, InvoiceStatus

CUSTOMERS = [
    ("Łukasz Żółkiewski", "lukasz@example.com", "ul. Piękna 12\n00-549 Warszawa\nPoland"),
    ("Müller & Söhne GmbH", "buchhaltung@example.com", "Große Straße 5\n20095 Hamburg\nGermany"),
    ("Café Étoile", "compta@example.com", "3 rue de l'Église\n75004 Paris\nFrance"),
]
ITEMS = [
    ("Consulting, hour", Decimal("95.00")),
    ("Support plan, month", Decimal("49.90")),
    ("Straßenmöbel installation", Decimal("320.00")),
    ("Łódź workshop ticket", Decimal("12.50")),
]


class Command(BaseCommand):
    help = "Creates demo customers and invoices (once: does nothing if they exist)."

    def add_arguments(self, parser):
        parser.add_argument("--invoices", type=int, default=4, help="Invoices per customer.")

    def handle(self, *args, invoices: int, **options):
        if Customer.objects.filter(email=CUSTOMERS[0][1]).exists():
            self.stdout.write("demo data already present")
            return
        rng = random.Random(7)
        created = 0
        for name, email, address in CUSTOMERS:
            customer = Customer.objects.create(name=name, email=email, billing_address=address)
            for n in range(invoices):
                lines = [
                    {
                        "description": description,
                        "quantity": Decimal(rng.randint(1, 12)),
                        "unit_price": price,
                        "tax_rate": Decimal("0.20"),
                    }
                    for description, price in rng.sample(ITEMS, k=rng.randint(1, len(ITEMS)))
                ]
                issued = datetime.date.today() - datetime.timedelta(days=30 * n)
                services.create_invoice(
                    customer,
                    lines,
                    issue_date=issued,
                    status=InvoiceStatus.PAID if n > 1 else InvoiceStatus.ISSUED,
                )
                created += 1
        self.stdout.write(self.style.SUCCESS(f"created {len(CUSTOMERS)} customers and {created} invoices"))
