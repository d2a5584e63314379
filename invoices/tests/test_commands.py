"""The bulk and demo commands, with a real worker."""

import pytest
from django.core.management import call_command

from invoices.models import Customer, Invoice, InvoiceStatus
from invoices.tests.factories import make_customer, make_invoice
from jobs.models import Job
from jobs.testing import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_generate_invoices_runs_one_bulk_job_prints_its_progress_and_summarizes(worker, capsys):
    customer = make_customer()
    issued = [make_invoice(customer, lines=2) for _ in range(4)]
    Invoice.objects.filter(pk__in=[i.pk for i in issued]).update(status=InvoiceStatus.ISSUED)
    make_invoice(customer, lines=2)  # a draft: not selected
    broken = make_invoice(customer, lines=1)
    broken.lines.update(quantity=0)
    Invoice.objects.filter(pk=broken.pk).update(status=InvoiceStatus.ISSUED)

    call_command("generate_invoices")
    first = capsys.readouterr().out
    call_command("generate_invoices", "--no-wait")
    second = capsys.readouterr().out

    assert "enqueued a bulk PDF job for 5 invoice(s) at bulk priority" in first
    # Not a terminal: progress lines, the last one complete.
    progress = [line for line in first.splitlines() if line.startswith("progress: ")]
    assert progress and progress[-1].startswith("progress: 5/5 (100%)")
    assert "succeeded: 4 PDF(s) stored, 1 failed" in first
    assert all(Invoice.objects.get(pk=i.pk).last_pdf_job_id for i in issued)
    assert f"invoice {broken.pk}: Invoice {broken.number}, line 1" in first
    (job,) = Job.objects.filter(task_name="invoices.generate_pdfs", state="succeeded")
    assert job.priority == 1 and job.progress_done == 5 and job.progress_total == 5
    assert all(Invoice.objects.get(pk=i.pk).pdf for i in issued)
    assert broken.events.filter(type="pdf_failed").exists()
    # Current PDFs are skipped; the broken invoice is asked again.
    assert "enqueued a bulk PDF job for 1 invoice(s)" in second


def test_generate_invoices_bulk_job_cancelled_from_the_admin_stops_between_invoices(worker, capsys):
    import jobs

    customer = make_customer()
    invoices = [make_invoice(customer, lines=2) for _ in range(40)]
    Invoice.objects.filter(pk__in=[i.pk for i in invoices]).update(status=InvoiceStatus.ISSUED)
    call_command("generate_invoices", "--no-wait")
    (job,) = Job.objects.filter(task_name="invoices.generate_pdfs")
    wait_for(lambda: (Job.objects.get(pk=job.pk).progress_done or 0) >= 2, message="a few PDFs")

    assert jobs.cancel(job.id, by="operator") == "stopping"

    job = wait_for(lambda: Job.objects.filter(pk=job.pk, state="cancelled").first(), message="the cancel")
    stored = Invoice.objects.filter(pk__in=[i.pk for i in invoices]).exclude(pdf="").count()
    assert 2 <= stored < 40
    assert stored == job.progress_done  # the last report is the last PDF: none after the stop


def test_seed_demo_creates_customers_and_invoices_once(worker, smtp, capsys):
    # worker: issued demo invoices fan out to jobs, which must finish inside this test.
    call_command("seed_demo")
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "created 3 customers and 12 invoices" in out and "demo data already present" in out
    assert Customer.objects.count() == 3 and Invoice.objects.count() == 12
    assert Invoice.objects.filter(customer__name="Łukasz Żółkiewski").exists()


def test_prune_jobs_deletes_old_finished_jobs_and_unlinks_what_pointed_at_them(worker, capsys):
    import datetime

    from django.utils import timezone

    from emails.models import OutgoingEmail
    from jobs.models import DeadLetter, JobState

    old = timezone.now() - datetime.timedelta(days=40)
    pruned = Job.objects.create(task_name="invoices.generate_pdf", queue="invoices", priority=5,
                                state=JobState.SUCCEEDED, created_at=old)  # fmt: skip
    dead = Job.objects.create(task_name="x", queue="default", priority=5, state=JobState.DEAD, created_at=old)
    recent = Job.objects.create(task_name="x", queue="default", priority=5, state=JobState.SUCCEEDED)
    invoice = make_invoice(lines=1)
    Invoice.objects.filter(pk=invoice.pk).update(last_pdf_job=pruned)
    email = OutgoingEmail.objects.create(to=["a@example.com"], subject="s", template="test",
                                         message_id="<m@example.com>", job=pruned)  # fmt: skip
    letter = DeadLetter.objects.create(identity="i", job=pruned)

    call_command("prune_jobs", "--older-than", "30d")

    assert "pruned 1 job(s)" in capsys.readouterr().out
    assert not Job.objects.filter(pk=pruned.pk).exists()
    assert Job.objects.filter(pk__in=[dead.pk, recent.pk]).count() == 2, "dead and recent jobs stay"
    assert Invoice.objects.get(pk=invoice.pk).last_pdf_job is None
    assert OutgoingEmail.objects.get(pk=email.pk).job is None
    assert DeadLetter.objects.get(pk=letter.pk).job is None
