"""Invoice jobs: thin callers of the worker-side modules (rendering, notifications,
cached_lists). invoices.services enqueues them and nothing here imports it back.

The names never change, because queued messages and the beat schedule carry them;
that is why two jobs here are named `emails.*`.
"""

from celery import shared_task

import jobs
from invoices import cached_lists, events, notifications, rendering
from jobs.base import JobTask
from jobs.models import Job
from jobs.topology import Workload


class PdfJobTask(JobTask):
    """A PDF job: when it ends dead, the invoice's history says so, with the error."""

    def on_dead(self, job: Job, error: str) -> None:
        invoice_id = self.invoice_id(job)
        if invoice_id is not None:
            events.record_pdf_failed(invoice_id, job, error)

    def invoice_id(self, job: Job) -> int | None:
        # generate_pdf(invoice_id, ...), enqueued by services or launched with keywords.
        return job.kwargs.get("invoice_id", job.args[0] if job.args else None)


class IssuedInvoicePdfTask(PdfJobTask):
    def invoice_id(self, job: Job) -> int | None:
        return job.args[1]["invoice_id"]  # an event subscriber's (event_id, payload)


@shared_task(
    base=PdfJobTask,
    name="invoices.generate_pdf",
    queue=Workload.INVOICES,
    transient_errors=(OSError,),
    max_retries=5,
    retry_backoff=2.0,
    retry_backoff_max=120.0,
    launchable=True,
)
def generate_pdf(invoice_id: int, email_to_customer: bool = False) -> str:
    return rendering.generate_pdf(invoice_id, email_to_customer=email_to_customer)


@shared_task(bind=True, name="invoices.generate_pdfs", queue=Workload.INVOICES, transient_errors=(OSError,))
def generate_pdfs(self, invoice_ids: list[int]) -> dict:
    """A bulk run of PDFs (`manage.py generate_invoices`), one job an operator can watch
    (its progress, invoice by invoice) and cancel (it checks before each invoice and at
    every page). An invoice that cannot get a PDF is recorded in its history and
    skipped; a transient error retries the run, which skips the PDFs already stored."""
    done, failed = 0, {}
    for position, invoice_id in enumerate(invoice_ids, start=1):
        jobs.checkpoint()
        try:
            rendering.generate_pdf(invoice_id)
            done += 1
        except jobs.PermanentJobError as exc:
            failed[str(invoice_id)] = str(exc)
            events.record_pdf_failed(invoice_id, Job(id=self.request.id), str(exc))
        self.progress(position, len(invoice_ids), f"invoice {invoice_id}: {len(failed)} failed so far")
    return {"done": done, "failed": failed}


@jobs.subscribe(events.INVOICE_ISSUED)
@shared_task(
    base=IssuedInvoicePdfTask,
    name="invoices.on_issued.generate_pdf",
    queue=Workload.INVOICES,
    transient_errors=(OSError,),
)
def pdf_for_issued_invoice(event_id: int, payload: dict) -> str:
    return rendering.generate_pdf(payload["invoice_id"])


@jobs.subscribe(events.INVOICE_ISSUED)
@shared_task(name="invoices.on_issued.refresh_lists", queue=Workload.CACHE)
def refresh_lists_for_issued_invoice(event_id: int, payload: dict) -> None:
    cached_lists.invalidate_invoice_lists(payload["customer_id"])


@jobs.subscribe(events.INVOICE_ISSUED)
@shared_task(name="emails.on_invoice_issued", queue=Workload.EMAILS, max_retries=12, retry_backoff=2.0)
def email_issued_invoice(event_id: int, payload: dict) -> str:
    """Emails the invoice once its PDF (made by another subscriber) is stored; retries until then."""
    return notifications.email_issued_invoice(payload["invoice_id"])


@shared_task(name="emails.send_overdue_reminders", launchable=True)
def send_overdue_reminders() -> int:
    """Daily (django-celery-beat): one reminder per overdue invoice per day."""
    return notifications.queue_overdue_reminders()
