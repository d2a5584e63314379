"""A task's retry policy is data: which errors retry, how often, how long each waits."""

import pytest
from django.db import OperationalError

from jobs.errors import PermanentJobError, TransientJobError
from jobs.retry import Dead, Retry, RetryPolicy


class Flaky(Exception):
    pass


class PermanentFlaky(Flaky, PermanentJobError):
    pass


def test_declared_transient_errors_retry_with_growing_waits_until_the_cap():
    policy = RetryPolicy(max_retries=3, backoff=1.0, backoff_max=3.0, jitter=False, transient_errors=(Flaky,))
    assert [policy.verdict(Flaky(), n) for n in range(4)] == [
        Retry(1.0), Retry(2.0), Retry(3.0), Dead("retries exhausted")
    ]  # fmt: skip


def test_anything_undeclared_is_permanent_and_permanent_wins_over_declared():
    policy = RetryPolicy(transient_errors=(Flaky,))
    assert policy.verdict(ValueError("no"), 0) == Dead("permanent error")
    assert policy.verdict(PermanentFlaky(), 0) == Dead("permanent error")


def test_every_task_retries_its_own_transient_error_and_a_lost_database_connection():
    policy = RetryPolicy(max_retries=1, jitter=False)
    assert policy.verdict(TransientJobError(), 0) == Retry(1.0)
    assert policy.verdict(OperationalError("server closed the connection"), 0) == Retry(1.0)
    assert policy.verdict(TransientJobError(), 1) == Dead("retries exhausted")


def test_no_limit_retries_for_ever_and_a_call_may_set_its_own_limit():
    assert RetryPolicy(max_retries=None).may_retry(10_000)
    assert not RetryPolicy(max_retries=10).may_retry(2, limit=2)


@pytest.mark.parametrize(
    "fields", [{"max_retries": -1}, {"backoff": -0.5}, {"backoff_max": -1.0}]
)  # fmt: skip
def test_a_policy_that_cannot_mean_anything_is_refused(fields):
    with pytest.raises(ValueError):
        RetryPolicy(**fields)


def test_a_task_without_a_policy_gets_one_from_celerys_options():
    from project.celery import app

    app.loader.import_default_modules()
    pdf = app.tasks["invoices.generate_pdf"].policy
    assert (pdf.max_retries, pdf.backoff, pdf.backoff_max, pdf.transient_errors) == (
        5,
        2.0,
        120.0,
        (OSError,),
    )
    send = app.tasks["emails.send"].policy
    assert (send.max_retries, send.backoff_max) == (6, 600.0)
