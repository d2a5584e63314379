"""Email jobs: thin callers of emails.delivery; emails.services enqueues them."""

from celery import shared_task
from django.conf import settings

from emails import delivery
from jobs.base import JobTask
from jobs.models import Job
from jobs.retry import RetryPolicy
from jobs.topology import Workload


class SendEmailTask(JobTask):
    def on_dead(self, job: Job, error: str) -> None:
        delivery.mark_failed(job.args[0], error)

    def on_expired(self, job: Job) -> None:
        delivery.mark_failed(job.args[0], f"Not sent: {job.last_error or 'past its deadline'}")


@shared_task(
    base=SendEmailTask,
    name="emails.send",
    queue=Workload.EMAILS,
    global_rate_limit=settings.EMAILS_RATE_LIMIT,
    retry_policy=RetryPolicy(max_retries=6, backoff=settings.EMAILS_RETRY_BACKOFF_SECONDS, backoff_max=600.0),
)
def send_email(email_id: int) -> str:
    return delivery.send_outgoing_email(email_id)
