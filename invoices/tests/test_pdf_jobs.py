"""The invoice PDF job, end to end with a real worker."""

import io
import os

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.urls import reverse
from pypdf import PdfReader

from invoices import rendering, services
from invoices.models import Invoice, InvoiceEvent, InvoiceEventType, InvoiceLine
from invoices.tests.factories import make_invoice
from jobs.broker.publisher import publish_jobs
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import finished

pytestmark = pytest.mark.django_db(transaction=True)


def generated_events(invoice) -> int:
    return InvoiceEvent.objects.filter(invoice=invoice, type=InvoiceEventType.PDF_GENERATED).count()


def test_admin_action_enqueues_a_pdf_job_the_worker_completes_and_the_pdf_downloads(worker, client):
    invoice = make_invoice(lines=3)
    client.force_login(User.objects.create_superuser("boss", password="pw"))

    response = client.post(
        reverse("admin:invoices_invoice_changelist"),
        {"action": "generate_pdf", "_selected_action": [invoice.pk]},
        follow=True,
    )
    assert "PDF job(s) enqueued for 1 invoice(s)" in response.content.decode()

    invoice.refresh_from_db()
    job = finished(invoice.last_pdf_job_id)
    assert job.state == JobState.SUCCEEDED
    assert job.queue == "invoices"
    invoice.refresh_from_db()
    assert invoice.pdf.name == rendering.pdf_name(invoice.id, invoice.pdf_fingerprint)

    listing = client.get(reverse("admin:invoices_invoice_changelist")).content.decode()
    assert "Succeeded" in listing
    download = client.get(reverse("admin:invoices_invoice_pdf", args=[invoice.pk]))
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="{invoice.number}.pdf"'
    text = PdfReader(io.BytesIO(b"".join(download.streaming_content))).pages[0].extract_text()
    assert invoice.number in text
    assert "Zofia Łukasiewicz-Müller" in text
    # 1, 2 and 3 times 10.01 at 20 %: tax per line 2.00 + 4.00 + 6.01 (rounded per line)
    assert "60.06 EUR" in text and "12.01 EUR" in text and "72.07 EUR" in text


def test_double_click_and_redelivery_render_the_unchanged_invoice_once(worker):
    invoice = make_invoice()

    first = services.request_pdf(invoice)
    second = services.request_pdf(invoice)  # the double click
    assert first.id == second.id
    assert finished(first.id).state == JobState.SUCCEEDED
    invoice.refresh_from_db()
    path = default_storage.path(invoice.pdf.name)
    mtime = os.stat(path).st_mtime_ns

    publish_jobs([first], force=True)  # RabbitMQ redelivers it
    other = services.request_pdf(invoice, priority="urgent")  # asked again later, unchanged

    assert other.id == first.id
    wait_for(
        lambda: "already succeeded" in worker.log() and str(first.id) in worker.log(), message="the skip"
    )
    assert generated_events(invoice) == 1
    assert os.stat(path).st_mtime_ns == mtime
    assert len(os.listdir(os.path.dirname(path))) == 1


def test_pdf_job_run_twice_stores_one_file(worker):
    """Even when the job itself runs again (a second job for the same content)."""
    invoice = make_invoice()
    rendering.generate_pdf(invoice.id)
    rendering.generate_pdf(invoice.id)
    invoice.refresh_from_db()
    assert generated_events(invoice) == 1
    assert len(os.listdir(os.path.dirname(default_storage.path(invoice.pdf.name)))) == 1


def test_a_run_after_one_killed_mid_write_leaves_no_temporary_file():
    """A worker SIGKILLed while writing the PDF leaves its temporary file; the job's
    next run (holding the invoice's row lock) removes it and stores the one PDF."""
    invoice = make_invoice()
    folder = os.path.dirname(default_storage.path(rendering.pdf_name(invoice.id, "0" * 16)))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".tmp-killed.part"), "wb") as fh:
        fh.write(b"%PDF-1.7 half of a file")
    rendering.generate_pdf(invoice.id)
    invoice.refresh_from_db()
    assert os.listdir(folder) == [os.path.basename(invoice.pdf.name)]


def test_edited_invoice_gets_a_fresh_pdf(worker):
    invoice = make_invoice(lines=2)
    assert finished(services.request_pdf(invoice).id).state == JobState.SUCCEEDED
    invoice.refresh_from_db()
    old_name = invoice.pdf.name

    InvoiceLine.objects.create(invoice=invoice, position=9, description="Late addition", unit_price="5.00")
    job = services.request_pdf(invoice)

    assert finished(job.id).state == JobState.SUCCEEDED
    invoice.refresh_from_db()
    assert invoice.pdf.name != old_name
    assert "Late addition" in PdfReader(default_storage.path(invoice.pdf.name)).pages[0].extract_text()
    assert generated_events(invoice) == 2


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda invoice: invoice.lines.all().delete(), "has no lines"),
        (lambda invoice: invoice.lines.filter(position=0).update(quantity=-2), "quantities must be positive"),
        (lambda invoice: Invoice.objects.filter(pk=invoice.pk).delete(), "does not exist"),
    ],
    ids=["no-lines", "negative-quantity", "unknown-invoice"],
)
def test_invalid_invoice_ends_dead_with_a_clear_message_and_no_retry(worker, break_it, message):
    import jobs
    from invoices.tasks import generate_pdf

    invoice = make_invoice(lines=2)
    break_it(invoice)

    job = finished(jobs.enqueue(generate_pdf, invoice.id).id)

    assert job.state == JobState.DEAD
    assert message in job.last_error
    assert job.attempts == 1
    if Invoice.objects.filter(pk=invoice.pk).exists():
        failed = wait_for(
            lambda: InvoiceEvent.objects.filter(invoice=invoice, type=InvoiceEventType.PDF_FAILED).first(),
            message="the PDF-failed event",
        )
        assert failed.data["job"] == str(job.id) and message in failed.data["error"]


def test_a_pdf_job_that_dies_outside_its_body_is_in_the_invoices_history_too():
    """The PDF-failed event comes from the task's on_dead hook, which every dead path
    runs (here, a job marked dead as if the dead-letter keeper had done it)."""
    from jobs.base import ended_dead

    invoice = make_invoice(lines=1)
    job = Job.objects.create(
        task_name="invoices.generate_pdf", queue="invoices", priority=5, args=[invoice.id]
    )
    subscriber_job = Job.objects.create(
        task_name="invoices.on_issued.generate_pdf",
        queue="invoices",
        priority=5,
        args=[1, {"invoice_id": invoice.id}],
    )

    ended_dead(job, "RabbitMQ dead-lettered its message")
    ended_dead(subscriber_job, "poison")

    failed = InvoiceEvent.objects.filter(invoice=invoice, type=InvoiceEventType.PDF_FAILED)
    assert [(e.data["job"], e.data["error"]) for e in failed] == [
        (str(job.id), "RabbitMQ dead-lettered its message"),
        (str(subscriber_job.id), "poison"),
    ]
