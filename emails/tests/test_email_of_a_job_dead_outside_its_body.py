"""An email whose job ends dead outside its body is marked failed, not left `queued`."""

import pytest

from emails import services
from emails.models import EmailStatus, EmailTemplate, OutgoingEmail
from jobs.models import Job, JobState
from jobs.testing import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_email_whose_job_fails_before_its_body_runs_is_marked_failed(own_worker, worker_env, smtp):
    """A rate limit the worker cannot read fails every emails.send job before its body:
    the worker ends the job dead (its message goes to the dead-letter queue), and the
    same on_dead hook as for a failed body marks the email failed, with the reason."""
    own_worker.env = {**worker_env, "EMAILS_RATE_LIMIT": "ten a second"}
    own_worker.start()

    email = services.queue_email(
        to=["anna@example.com"],
        subject="Hello",
        template=EmailTemplate.TEST,
        context={"requested_by": "tests"},
    )

    email = wait_for(
        lambda: OutgoingEmail.objects.filter(pk=email.pk, status=EmailStatus.FAILED).first(),
        timeout=30,
        message="the email marked failed",
    )
    job = Job.objects.get(pk=email.job_id)
    assert job.state == JobState.DEAD
    assert job.attempts == 0, "it died before any run started"
    assert "Rate 'ten a second' is not N/s, N/m or N/h." in job.last_error
    assert "Rate 'ten a second'" in email.last_error
    assert "reason=error outside the task body" in own_worker.log()
    assert smtp.received == []
