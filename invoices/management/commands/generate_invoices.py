import time

from django.core.management.base import BaseCommand
from django.db import transaction
from django.urls import reverse
from tqdm import tqdm

import jobs
from invoices import selectors
from invoices.models import Invoice, InvoiceStatus
from invoices.tasks import generate_pdfs
from jobs.models import Job

# Invoices a bulk job renders (its payload stays far below JOBS_MAX_PAYLOAD_BYTES), and
# the seconds of soft time limit it gets for each.
CHUNK = 5000
SECONDS_PER_PDF = 30.0


class Command(BaseCommand):
    help = (
        "Renders the PDF of every issued invoice without a current one (or of those matching "
        "the filters) in bulk jobs at bulk priority (one per 5,000 invoices), which the admin shows "
        "with their progress and can cancel; then follows their progress until they end."
    )

    def add_arguments(self, parser):
        parser.add_argument("--customer", type=int, help="Only this customer's invoices (id).")
        parser.add_argument("--status", default=InvoiceStatus.ISSUED, choices=InvoiceStatus.values)
        parser.add_argument("--all", action="store_true", help="Also invoices whose PDF is current.")
        parser.add_argument("--no-wait", action="store_true", help="Enqueue and exit.")
        parser.add_argument("--timeout", type=float, default=3600, help="Seconds to wait at most.")

    def handle(self, *args, customer, status, all, no_wait, timeout, **options):
        invoices = Invoice.objects.filter(status=status).select_related("customer").prefetch_related("lines")
        if customer:
            invoices = invoices.filter(customer_id=customer)
        started = time.monotonic()
        invoice_ids = []
        for invoice in invoices.order_by("pk").iterator(chunk_size=500):
            document = selectors.invoice_document(invoice)
            if (
                not all
                and invoice.pdf
                and invoice.pdf_fingerprint == selectors.document_fingerprint(document)
            ):
                continue
            invoice_ids.append(invoice.pk)
        if not invoice_ids:
            self.stdout.write("every selected invoice has a current PDF; nothing to do")
            return
        bulk_jobs = []
        with transaction.atomic():
            for start in range(0, len(invoice_ids), CHUNK):
                chunk = invoice_ids[start : start + CHUNK]
                # Its own soft limit, sized to its invoices: the project's 300 s is one PDF's.
                job = jobs.enqueue(
                    generate_pdfs,
                    chunk,
                    priority="bulk",
                    soft_time_limit=max(300.0, SECONDS_PER_PDF * len(chunk)),
                )
                Invoice.objects.filter(pk__in=chunk).update(last_pdf_job=job)
                bulk_jobs.append(job)
        for job in bulk_jobs:
            page = reverse("admin:jobs_job_change", args=[job.id])
            self.stdout.write(
                f"enqueued a bulk PDF job for {len(job.args[0])} invoice(s) at bulk priority: job {job.id} "
                f"(admin: {page})"
            )
        if no_wait:
            return
        bulk_jobs = self._follow(bulk_jobs, len(invoice_ids), started + timeout)
        elapsed = time.monotonic() - started
        stored, failed = 0, {}
        for job in bulk_jobs:
            result = job.result if isinstance(job.result, dict) else {}
            stored += result.get("done", 0)
            failed.update(result.get("failed", {}))
        states = ", ".join(sorted({job.state for job in bulk_jobs}))
        self.stdout.write(f"{states}: {stored} PDF(s) stored, {len(failed)} failed, elapsed: {elapsed:.1f}s")
        for invoice_id, error in failed.items():
            self.stdout.write(f"  invoice {invoice_id}: {error}")

    def _follow(self, bulk_jobs: list[Job], total: int, deadline: float) -> list[Job]:
        """A progress bar on a terminal; elsewhere (logs, CI) a line each time it moves."""
        on_a_terminal = self.stdout.isatty()
        shown = -1
        with tqdm(total=total, unit="pdf", disable=not on_a_terminal) as bar:
            while time.monotonic() < deadline:
                bulk_jobs = list(
                    Job.objects.filter(pk__in=[job.pk for job in bulk_jobs]).order_by("created_at")
                )
                done = sum(job.progress_done or 0 for job in bulk_jobs)
                message = next((job.progress_message for job in bulk_jobs if not job.is_finished), "")
                if done != shown:
                    if on_a_terminal:
                        bar.update(done - max(shown, 0))
                    else:
                        self.stdout.write(
                            f"progress: {done}/{total} ({100 * done // total}%) {message}".rstrip()
                        )
                    shown = done
                if all(job.is_finished for job in bulk_jobs):
                    break
                time.sleep(0.5)
        return bulk_jobs
