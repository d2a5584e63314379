"""No message stops a worker: whatever arrives on a queue is run or dead-lettered with a reason.

Each message below is published raw to the `cache` queue of a live worker, as a
careless or hostile producer would, and must end as a recorded dead letter whose
error says what was wrong, with the same worker process still consuming.
"""

import base64
import json
import uuid

import pytest
from kombu import Exchange, Producer

from jobs import enqueue
from jobs.models import DeadLetter, Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "jobs.invalidate_cache"


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# (what is wrong, body bytes, extra headers, a fragment of the recorded error)
SHAPES = [
    ("an integer body", b"123", {}, "not the [args, kwargs, embed] triple"),
    ("a null body", b"null", {}, "not the [args, kwargs, embed] triple"),
    ("a string body", b'"args"', {}, "not the [args, kwargs, embed] triple"),
    ("a pair", b"[[], {}]", {}, "not the [args, kwargs, embed] triple"),
    ("args not a list", b'[{"a": 1}, {}, {}]', {}, "args are dict"),
    ("kwargs not a mapping", b"[[], [], {}]", {}, "kwargs are list"),
    ("embed not a mapping", b'[[], {}, "embed"]', {}, "embed is 'embed', not a mapping"),
    (
        "callbacks not signatures",
        b'[[], {}, {"callbacks": "x"}]',
        {},
        "callbacks is 'x', not a list of signatures",
    ),
    (
        "a protocol-1 body under a task header",
        json.dumps({"task": TASK, "id": "x", "args": [], "kwargs": {}}).encode(),
        {},
        "not the [args, kwargs, embed] triple",
    ),
    ("an infinite number", b"[[1e999], {}, {}]", {}, "not a JSON number"),
    ("a huge integer", b"[[" + b"9" * 5000 + b"], {}, {}]", {}, "could not be decoded as JSON"),
    ("a NUL in the args", b'[["x\\u0000y"], {}, {}]', {}, "NUL character"),
    ("a lone surrogate in the kwargs", b'[[], {"namespace": "\\ud800"}, {}]', {}, "a lone surrogate"),
    ("args nested 200 deep", json.dumps([_nested(200), {}, {}]).encode(), {}, "nested deeper than 64"),
    ("an id that is not text", b"[[], {}, {}]", {"id": 7}, "id header is int 7"),
    ("an id that is not a UUID", b"[[], {}, {}]", {"id": "job-7"}, "is not a UUID"),
    ("a task header that is a list", b"[[], {}, {}]", {"task": ["a"]}, "not a task name"),
    ("retries that are text", b"[[], {}, {}]", {"retries": "many"}, "retries header is 'many'"),
    ("an eta that is no time", b"[[], {}, {}]", {"eta": "tomorrow"}, "eta header is 'tomorrow'"),
    ("a timelimit of the wrong shape", b"[[], {}, {}]", {"timelimit": "x"}, "timelimit header"),
]


def _publish(platform, body: bytes, headers: dict) -> None:
    with platform.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=Exchange("jobs", type="direct"),
            routing_key="cache",
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            delivery_mode=2,
        )


def test_a_message_of_any_wrong_shape_is_dead_lettered_with_the_reason_and_the_worker_goes_on(
    worker, keeper, platform, tmp_path
):
    pid = worker.process.pid
    published = []
    for what, body, extra, expected in SHAPES:
        identity = str(uuid.uuid4())
        headers = {"task": TASK, "id": identity, "lang": "py", **extra}
        if "id" in extra:
            headers["message-tag"] = identity
        _publish(platform, body, headers)
        published.append((what, identity, extra, expected))

    for what, identity, extra, expected in published:
        if "id" in extra:
            letter = wait_for(
                lambda identity=identity: DeadLetter.objects.filter(
                    headers__contains={"message-tag": identity}
                ).first(),
                30,
                message=f"the dead letter of {what}",
            )
        else:
            letter = wait_for(
                lambda identity=identity: DeadLetter.objects.filter(identity=identity).first(),
                30,
                message=f"the dead letter of {what}",
            )
        assert expected in letter.error, f"{what}: {letter.error}"
        assert letter.queue == "cache", what

    assert worker.running and worker.process.pid == pid, "the worker exited:\n" + worker.log()[-3000:]
    assert "Unrecoverable error" not in worker.log()
    healthy = enqueue(tasks.record, str(tmp_path / "healthy"))
    wait_for(
        lambda: Job.objects.filter(pk=healthy.id, state=JobState.SUCCEEDED).exists(),
        message="a valid job after the bad ones",
    )
    assert tasks.lines(str(tmp_path / "healthy")) == ["ran"]


def test_a_known_job_whose_message_arrives_malformed_ends_dead_with_the_reason(worker, keeper, platform):
    job = Job.objects.create(task_name=TASK, queue="cache", priority=5, state=JobState.QUEUED)

    _publish(platform, b"[[], [], {}]", {"task": TASK, "id": str(job.id), "lang": "py"})

    wait_for(
        lambda: Job.objects.filter(pk=job.id, state=JobState.DEAD).exists(), 30, message="the job marked dead"
    )
    job.refresh_from_db()
    assert "kwargs are list" in job.last_error


def test_dead_letters_of_any_bytes_are_recorded_and_say_how_they_were_stored(worker, keeper, platform):
    nul_body, nul_header, not_utf8, huge = (str(uuid.uuid4()) for _ in range(4))
    # 20 MB; RabbitMQ 4 takes no message over 16 MiB by default (max_message_size).
    with platform.connection_for_write() as conn:
        conn.ensure_connection()
        major = int(conn.connection.server_properties["version"].split(".")[0])
    big = b"[" + b"7" * ((20 if major < 4 else 15) * 1024 * 1024) + b" not json"
    _publish(platform, b'{"a": "x\x00y"} not json', {"task": TASK, "id": nul_body, "lang": "py"})
    _publish(
        platform, b"[[], {}, {}]", {"task": "no.such.task", "id": nul_header, "note": "a\x00b", "lang": "py"}
    )
    _publish(platform, b"\xff\xfe not utf-8", {"task": TASK, "id": not_utf8, "lang": "py"})
    _publish(platform, big, {"task": TASK, "id": huge, "lang": "py"})

    def letter(identity):
        return wait_for(
            lambda: DeadLetter.objects.filter(identity=identity).first(),
            60,
            message=f"dead letter {identity}",
        )

    with_nul = letter(nul_body)
    assert with_nul.body_encoding == "base64"
    assert base64.b64decode(with_nul.body) == b'{"a": "x\x00y"} not json'
    assert "body holds NUL bytes and is stored as base64" in with_nul.error

    header = letter(nul_header)
    assert header.headers["note"] == "a\\u0000b"
    assert "header values held NUL or invalid text and are stored JSON-escaped" in header.error
    assert "No job is registered as 'no.such.task'" in header.error

    binary = letter(not_utf8)
    assert binary.body_encoding == "base64" and base64.b64decode(binary.body) == b"\xff\xfe not utf-8"
    assert "could not be decoded as JSON" in binary.error

    large = letter(huge)
    assert large.body_encoding == "utf-8" and len(large.body) == len(big)
    assert worker.running
