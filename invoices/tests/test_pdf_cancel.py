"""A PDF job asked to cancel stops between two pages: every step and every page that
WeasyPrint lays out is a checkpoint of the running job (jobs.checkpoint)."""

from decimal import Decimal

import pytest

from invoices.pdf import DocumentLine, Party, render_pdf
from invoices.tests import pdf_reading
from invoices.tests.factories import make_document
from jobs.errors import JobCancelled
from jobs.running import set_running_task


class _AskedAfter:
    """A running task (as jobs.checkpoint sees one) whose cancel arrives at its `n`th check."""

    def __init__(self, n: int):
        self.n, self.checks = n, 0

    def checkpoint(self) -> None:
        self.checks += 1
        if self.checks >= self.n:
            raise JobCancelled("cancelled")


def _document(address_lines: int):
    rows = [DocumentLine("Consulting", Decimal("2"), Decimal("12.50"), Decimal("0.20"), Decimal("25.00"))]
    address = "\n".join(f"Address line {n}" for n in range(1, address_lines + 1))
    return make_document(Party("Customer", address, "billing@example.com"), rows)


def _checks(document) -> tuple[int, int]:
    """How many checkpoints a render of `document` passes, and its pages."""
    counting = _AskedAfter(10_000)
    set_running_task(counting)
    try:
        pdf = render_pdf(document)
    finally:
        set_running_task(None)
    return counting.checks, len(pdf_reading.words(pdf)[0])


def test_a_render_checks_at_every_page_and_stops_when_asked():
    render_pdf(_document(1))  # the renderer's first use parses its stylesheet
    short_checks, short_pages = _checks(_document(1))
    long_checks, long_pages = _checks(_document(120))
    assert long_pages >= short_pages + 2
    assert long_checks - short_checks == long_pages - short_pages  # one check a page laid out

    asked = _AskedAfter(short_checks + 1)  # its cancel arrives in the middle of the layout
    set_running_task(asked)
    try:
        with pytest.raises(JobCancelled):
            render_pdf(_document(120))
    finally:
        set_running_task(None)
    assert asked.checks == short_checks + 1


def test_outside_a_job_a_render_checks_nothing():
    assert render_pdf(_document(1)).startswith(b"%PDF")
