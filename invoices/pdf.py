"""Renders an invoice document to PDF bytes with reportlab (platypus).

The renderer takes plain data (InvoiceDocument), not models, so it can be timed and
tested without a database. The lines table repeats its header on every page.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from decimal import Decimal

import reportlab
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from invoices.totals import Totals

# TrueType fonts, embedded, so names such as Łódź, Müller or Straße print as written.
# DejaVu Sans (Debian's fonts-dejavu-core, installed in the image) covers most of
# Latin Extended; reportlab's bundled Bitstream Vera is the fallback everywhere else.
_FONT_CANDIDATES = [
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    ),
    (
        os.path.join(os.path.dirname(reportlab.__file__), "fonts", "Vera.ttf"),
        os.path.join(os.path.dirname(reportlab.__file__), "fonts", "VeraBd.ttf"),
    ),
]


@functools.cache
def fonts() -> tuple[str, str]:
    for regular, bold in _FONT_CANDIDATES:
        if os.path.exists(regular) and os.path.exists(bold):
            pdfmetrics.registerFont(TTFont("InvoiceSans", regular))
            pdfmetrics.registerFont(TTFont("InvoiceSans-Bold", bold))
            return "InvoiceSans", "InvoiceSans-Bold"
    raise RuntimeError("No TrueType font found for invoice PDFs (looked for DejaVu Sans and Vera).")


@dataclass(frozen=True)
class Party:
    name: str
    address: str = ""
    email: str = ""


@dataclass(frozen=True)
class DocumentLine:
    description: str
    quantity: Decimal
    unit_price: Decimal
    tax_rate: Decimal
    net: Decimal


@dataclass(frozen=True)
class InvoiceDocument:
    number: str
    issue_date: str
    due_date: str
    currency: str
    seller: Party
    customer: Party
    lines: tuple[DocumentLine, ...]
    totals: Totals


def _money(value: Decimal, currency: str) -> str:
    return f"{value:,.2f} {currency}"


def _quantity(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _party_block(party: Party, heading: str, styles) -> list:
    lines = [Paragraph(heading, styles["label"]), Paragraph(_escape(party.name), styles["strong"])]
    for row in party.address.splitlines():
        lines.append(Paragraph(_escape(row), styles["body"]))
    if party.email:
        lines.append(Paragraph(_escape(party.email), styles["body"]))
    return lines


def _escape(text: str) -> str:
    # Paragraph parses a small XML markup; user text must not be read as markup.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_pdf(document: InvoiceDocument) -> bytes:
    """Returns the PDF of `document` as bytes."""
    regular, bold = fonts()
    styles = {
        "title": ParagraphStyle("title", fontName=bold, fontSize=18, leading=22),
        "label": ParagraphStyle("label", fontName=regular, fontSize=8, leading=10, textColor=colors.grey),
        "strong": ParagraphStyle("strong", fontName=bold, fontSize=10, leading=13),
        "body": ParagraphStyle("body", fontName=regular, fontSize=9, leading=12),
        "cell": ParagraphStyle("cell", fontName=regular, fontSize=8.5, leading=10.5),
        "num": ParagraphStyle("num", fontName=regular, fontSize=8.5, leading=10.5, alignment=TA_RIGHT),
    }
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        bottomMargin=18 * mm,
        title=f"Invoice {document.number}",
        author=document.seller.name,
    )
    currency = document.currency
    story: list = [
        Paragraph(f"Invoice {_escape(document.number)}", styles["title"]),
        Paragraph(f"Issued {document.issue_date} · Due {document.due_date}", styles["body"]),
        Spacer(1, 8 * mm),
    ]
    parties = Table(
        [[_party_block(document.seller, "From", styles), _party_block(document.customer, "Bill to", styles)]],
        colWidths=[87 * mm, 87 * mm],
    )
    parties.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    story += [parties, Spacer(1, 8 * mm)]

    header = ["#", "Description", "Qty", "Unit price", "Tax", "Amount"]
    rows = [header]
    for index, line in enumerate(document.lines, start=1):
        rows.append(
            [
                str(index),
                Paragraph(_escape(line.description), styles["cell"]),
                _quantity(line.quantity),
                _money(line.unit_price, currency),
                f"{(line.tax_rate * 100).normalize():f} %",
                _money(line.net, currency),
            ]
        )
    table = Table(rows, colWidths=[9 * mm, 71 * mm, 15 * mm, 29 * mm, 15 * mm, 35 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), bold, 8.5),
                ("FONT", (0, 1), (-1, -1), regular, 8.5),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#EEF1F5")),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.HexColor("#9AA5B1")),
                ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.HexColor("#D9DEE4")),
                ("ALIGN", (2, 0), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    totals = document.totals
    summary = Table(
        [
            ["Subtotal", _money(totals.subtotal, currency)],
            ["Tax", _money(totals.tax, currency)],
            ["Total", _money(totals.total, currency)],
        ],
        colWidths=[40 * mm, 35 * mm],
        hAlign="RIGHT",
    )
    summary.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), regular, 9),
                ("FONT", (0, 2), (-1, 2), bold, 10),
                ("ALIGN", (1, 0), (1, -1), "RIGHT"),
                ("LINEABOVE", (0, 2), (-1, 2), 0.6, colors.black),
            ]
        )
    )
    story += [table, Spacer(1, 6 * mm), summary]

    def footer(canvas, doc_):
        canvas.saveState()
        canvas.setFont(regular, 7.5)
        canvas.setFillColor(colors.grey)
        canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"{document.number} · page {doc_.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
