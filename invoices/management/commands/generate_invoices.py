import time

from django.core.management.base import BaseCommand
from django.urls import reverse
from tqdm import tqdm

import jobs
from invoices import selectors
from invoices.models import Invoice, InvoiceStatus
from invoices.tasks import generate_pdfs
from jobs.models import Job


class Command(BaseCommand):
    help = (
        "Renders the PDF of every issued invoice without a current one (or of those matching "
        "the filters) in one bulk job at bulk priority, which the admin shows with its progress "
        "and can cancel; then follows its progress until it ends."
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
        job = jobs.enqueue(generate_pdfs, invoice_ids, priority="bulk")
        page = reverse("admin:jobs_job_change", args=[job.id])
        self.stdout.write(
            f"enqueued a bulk PDF job for {len(invoice_ids)} invoice(s) at bulk priority: job {job.id} "
            f"(admin: {page})"
        )
        if no_wait:
            return
        job = self._follow(job, len(invoice_ids), started + timeout)
        elapsed = time.monotonic() - started
        result = job.result if isinstance(job.result, dict) else {}
        failed = result.get("failed", {})
        self.stdout.write(
            f"{job.state}: {result.get('done', 0)} PDF(s) stored, {len(failed)} failed, elapsed: {elapsed:.1f}s"
        )
        for invoice_id, error in failed.items():
            self.stdout.write(f"  invoice {invoice_id}: {error}")

    def _follow(self, job: Job, total: int, deadline: float) -> Job:
        """A progress bar on a terminal; elsewhere (logs, CI) a line each time it moves."""
        on_a_terminal = self.stdout.isatty()
        shown = -1
        with tqdm(total=total, unit="pdf", disable=not on_a_terminal) as bar:
            while time.monotonic() < deadline:
                job.refresh_from_db()
                done = job.progress_done or 0
                if done != shown:
                    if on_a_terminal:
                        bar.update(done - max(shown, 0))
                    else:
                        self.stdout.write(
                            f"progress: {done}/{total} ({100 * done // total}%) {job.progress_message}"
                        )
                    shown = done
                if job.is_finished:
                    break
                time.sleep(0.5)
        return job
