"""Invoice jobs: thin callers of invoices.services."""

from invoices import services
from jobs.topology import Workload
from project.celery import app


@app.task(
    name="invoices.generate_pdf",
    queue=Workload.INVOICES,
    transient_errors=(OSError,),
    max_retries=5,
    retry_backoff=2.0,
    retry_backoff_max=120.0,
)
def generate_pdf(invoice_id: int, email_to_customer: bool = False) -> str:
    return services.generate_pdf(invoice_id, email_to_customer=email_to_customer)
