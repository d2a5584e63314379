"""Text PostgreSQL cannot store (NUL, lone surrogates) is refused by enqueue with a
clear EnqueueError before anything is written, and the caller's transaction goes on."""

import sys

import pytest
from django.db import transaction

from jobs.models import Job
from jobs.services import EnqueueError, enqueue, enqueue_many
from jobs.tasks import invalidate_cache
from jobs.tests import tasks

# Each test's transaction is rolled back, so no job is published to linger in RabbitMQ.
pytestmark = pytest.mark.django_db

NUL, SURROGATE = "a\x00b", "\ud800"


def _nested(depth: int) -> list:
    value = []
    for _ in range(depth):
        value = [value]
    return value


BAD_CALLS = [
    # (what the call passes, the call, words the error must hold)
    ("NUL in a keyword", lambda: enqueue(invalidate_cache, namespace=NUL), ["namespace", "NUL"]),
    ("surrogate in a keyword", lambda: enqueue(invalidate_cache, namespace=SURROGATE), ["namespace", "surrogate"]),
    ("NUL in a positional", lambda: enqueue(tasks.record, NUL), ["args[0]", "NUL"]),
    ("surrogate in a positional", lambda: enqueue(tasks.record, "/tmp/x", SURROGATE), ["args[1]", "surrogate"]),
    ("NUL in a list item", lambda: enqueue(invalidate_cache, keys=["ok", NUL]), ["keys[1]", "NUL"]),
    (
        "NUL in a deep dict key",
        lambda: enqueue(tasks.subscriber_ok, 1, {"path": "/tmp/x", "deep": [{"k\x00": 1}]}),
        ["dict key 'k\\x00' in argument args[1]['deep'][0]", "NUL"],
    ),
    (
        "surrogate in a dict key",
        lambda: enqueue(tasks.subscriber_ok, 1, {SURROGATE: 1}),
        ["dict key '\\ud800' in argument args[1]", "surrogate"],
    ),
    ("NUL in the idempotency key", lambda: enqueue(tasks.record, "/tmp/x", key=NUL), ["idempotency key", "NUL"]),
    ("surrogate in the idempotency key", lambda: enqueue(tasks.record, "/tmp/x", key=SURROGATE), ["idempotency key", "surrogate"]),
    ("NUL in the unique key", lambda: enqueue(tasks.record, "/tmp/x", unique_key=NUL), ["unique_key", "NUL"]),
    (
        "surrogate in the unique key",
        lambda: enqueue(tasks.record, "/tmp/x", unique_key=SURROGATE),
        ["unique_key", "surrogate"],
    ),
    ("a key longer than its column", lambda: enqueue(tasks.record, "/tmp/x", key="k" * 256), ["the limit is 255"]),
    ("a unique key longer than its column", lambda: enqueue(tasks.record, "/tmp/x", unique_key="k" * 300), ["unique_key", "the limit is 255"]),
    pytest.param(
        "lists nested too deep to encode", lambda: enqueue(tasks.record, _nested(5000)), ["too deep"],
        marks=pytest.mark.skipif(
            sys.version_info >= (3, 12), reason="Python 3.12 and later encode this depth, and the ledger stores it"
        ),
        id="lists nested too deep to encode",
    ),
    (
        "NUL in one call of enqueue_many",
        lambda: enqueue_many(tasks.record, [("/tmp/x",), ("/tmp/x", NUL)]),
        ["Call 1", "args[1]", "NUL"],
    ),
    (
        "surrogate in a keyword call of enqueue_many",
        lambda: enqueue_many(invalidate_cache, [{"namespace": "ok"}, {"namespace": SURROGATE}]),
        ["Call 1", "namespace", "surrogate"],
    ),
]  # fmt: skip


@pytest.mark.django_db(transaction=True)  # the caller's transaction is a real one, not a savepoint
@pytest.mark.parametrize(
    ("case", "call", "words"), BAD_CALLS, ids=[c.id if hasattr(c, "marks") else c[0] for c in BAD_CALLS]
)
def test_unstorable_text_is_refused_and_the_callers_transaction_goes_on(case, call, words):
    with transaction.atomic():
        with pytest.raises(EnqueueError) as raised:
            call()
        # The same transaction is still usable: a write after the refusal succeeds.
        good = enqueue(tasks.record, "/tmp/after-the-refusal")
        assert list(Job.objects.values_list("pk", flat=True)) == [good.pk], "the refused job wrote nothing"
        transaction.set_rollback(True)  # publish nothing
    message = str(raised.value)
    for word in words:
        assert word in message, f"{word!r} missing from {message!r}"


@pytest.mark.parametrize(
    "value",
    [
        "emoji \U0001f600 and accents é",  # a valid pair of surrogates once escaped as JSON
        "a backslash then u0000: \\u0000",  # looks like the escape, is not one
        "\\\\ud800 two backslashes and text",
        {"\U0001f600": ["中文", "\\ud800"]},
    ],
)
def test_text_that_only_looks_unstorable_is_enqueued_as_it_is(value):
    job = enqueue(
        tasks.subscriber_ok, 1, {"path": "/tmp/x", "value": value}, key=f"k-\U0001f600-{value!s:.20}"
    )
    assert Job.objects.get(pk=job.pk).args == [1, {"path": "/tmp/x", "value": value}]


def test_the_refusal_names_the_argument_and_says_what_to_do():
    with pytest.raises(EnqueueError) as raised:
        enqueue(invalidate_cache, namespace=NUL)
    assert str(raised.value) == (
        "Argument namespace of job 'jobs.invalidate_cache' holds a NUL character (\\x00), which the "
        "job ledger (PostgreSQL) cannot store; remove it or pass an id instead."
    )
