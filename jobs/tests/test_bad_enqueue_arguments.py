"""Arguments enqueue cannot accept are refused with a clear error, before anything is written."""

import pytest

from jobs.models import Job
from jobs.services import EnqueueError, enqueue, enqueue_many
from jobs.tests import tasks


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: enqueue("no.such.task"), "No job is registered"),
        (lambda: enqueue(tasks.record), "do not fit"),
        (lambda: enqueue(tasks.record, "/tmp/x", unknown=1), "do not fit"),
        (lambda: enqueue(tasks.record, object()), "must be JSON"),
        (lambda: enqueue(tasks.record, "x" * 300_000), "the limit is"),
        (lambda: enqueue(tasks.record, "/tmp/x", priority="asap"), "Unknown priority"),
        (lambda: enqueue_many(tasks.record, [("/tmp/x",), ()]), "Call 1: Arguments do not fit"),
        (lambda: enqueue_many(tasks.record, [("/tmp/x",)], publish_batch_size=0), "publish_batch_size"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_writes_nothing(call, message):

    with pytest.raises(EnqueueError, match=message):
        call()
    assert Job.objects.count() == 0
