"""Names and addresses in any script print as written: shaped, in order, never as boxes.

Each rendered invoice is read back with pdftotext and saved as page images under
var/test-artifacts/ (pdf-script-*.png) to be looked at.
"""

import logging
from decimal import Decimal

import pytest

from invoices.pdf import DocumentLine, InvoiceDocument, Party, UnprintableText, render_pdf
from invoices.tests import pdf_reading
from invoices.tests.factories import make_document
from jobs.errors import PermanentJobError


def document(name: str, address: str = "", description: str = "Consulting") -> InvoiceDocument:
    rows = [DocumentLine(description, Decimal("2"), Decimal("12.50"), Decimal("0.20"), Decimal("25.00"))]
    return make_document(Party(name, address, "billing@example.com"), rows)


SCRIPTS = {
    "latin": (
        "Łukasz Żółć-Müller, Crème Brûlée SARL",
        "Ærøskøbing Ñandú-Straße 3\nÎle-de-France Şişli",
        "Noto-Sans",
    ),
    "greek": ("Αθηνά Παπαδοπούλου", "Οδός Ερμού 12\nΑθήνα 105 63", "Noto-Sans"),
    "cyrillic": ("Дмитрий Шостакович", "ул. Тверская, д. 7\nМосква 125009", "Noto-Sans"),
    "chinese": ("张伟科技有限公司", "北京市朝阳区建国路88号", "Noto-Sans-CJK"),
    "japanese": ("山田太郎株式会社", "東京都千代田区丸の内1-1\nやまだ たろう カタカナ", "Noto-Sans-CJK"),
    "korean": ("김민준 주식회사", "서울특별시 강남구 테헤란로 123", "Noto-Sans-CJK"),
    # Right-to-left lines with numbers: see test_number_in_a_hebrew_address_prints_at_the_lines_left_end.
    "arabic": ("شركة محمد عبد الله", "شارع الملك فهد\nالرياض", "Noto-Sans-Arabic"),
    "hebrew": ("דוד כהן בע״מ", "רחוב הרצל\nתל אביב", "Noto-Sans-Hebrew"),
    # Written decomposed: a base letter, then the combining accents.
    "combining-marks": (
        "Jose\u0301 Nguye\u0302\u0303n",
        "Cafe\u0301 Rene\u0301\nA\u030angstro\u0308m",
        "Noto-Sans",
    ),
    "emoji": ("Café Team 😀 👍🏽", "Pizza 🍕 Street 🇩🇪", "Noto-Color-Emoji"),
}


@pytest.mark.parametrize(("name", "address", "font"), SCRIPTS.values(), ids=SCRIPTS.keys())
def test_name_and_address_read_back_in_logical_order_from_the_scripts_font(request, name, address, font):
    pdf = render_pdf(document(name, address, description=f"Services for {name}"))

    pdf_reading.save_pages(pdf, f"pdf-script-{request.node.callspec.id}")
    text = pdf_reading.flat_text(pdf)
    assert pdf_reading.logical(name) in text
    for row in address.splitlines():
        assert pdf_reading.logical(row) in text
    assert f"Services for {pdf_reading.logical(name)}" in text
    assert any(embedded.startswith(font) for embedded in pdf_reading.fonts(pdf)), pdf_reading.fonts(pdf)


def _word_box(pdf: bytes, word: str) -> pdf_reading.Word:
    """The box of `word`, which a right-to-left word matches in its printed (visual) order."""
    _, found = pdf_reading.words(pdf)
    return next(candidate for candidate in found if word in (candidate.text, candidate.text[::-1]))


def test_arabic_name_reads_back_in_logical_order_and_prints_right_to_left():
    pdf = render_pdf(document("شركة محمد", "شارع الملك فهد"))

    assert "شركة محمد" in pdf_reading.text(pdf)
    # The first word of a right-to-left run is printed right of the second.
    assert _word_box(pdf, "شركة").x_min > _word_box(pdf, "محمد").x_max
    assert _word_box(pdf, "شارع").x_min > _word_box(pdf, "الملك").x_max


def test_hebrew_name_prints_right_to_left():
    pdf = render_pdf(document("דוד כהן"))

    assert "דוד כהן" in pdf_reading.text(pdf)
    assert _word_box(pdf, "דוד").x_min > _word_box(pdf, "כהן").x_max


def test_arabic_letters_are_joined():
    # A zero-width non-joiner between letters asks for their isolated forms. Unshaped
    # text prints isolated forms anyway, so both pages would be the same.
    joined = render_pdf(document("محمد"))
    isolated = render_pdf(document("\u200c".join("محمد")))

    assert pdf_reading.first_page_pixels(joined) != pdf_reading.first_page_pixels(isolated)
    assert "محمد" in pdf_reading.text(joined)
    pdf_reading.save_pages(joined, "pdf-script-arabic-joined")
    pdf_reading.save_pages(isolated, "pdf-script-arabic-isolated-forms")


def test_number_in_a_hebrew_address_prints_at_the_lines_left_end():
    pdf = render_pdf(document("דוד כהן", "רחוב הרצל 5"))

    # Logically "Herzl Street 5": the line reads from the right, so the 5 ends it at the left.
    assert _word_box(pdf, "5").x_max < _word_box(pdf, "הרצל").x_min < _word_box(pdf, "רחוב").x_min
    assert "5 רחוב הרצל" in pdf_reading.text(pdf)


def test_right_to_left_description_in_the_lines_table_reads_back_in_order():
    pdf = render_pdf(document("Example", description="استشارات تقنية"))

    assert "استشارات تقنية" in pdf_reading.text(pdf)
    assert _word_box(pdf, "استشارات").x_min > _word_box(pdf, "تقنية").x_max


def test_all_scripts_on_one_invoice_render_without_boxes():
    names = [name for name, _, _ in SCRIPTS.values()]
    pdf = render_pdf(document(names[0], "\n".join(names[1:])))

    pdf_reading.save_pages(pdf, "pdf-script-all-in-one")
    text = pdf_reading.flat_text(pdf)
    for name in names:
        assert pdf_reading.logical(name) in text


@pytest.mark.parametrize(
    ("field", "where", "described"),
    [
        ("name", "the customer's name", "U+E000 (a private-use character)"),
        ("address", "the customer's address", "U+0378 (a code point unassigned in Unicode"),
        ("description", "the description of line 1", "U+E000 (a private-use character)"),
        ("name", "the customer's name", "U+0007 (a control character)"),
    ],
)
def test_a_character_no_font_has_fails_the_render_with_a_clear_message(field, where, described):
    character = described[2:6]
    bad = f"Acme {chr(int(character, 16))} Ltd"
    values = {"name": "Acme", "address": "", "description": "Consulting", field: bad}

    with pytest.raises(UnprintableText) as raised:
        render_pdf(document(values["name"], values["address"], values["description"]))

    message = str(raised.value)
    assert isinstance(raised.value, PermanentJobError)
    assert message.startswith(f"Invoice INV-2026-000123: {where} has {described}")
    assert "no installed font can print" in message and "then retry" in message


def test_the_missing_glyph_check_holds_when_logging_is_quiet():
    weasyprint_logger = logging.getLogger("weasyprint")
    previous = weasyprint_logger.level
    weasyprint_logger.setLevel(logging.CRITICAL)
    try:
        with pytest.raises(UnprintableText):
            render_pdf(document("Acme \ue000"))
    finally:
        weasyprint_logger.setLevel(previous)


@pytest.mark.django_db(transaction=True)
def test_pdf_job_for_a_name_no_font_can_print_ends_dead_with_the_reason_and_stores_nothing(worker):
    import jobs
    from invoices.tasks import generate_pdf
    from invoices.tests.factories import make_customer, make_invoice
    from invoices.tests.test_pdf_jobs import finished
    from jobs.models import JobState

    invoice = make_invoice(customer=make_customer(name="Acme \ue000 Ltd"), lines=1)

    job = finished(jobs.enqueue(generate_pdf, invoice.id).id)

    assert job.state == JobState.DEAD
    assert job.attempts == 1
    assert "the customer's name has U+E000 (a private-use character)" in job.last_error
    invoice.refresh_from_db()
    assert not invoice.pdf


@pytest.mark.django_db(transaction=True)
def test_pdf_job_for_an_arabic_and_chinese_customer_succeeds(worker):
    import jobs
    from invoices.tasks import generate_pdf
    from invoices.tests.factories import make_customer, make_invoice
    from invoices.tests.test_pdf_jobs import finished
    from jobs.models import JobState

    customer = make_customer(name="شركة محمد 张伟")
    invoice = make_invoice(customer=customer, lines=1)

    job = finished(jobs.enqueue(generate_pdf, invoice.id).id)

    assert job.state == JobState.SUCCEEDED, job.last_error
    invoice.refresh_from_db()
    with invoice.pdf.open("rb") as handle:
        text = pdf_reading.text(handle.read())
    assert "شركة محمد" in text and "张伟" in text
