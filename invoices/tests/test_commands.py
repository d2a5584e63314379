"""The bulk and demo commands, with a real worker."""

import pytest
from django.core.management import call_command

from invoices.models import Customer, Invoice, InvoiceStatus
from invoices.tests.factories import make_customer, make_invoice
from jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def test_generate_invoices_enqueues_bulk_pdfs_waits_and_summarizes(worker, capsys):
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

    assert "enqueued 5 PDF job(s) at bulk priority" in first
    assert "done: 4, dead: 1, unfinished: 0" in first
    assert {job.priority for job in Job.objects.filter(task_name="invoices.generate_pdf")} == {1}
    assert all(Invoice.objects.get(pk=i.pk).pdf for i in issued)
    # Current PDFs are skipped; the broken invoice is asked again.
    assert "enqueued 1 PDF job(s)" in second


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
