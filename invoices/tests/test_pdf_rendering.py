"""The renderer alone (no worker): content, page breaks, non-ASCII names."""

import io
from decimal import Decimal

import pytest
from pypdf import PdfReader

from invoices.pdf import DocumentLine, InvoiceDocument, Party, render_pdf
from invoices.tests.factories import make_document


def document(lines: int, customer: str = "Łukasz Müller-Straße, café") -> InvoiceDocument:
    rows = [
        DocumentLine(
            description=f"Line {n}",
            quantity=Decimal("2"),
            unit_price=Decimal("12.50"),
            tax_rate=Decimal("0.20"),
            net=Decimal("25.00"),
        )
        for n in range(1, lines + 1)
    ]
    return make_document(Party(customer, "ul. Piękna 12\nWarszawa", "lukasz@example.com"), rows)


def text_of(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def test_pdf_shows_number_parties_lines_and_totals_with_non_ascii_names_intact():
    pages = text_of(render_pdf(document(10)))

    assert len(pages) == 1
    text = pages[0]
    assert "INV-2026-000123" in text
    assert "Łukasz Müller-Straße, café" in text
    assert "Example Trading GmbH" in text and "Hauptstraße 1" in text
    assert "Line 10" in text
    assert "250.00 EUR" in text  # subtotal
    assert "50.00 EUR" in text  # tax
    assert "300.00 EUR" in text  # total


def test_long_invoice_spans_pages_and_repeats_the_table_header():
    pages = text_of(render_pdf(document(200)))

    assert len(pages) > 1
    for page in pages:
        assert "Description" in page and "Unit price" in page
    assert "Line 200" in pages[-1]
    assert "5,000.00 EUR" in pages[-1]


def test_user_text_is_not_read_as_markup():
    text = text_of(render_pdf(document(1, customer="<b>Bold & Co</b>")))[0]
    assert "<b>Bold & Co</b>" in text


def test_the_renderer_refuses_to_fetch_any_url(tmp_path):
    from invoices.pdf import _engine

    secret = tmp_path / "secret.txt"
    secret.write_text("not for invoices")

    with pytest.raises(ValueError, match="disallowed protocol"):
        _engine().url_fetcher.fetch(secret.as_uri())
