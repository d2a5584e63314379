"""Narrow unit tests: pure functions and validation that needs no worker."""

import pytest

from jobs import ledger
from jobs.base import backoff_seconds
from jobs.models import ALLOWED_TRANSITIONS, JobState
from jobs.services import EnqueueError, enqueue
from jobs.tests import tasks
from jobs.topology import PriorityClass


def test_backoff_grows_exponentially_with_jitter_and_a_maximum():
    for retry in range(8):
        delay = min(60.0, 1.0 * 2**retry)
        samples = [backoff_seconds(retry, 1.0, 60.0) for _ in range(200)]
        assert all(delay / 2 <= s <= delay for s in samples)
        assert len(set(samples)) > 1, "jitter must spread retries"
    assert backoff_seconds(20, 1.0, 60.0, jitter=False) == 60.0


def test_priority_classes_parse_names_and_refuse_anything_else():
    assert PriorityClass.parse("urgent") is PriorityClass.URGENT
    assert PriorityClass.parse("BULK") is PriorityClass.BULK
    assert PriorityClass.URGENT > PriorityClass.NORMAL > PriorityClass.BULK
    with pytest.raises(ValueError, match="use one of"):
        PriorityClass.parse("asap")


def test_every_state_is_in_the_transition_table_and_finished_states_are_final():
    assert set(ALLOWED_TRANSITIONS) == set(JobState.values)
    assert ALLOWED_TRANSITIONS[JobState.SUCCEEDED] == frozenset()
    assert ALLOWED_TRANSITIONS[JobState.CANCELLED] == frozenset()
    with pytest.raises(ledger.IllegalTransition):
        ledger.transition(
            "00000000-0000-0000-0000-000000000000", JobState.QUEUED, only_from=[JobState.SUCCEEDED]
        )


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
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_writes_nothing(call, message):
    from jobs.models import Job

    with pytest.raises(EnqueueError, match=message):
        call()
    assert Job.objects.count() == 0
