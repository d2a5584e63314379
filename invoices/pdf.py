"""Renders an invoice document to PDF bytes with WeasyPrint (HTML and CSS laid out by Pango).

The renderer takes plain data (InvoiceDocument), not models, so it can be timed and
tested without a database. The lines table repeats its header on every page, and a
cell of any height (an 80-line address) breaks across pages.

Pango shapes every run with HarfBuzz (Arabic letters joined, combining marks placed),
orders right-to-left runs by the Unicode bidi algorithm, and takes each character from
the first font of FONT_FAMILIES that has it, else from any installed font fontconfig
finds (emoji from Noto Color Emoji). The fonts are Debian's (fonts-noto-core,
fonts-noto-cjk, fonts-noto-color-emoji; see the Dockerfile). A character that no
installed font has would print as a box: the render fails with UnprintableText instead.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from django.template.loader import render_to_string

import jobs
from invoices.totals import Totals
from jobs.errors import JobCancelled, PermanentJobError

logger = logging.getLogger(__name__)

# The first family that has a character draws it. Noto Color Emoji is left to fontconfig's
# fallback on purpose: named here, it would also draw the digits, which it has for keycaps.
FONT_FAMILIES = ("Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans CJK JP")


def fonts() -> tuple[str, ...]:
    """The font families invoices are set in, in order of preference."""
    return FONT_FAMILIES


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


class UnprintableText(PermanentJobError):
    """The document has a character that no installed font can draw."""


def _money(value: Decimal, currency: str) -> str:
    return f"{value:,.2f} {currency}"


def _quantity(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _tax(rate: Decimal) -> str:
    return f"{(rate * 100).normalize():f} %"


# Column widths in mm. Each numeric column widens to its longest value (at the largest
# amounts the model allows, a net amount has 27 digits) and the description takes what
# is left, down to _MIN_DESCRIPTION; beyond that, values wrap inside their cells.
_PAGE_WIDTH = 174
_DEFAULT_WIDTHS = (9, 71, 15, 29, 15, 35)
_MIN_DESCRIPTION = 30
_SUMMARY_LABEL, _SUMMARY_VALUE = 40, 35
_CELL_PADDING = 6 * 0.3528 + 1  # 3 pt each side, and 1 mm to spare
# Advance widths in em of Noto Sans (its digits are tabular), rounded up; 0.7 em for letters.
_EM_WIDTHS = {**dict.fromkeys("0123456789", 0.58), ",": 0.27, ".": 0.27, " ": 0.26, "%": 0.86}


def _width_mm(text: str, font_size: float) -> float:
    ems = sum(_EM_WIDTHS.get(character, 0.7) for character in text)
    return ems * font_size * 0.3528 + _CELL_PADDING


def _fit(texts, default: float, font_size: float = 8.5) -> float:
    return max([default, *(_width_mm(text, font_size) for text in texts)])


def _column_widths(rows: list[dict], totals: dict) -> dict:
    index, _, quantity, unit_price, tax, amount = _DEFAULT_WIDTHS
    numeric = [
        _fit((row["index"] for row in rows), index),
        _fit((row["quantity"] for row in rows), quantity),
        _fit((row["unit_price"] for row in rows), unit_price),
        _fit((row["tax"] for row in rows), tax),
        _fit((row["amount"] for row in rows), amount),
    ]
    if sum(numeric) > _PAGE_WIDTH - _MIN_DESCRIPTION:
        # Too wide even so: shrink the numeric columns alike and let their values wrap.
        numeric = [width * (_PAGE_WIDTH - _MIN_DESCRIPTION) / sum(numeric) for width in numeric]
    description = _PAGE_WIDTH - sum(numeric)
    lines = [numeric[0], description, *numeric[1:]]
    # The total is set in 10 pt bold.
    value = min(_fit(totals.values(), _SUMMARY_VALUE, font_size=10.5), _PAGE_WIDTH - _SUMMARY_LABEL)
    return {
        "lines": [f"{width:.2f}" for width in lines],
        "summary": [_SUMMARY_LABEL, f"{value:.2f}"],
        "summary_total": f"{_SUMMARY_LABEL + value:.2f}",
    }


def _describe(character: str) -> str:
    name = unicodedata.name(character, "")
    if not name:
        category = unicodedata.category(character)
        name = {
            "Cc": "a control character",
            "Co": "a private-use character",
            "Cn": f"a code point unassigned in Unicode {unicodedata.unidata_version}",
        }.get(category, category)
    return f"U+{ord(character):04X} ({name})"


def _fields(document: InvoiceDocument):
    yield "the seller's name", document.seller.name
    yield "the seller's address", document.seller.address
    yield "the customer's name", document.customer.name
    yield "the customer's address", document.customer.address
    yield "the customer's email", document.customer.email
    for position, line in enumerate(document.lines, start=1):
        yield f"the description of line {position}", line.description
    yield "the invoice number", document.number
    yield "the currency", document.currency


class _MissingGlyphs(logging.Handler):
    """Collects the characters WeasyPrint reports drawing as .notdef (a box) in this thread.

    WeasyPrint says so only in a warning; Pango has already laid the page out by then.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.codepoints: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and str(record.msg).startswith(".notdef glyph"):
            self.codepoints.append(record.args[-1])


@contextmanager
def _missing_glyphs():
    logger = logging.getLogger("weasyprint")
    # The check must not depend on how verbose the logging is configured to be.
    if not logger.isEnabledFor(logging.WARNING):
        logger.setLevel(logging.WARNING)
    handler = _MissingGlyphs()
    logger.addHandler(handler)
    try:
        yield handler.codepoints
    finally:
        logger.removeHandler(handler)


def _check_printable(document: InvoiceDocument, codepoints: list[int]) -> None:
    if not codepoints:
        return
    missing = sorted(set(codepoints))
    character = chr(missing[0])
    where = next((field for field, text in _fields(document) if character in text), "the document")
    others = f" (and {len(missing) - 1} more character(s))" if len(missing) > 1 else ""
    raise UnprintableText(
        f"Invoice {document.number}: {where} has {_describe(character)}{others}, which no installed "
        "font can print; it would show as a box. Correct the text (or install a font that has it), "
        "then retry."
    )


def _direction(text: str) -> str:
    """The base direction of a paragraph: that of its first strong character (UAX #9, P2)."""
    for character in text:
        kind = unicodedata.bidirectional(character)
        if kind == "L":
            return "ltr"
        if kind in ("R", "AL"):
            return "rtl"
    return "ltr"


def _paragraphs(party: Party) -> list[tuple[str, str]]:
    rows = [*party.address.splitlines(), *([party.email] if party.email else [])]
    return [(row, _direction(row)) for row in rows]


def _context(document: InvoiceDocument) -> dict:
    currency = document.currency
    rows = [
        {
            "index": str(index),
            "description": line.description,
            "description_dir": _direction(line.description),
            "quantity": _quantity(line.quantity),
            "unit_price": _money(line.unit_price, currency),
            "tax": _tax(line.tax_rate),
            "amount": _money(line.net, currency),
        }
        for index, line in enumerate(document.lines, start=1)
    ]
    totals = {
        "subtotal": _money(document.totals.subtotal, currency),
        "tax": _money(document.totals.tax, currency),
        "total": _money(document.totals.total, currency),
    }
    return {
        "doc": document,
        # WeasyPrint has no dir="auto": each paragraph of user text gets its direction here.
        "parties": [
            {
                "heading": heading,
                "name": party.name,
                "name_dir": _direction(party.name),
                "rows": _paragraphs(party),
            }
            for heading, party in (("From", document.seller), ("Bill to", document.customer))
        ],
        "rows": rows,
        "totals": totals,
        "widths": _column_widths(rows, totals),
    }


def render_pdf(document: InvoiceDocument) -> bytes:
    """Returns the PDF of `document` as bytes.

    Raises UnprintableText (a PermanentJobError) if a character of the document has no
    glyph in any installed font.
    """
    html = render_to_string("invoices/invoice_pdf.html", _context(document))
    engine = _engine()
    with _missing_glyphs() as codepoints:
        pdf = engine.HTML(string=html, url_fetcher=engine.url_fetcher).write_pdf(
            stylesheets=[engine.stylesheet], font_config=engine.font_config
        )
    _check_printable(document, codepoints)
    return pdf


_engine_state = threading.local()


class _Checkpoint(logging.Filter):
    """WeasyPrint reports each step of a render on its progress logger, and each page it
    lays out ("Step 5 - Creating layout - Page 3"): each is a checkpoint of the job
    (jobs.checkpoint), so a PDF job asked to cancel stops between two pages. The record
    itself is dropped (ten a document at INFO would drown the worker's log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            jobs.checkpoint()
        except JobCancelled:
            raise
        except Exception:  # noqa: BLE001 - a ledger that cannot answer now stops no render
            logger.debug("a PDF render's checkpoint could not read the ledger", exc_info=True)
        return False


def _quiet_progress() -> None:
    # Its progress logger reports ten steps per document at INFO.
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)


def _checkpoint_at_each_step() -> None:
    progress = logging.getLogger("weasyprint.progress")
    if not any(isinstance(f, _Checkpoint) for f in progress.filters):
        progress.addFilter(_Checkpoint())
    progress.propagate = False
    progress.setLevel(logging.INFO)


def _engine():
    """WeasyPrint, this thread's font configuration and the parsed stylesheet, made once.

    Imported late: WeasyPrint loads Pango when imported, which only renderers need. The
    font configuration holds Pango's font map, costly to build; the stylesheet, the same
    for every invoice, is parsed here rather than once per document.
    """
    if not hasattr(_engine_state, "HTML"):
        _quiet_progress()
        import weasyprint
        from weasyprint.text.fonts import FontConfiguration
        from weasyprint.urls import URLFetcher

        font_config = FontConfiguration()
        # An invoice needs nothing from outside (no image, no stylesheet, no file): should
        # a URL ever reach the HTML, it is not fetched.
        _engine_state.url_fetcher = URLFetcher(allowed_protocols=())
        families = ", ".join(f'"{family}"' for family in FONT_FAMILIES) + ", sans-serif"
        css = render_to_string("invoices/invoice_pdf.css", {"font_families": families})
        _engine_state.font_config = font_config
        _engine_state.stylesheet = weasyprint.CSS(string=css, font_config=font_config)
        _engine_state.HTML = weasyprint.HTML
        # Only now: WeasyPrint logs progress while it imports (its default stylesheets),
        # and an import a checkpoint interrupted would stay broken in this process.
        _checkpoint_at_each_step()
    return _engine_state
