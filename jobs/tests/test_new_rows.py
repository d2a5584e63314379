"""The rows enqueue and enqueue_many write without Django's save (INSERT, COPY)."""

import pytest

from jobs import ledger
from jobs.models import Job
from jobs.services import enqueue_many
from jobs.tests import tasks


def test_raw_ledger_inserts_write_every_column_that_cannot_be_null():
    # enqueue and enqueue_many write new rows without Django's save; a NOT NULL
    # column added to Job must be added to what they write, or every enqueue fails.
    from jobs.ledger import rows

    written = set(rows._NEW_ROW_COLUMNS) | set(rows._NEW_ROW_CONSTANTS)
    required = {field.column for field in Job._meta.concrete_fields if not field.null}
    assert required - written == set()
    assert written <= {field.column for field in Job._meta.concrete_fields}


@pytest.mark.django_db
def test_jobs_from_enqueue_many_hold_what_their_rows_hold():

    (job,) = enqueue_many(tasks.record, [("/tmp/x",)])
    row = Job.objects.get(pk=job.id)
    for field in Job._meta.concrete_fields:
        assert getattr(job, field.attname) == getattr(row, field.attname), field.name
    job.save()  # an ordinary Job: saving it again works
    # The builder sets attributes directly: a name that is no field must not pass.
    with pytest.raises(TypeError, match="no field"):
        ledger.job_factory(queue="default")(queu="emails")
    with pytest.raises(TypeError, match="no field"):
        ledger.job_factory(queu="emails")


@pytest.mark.django_db
def test_an_error_while_streaming_the_copy_comes_out_as_itself_and_writes_nothing(monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from jobs.ledger import rows

    real = rows._new_row_values
    seen = []

    def values(job, payload=None):
        seen.append(job)
        if len(seen) == 500:  # well into the COPY, after earlier rows were sent
            raise SoftTimeLimitExceeded()
        return real(job, payload)

    monkeypatch.setattr(rows, "_new_row_values", values)
    with pytest.raises(SoftTimeLimitExceeded):  # not psycopg2's "error in .read() call"
        enqueue_many(tasks.record, [("/tmp/x",)] * 1000)
    assert not Job.objects.exists()
