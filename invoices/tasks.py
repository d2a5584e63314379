"""Invoice jobs: thin callers of invoices.services."""

import jobs
from invoices import services
from jobs import cache as job_cache
from jobs.topology import Workload
from project.celery import app


@app.task(
    name="invoices.generate_pdf",
    queue=Workload.INVOICES,
    transient_errors=(OSError,),
    max_retries=5,
    retry_backoff=2.0,
    retry_backoff_max=120.0,
    launchable=True,
)
def generate_pdf(invoice_id: int, email_to_customer: bool = False) -> str:
    return services.generate_pdf(invoice_id, email_to_customer=email_to_customer)


@jobs.subscribe(services.INVOICE_ISSUED)
@app.task(name="invoices.on_issued.generate_pdf", queue=Workload.INVOICES, transient_errors=(OSError,))
def pdf_for_issued_invoice(event_id: int, payload: dict) -> str:
    return services.generate_pdf(payload["invoice_id"])


@jobs.subscribe(services.INVOICE_ISSUED)
@app.task(name="invoices.on_issued.refresh_lists", queue=Workload.CACHE)
def refresh_lists_for_issued_invoice(event_id: int, payload: dict) -> None:
    job_cache.invalidate(namespace=services.invoice_list_namespace(payload["customer_id"]))
