import time

from django.core.management.base import BaseCommand
from django.db import transaction
from tqdm import tqdm

from invoices import selectors, services
from invoices.models import Invoice, InvoiceStatus
from jobs.models import Job, JobState


class Command(BaseCommand):
    help = (
        "Enqueues PDF jobs at bulk priority for every issued invoice without a current PDF "
        "(or those matching the filters), then shows progress until they are done."
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
        job_ids = []
        with transaction.atomic():
            for invoice in invoices.iterator(chunk_size=500):
                document = selectors.invoice_document(invoice)
                if (
                    not all
                    and invoice.pdf
                    and invoice.pdf_fingerprint == selectors.document_fingerprint(document)
                ):
                    continue
                job_ids.append(services.request_pdf(invoice, priority="bulk").id)
        self.stdout.write(f"enqueued {len(job_ids)} PDF job(s) at bulk priority")
        if no_wait or not job_ids:
            return
        finished_states = [JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED]
        done = 0
        with tqdm(total=len(job_ids), unit="pdf", disable=None) as bar:
            while done < len(job_ids) and time.monotonic() - started < timeout:
                now_done = Job.objects.filter(pk__in=job_ids, state__in=finished_states).count()
                bar.update(now_done - done)
                done = now_done
                if done < len(job_ids):
                    time.sleep(0.5)
        counts = dict.fromkeys(finished_states, 0)
        for state in Job.objects.filter(pk__in=job_ids).values_list("state", flat=True):
            counts[state] = counts.get(state, 0) + 1
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"done: {counts[JobState.SUCCEEDED]}, dead: {counts[JobState.DEAD]}, "
            f"unfinished: {len(job_ids) - done}, elapsed: {elapsed:.1f}s"
        )
