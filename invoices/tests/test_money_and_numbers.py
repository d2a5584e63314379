import threading
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import connection

from invoices import rendering
from invoices.models import Invoice
from invoices.tests.factories import make_customer, make_invoice
from invoices.totals import compute_totals, round_money


def line(quantity, price, rate="0.20"):
    return SimpleNamespace(quantity=Decimal(quantity), unit_price=Decimal(price), tax_rate=Decimal(rate))


def test_money_rounds_half_up_to_cents():
    assert round_money(Decimal("0.005")) == Decimal("0.01")
    assert round_money(Decimal("2.675")) == Decimal("2.68")  # a float would give 2.67
    assert round_money(Decimal("-0.005")) == Decimal("-0.01")


def test_totals_are_sums_of_rounded_lines():
    totals = compute_totals([line("3", "0.335"), line("1", "10.00", "0.07"), line("2.5", "4.99", "0")])
    assert [a.net for a in totals.lines] == [Decimal("1.01"), Decimal("10.00"), Decimal("12.48")]
    assert [a.tax for a in totals.lines] == [Decimal("0.20"), Decimal("0.70"), Decimal("0.00")]
    assert totals.subtotal == Decimal("23.49")
    assert totals.tax == Decimal("0.90")
    assert totals.total == Decimal("24.39")


@pytest.mark.django_db
def test_invoice_numbers_follow_the_year_sequence():
    first = make_invoice()
    second = make_invoice(customer=first.customer)
    year = first.issue_date.year
    assert first.number == f"INV-{year}-000001"
    assert second.number == f"INV-{year}-000002"


@pytest.mark.django_db(transaction=True)
def test_invoices_created_at_once_get_distinct_consecutive_numbers():
    customer = make_customer()
    errors = []

    def create_some():
        try:
            for _ in range(5):
                make_invoice(customer=customer, lines=1)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=create_some) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    year = Invoice.objects.first().issue_date.year
    assert numbers == [f"INV-{year}-{n:06d}" for n in range(1, 41)]


def test_pdf_names_come_from_the_id_and_cannot_leave_media_root(settings, tmp_path, reliability):
    from django.core.exceptions import SuspiciousFileOperation
    from django.core.files.storage import FileSystemStorage

    from invoices.storage import write_atomically

    assert rendering.pdf_name(42, "ab" * 32) == f"invoices/42/invoice-42-{'ab' * 8}.pdf"
    with pytest.raises(ValueError):
        rendering.pdf_name("../../etc", "ab" * 32)
    storage = FileSystemStorage(location=tmp_path / "media")
    with pytest.raises(SuspiciousFileOperation):
        write_atomically(storage, "../escaped.pdf", b"x")
    assert not (tmp_path / "escaped.pdf").exists()
    write_atomically(storage, "invoices/1/a.pdf", b"%PDF")
    assert (tmp_path / "media/invoices/1/a.pdf").read_bytes() == b"%PDF"
    assert [p.name for p in (tmp_path / "media/invoices/1").iterdir()] == ["a.pdf"], "no temporary file left"
    reliability.record(
        "S6", "Generated file names cannot escape MEDIA_ROOT",
        "PDF names built from an invoice id given as `../../etc`; a storage write of `../escaped.pdf`",
        "the id is refused (not an integer); the write raises SuspiciousFileOperation and nothing is written "
        "outside the storage root",
        "test_pdf_names_come_from_the_id_and_cannot_leave_media_root",
    )  # fmt: skip
