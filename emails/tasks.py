"""Email jobs: thin callers of emails.services."""

import jobs
from emails import services
from invoices.services import INVOICE_ISSUED
from jobs.base import JobTask
from jobs.topology import Workload
from project.celery import app


class SendEmailTask(JobTask):
    def on_dead(self, job, error: str) -> None:
        services.mark_failed(job.args[0], error)


# Its rate limit and backoff come from settings (CELERY_TASK_ANNOTATIONS).
@app.task(
    base=SendEmailTask, name="emails.send", queue=Workload.EMAILS, max_retries=6, retry_backoff_max=600.0
)
def send_email(email_id: int) -> str:
    return services.send_outgoing_email(email_id)


@app.task(name="emails.send_overdue_reminders", launchable=True)
def send_overdue_reminders() -> int:
    """Daily (django-celery-beat): one reminder per overdue invoice per day."""
    return services.queue_overdue_reminders()


@jobs.subscribe(INVOICE_ISSUED)
@app.task(name="emails.on_invoice_issued", queue=Workload.EMAILS, max_retries=12, retry_backoff=2.0)
def email_issued_invoice(event_id: int, payload: dict) -> str:
    """Emails the invoice once its PDF (made by another subscriber) is stored; retries until then."""
    return services.email_issued_invoice(payload["invoice_id"])
