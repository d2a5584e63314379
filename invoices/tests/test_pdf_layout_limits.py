"""The layout holds at the limits of the data: the longest addresses, the largest amounts.

Page images go to var/test-artifacts/ (pdf-limits-*.png).
"""

from decimal import Decimal

import pytest

from invoices import rendering, services
from invoices.models import Customer, InvoiceLine
from invoices.pdf import DocumentLine, InvoiceDocument, Party, render_pdf
from invoices.tests import pdf_reading
from invoices.tests.factories import make_document
from invoices.totals import line_amounts

# The largest values the model's fields hold (InvoiceLine: max_digits, decimal_places).
LARGEST_QUANTITY = Decimal("999999999.999")
LARGEST_PRICE = Decimal("999999999999.99")
LARGEST_TAX_RATE = Decimal("9.9999")

LONG_ADDRESS = "\n".join(f"Address line {n} of a long billing address" for n in range(1, 81))


def largest_line(description: str) -> DocumentLine:
    net = line_amounts(LARGEST_QUANTITY, LARGEST_PRICE, LARGEST_TAX_RATE).net
    return DocumentLine(description, LARGEST_QUANTITY, LARGEST_PRICE, LARGEST_TAX_RATE, net)


def document(address: str, rows: list[DocumentLine]) -> InvoiceDocument:
    return make_document(Party("Big Customer AG", address, "billing@example.com"), rows)


def assert_nothing_overlaps_and_all_fits(pdf: bytes) -> None:
    sizes, found = pdf_reading.words(pdf)
    assert not pdf_reading.overlapping(found), pdf_reading.overlapping(found)[:5]
    for word in found:
        width, height = sizes[word.page - 1]
        assert 0 <= word.x_min and word.x_max <= width and 0 <= word.y_min and word.y_max <= height, word


def test_an_80_line_billing_address_breaks_across_pages_and_reads_back_whole():
    rows = [DocumentLine("Consulting", Decimal("2"), Decimal("12.50"), Decimal("0.20"), Decimal("25.00"))]

    pdf = render_pdf(document(LONG_ADDRESS, rows))

    pdf_reading.save_pages(pdf, "pdf-limits-80-line-address")
    sizes, _ = pdf_reading.words(pdf)
    assert len(sizes) >= 2
    lines = [line.strip() for line in pdf_reading.text(pdf).splitlines()]
    positions = [lines.index(row) for row in LONG_ADDRESS.splitlines()]
    assert positions == sorted(positions)
    assert "30.00 EUR" in lines
    assert_nothing_overlaps_and_all_fits(pdf)


def test_the_largest_amounts_print_whole_in_columns_that_do_not_overlap():
    rows = [largest_line(f"Line {n} " + "with a long description " * 3) for n in range(1, 4)]
    invoice = document("Main Street 1", rows)

    pdf = render_pdf(invoice)

    pdf_reading.save_pages(pdf, "pdf-limits-largest-amounts")
    text = pdf_reading.text(pdf, layout=True)
    for value in [
        "999999999.999",
        "999,999,999,999.99 EUR",
        "999.99 %",
        f"{rows[0].net:,.2f} EUR",
        f"{invoice.totals.subtotal:,.2f} EUR",
        f"{invoice.totals.tax:,.2f} EUR",
        f"{invoice.totals.total:,.2f} EUR",
    ]:
        assert value in text
    assert_nothing_overlaps_and_all_fits(pdf)
    # In -layout mode a table row is one line, its cells left to right in their columns.
    row = next(" ".join(line.split()) for line in text.splitlines() if line.lstrip().startswith("1 "))
    assert row.endswith(f"999999999.999 999,999,999,999.99 EUR 999.99 % {rows[0].net:,.2f} EUR")


def test_an_unbroken_word_wraps_inside_its_cell():
    rows = [DocumentLine("x" * 400, Decimal("1"), Decimal("1.00"), Decimal("0"), Decimal("1.00"))]

    pdf = render_pdf(document("A" * 300, rows))

    assert_nothing_overlaps_and_all_fits(pdf)
    assert "x" * 400 in "".join(pdf_reading.text(pdf).split())


@pytest.mark.django_db
def test_pdf_job_succeeds_for_an_80_line_address_and_the_largest_amounts():
    customer = Customer.objects.create(
        name="Big Customer AG", email="billing@example.com", billing_address=LONG_ADDRESS
    )
    rows = [
        {
            "description": f"Line {n}",
            "quantity": LARGEST_QUANTITY,
            "unit_price": LARGEST_PRICE,
            "tax_rate": LARGEST_TAX_RATE,
        }
        for n in range(3)
    ]
    invoice = services.create_invoice(customer, rows, status="draft")
    assert InvoiceLine.objects.filter(invoice=invoice).count() == 3

    outcome = rendering.generate_pdf(invoice.id)

    assert outcome.endswith("(rendered)")
    invoice.refresh_from_db()
    with invoice.pdf.open("rb") as handle:
        pdf = handle.read()
    assert "Address line 80 of a long billing address" in pdf_reading.text(pdf)
    assert_nothing_overlaps_and_all_fits(pdf)
