"""PDFs per second for a 10-line and a 200-line invoice, rendered in one process.

    .venv/bin/python bench/pdf_render.py [--seconds 5]

Renders plain InvoiceDocuments (no database), which is what one worker process does
for each PDF job once the invoice is loaded.
"""

import argparse
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")

import django  # noqa: E402

django.setup()

from invoices.pdf import DocumentLine, InvoiceDocument, Party, fonts, render_pdf  # noqa: E402
from invoices.totals import compute_totals, line_amounts  # noqa: E402


def document(lines: int) -> InvoiceDocument:
    rows = []
    for n in range(lines):
        quantity, price, rate = Decimal(n % 7 + 1), Decimal("19.99"), Decimal("0.20")
        rows.append(
            DocumentLine(
                f"Łódź Straße item {n} – café", quantity, price, rate, line_amounts(quantity, price, rate).net
            )
        )
    return InvoiceDocument(
        number="INV-2026-000001",
        issue_date="2026-11-23",
        due_date="2026-12-07",
        currency="EUR",
        seller=Party("Example Trading GmbH", "Hauptstraße 1\n10115 Berlin"),
        customer=Party("Zofia Łukasiewicz-Müller", "ul. Piękna 12\nWarszawa", "zofia@example.com"),
        lines=tuple(rows),
        totals=compute_totals(rows),
    )


def measure(lines: int, seconds: float) -> tuple[float, float, float, int]:
    doc = document(lines)
    render_pdf(doc)  # warm up: fonts, imports
    timings = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        pdf = render_pdf(doc)
        timings.append(time.perf_counter() - start)
    per_second = len(timings) / sum(timings)
    return per_second, statistics.median(timings) * 1000, max(timings) * 1000, len(pdf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time spent on each size")
    args = parser.parse_args()
    print(f"font: {fonts()[0]} · {os.cpu_count()} cpu(s)")
    print(f"{'lines':>6} {'pdf/s':>8} {'median ms':>10} {'max ms':>8} {'bytes':>8}")
    for lines in (10, 200):
        per_second, median_ms, max_ms, size = measure(lines, args.seconds)
        print(f"{lines:>6} {per_second:>8.1f} {median_ms:>10.2f} {max_ms:>8.2f} {size:>8}")


if __name__ == "__main__":
    main()
