"""OpenTelemetry (jobs.tracing): one trace covers the web request that enqueued a job,
the enqueue, each publish (the first, the relay's for a retry) and each attempt in a
real worker, carried in the message's headers; the trace id is on the job's row, page
and API. The web process traces into an in-memory exporter; the worker and the relay
export over OTLP/HTTP to a receiver in the test, as a deployment would to a collector."""

import json
import os
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import SpanKind

import jobs
from jobs import tracing
from jobs.broker.message import build_message
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import finished
from jobs.testing.otlp import OTLPReceiver
from jobs.testing.processes import RelayProcess
from jobs.tests import tasks

db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def web_spans():
    """This process traces (requests too, through Django's instrumentation) into an
    in-memory exporter; the process's tracing is put back as it was afterwards."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_trace_globals()
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument()
    try:
        yield exporter
    finally:
        DjangoInstrumentor().uninstrument()
        reset_trace_globals()


@pytest.fixture
def traced(own_worker, no_relay, worker_env, tmp_path):
    """A worker and a relay that export their spans to an OTLP receiver; yields the receiver."""
    receiver = OTLPReceiver().start()
    env = {**worker_env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    own_worker.env = {**own_worker.env, **env, "OTEL_SERVICE_NAME": "jobs-worker"}
    relay = RelayProcess(
        {**env, "OTEL_SERVICE_NAME": "jobs-relay", "JOBS_RESCUE_INTERVAL_SECONDS": "0"},
        tmp_path / "relay.log",
    )
    try:
        own_worker.start()
        relay.start()
        yield receiver
    finally:
        relay.stop()
        receiver.stop()


def _hex(span_id: int) -> str:
    return f"{span_id:016x}"


def _exported(receiver, count: int, name: str):
    return wait_for(
        lambda: len(found := [s for s in receiver.received() if s.name == name]) >= count and found,
        timeout=20,
        message=f"{count} span(s) {name!r} exported",
    )


@db
def test_one_trace_covers_the_request_enqueue_publishes_and_every_attempt(
    web_spans, traced, client, tmp_path
):
    client.force_login(User.objects.create_superuser("tracer", password="pw"))
    path = str(tmp_path / "flaky")
    launched = client.post(
        reverse("admin:jobs_job_launch"),
        {"task": "tests.flaky", "priority": "normal", "token": str(uuid.uuid4()),
         "param_path": path, "param_failures": "1"},
    )  # fmt: skip
    assert launched.status_code == 302, launched.content.decode()[:2000]

    job = finished(Job.objects.get().id)
    assert job.state == JobState.SUCCEEDED and job.attempts == 2, job.last_error
    assert tasks.lines(path) == ["fail", "ok"]
    assert len(job.trace_id) == 32 and job.trace_id != "0" * 32

    # The web process: the request, the enqueue under it, the first publish under that.
    web = web_spans.get_finished_spans()
    (request,) = [s for s in web if s.kind == SpanKind.SERVER]
    (enqueue,) = [s for s in web if s.name == "enqueue tests.flaky"]
    (first_publish,) = [s for s in web if s.name == "publish tests.flaky"]
    assert {f"{s.context.trace_id:032x}" for s in (request, enqueue, first_publish)} == {job.trace_id}
    assert enqueue.parent.span_id == request.context.span_id
    assert first_publish.parent.span_id == enqueue.context.span_id
    assert enqueue.attributes["jobs.job.id"] == str(job.id)
    assert (
        job.traceparent
        == f"00-{job.trace_id}-{_hex(enqueue.context.span_id)}-{enqueue.context.trace_flags:02x}"
    )

    # The worker: one span per attempt; the relay: the retry's publish, under the enqueue.
    runs = sorted(_exported(traced, 2, "run tests.flaky"), key=lambda s: s.attributes["jobs.attempt"])
    (retry_publish,) = _exported(traced, 1, "publish tests.flaky")
    assert {s.trace_id for s in [*runs, retry_publish]} == {job.trace_id}
    assert retry_publish.service == "jobs-relay" and retry_publish.parent_id == _hex(enqueue.context.span_id)
    assert [s.service for s in runs] == ["jobs-worker", "jobs-worker"]
    assert [s.attributes["jobs.attempt"] for s in runs] == [1, 2]
    assert runs[0].parent_id == _hex(first_publish.context.span_id)
    assert runs[1].parent_id == retry_publish.span_id
    assert [s.attributes["jobs.outcome"] for s in runs] == ["retrying", "succeeded"]
    assert [s.status for s in runs] == ["STATUS_CODE_ERROR", "STATUS_CODE_UNSET"]
    assert {s.attributes["jobs.job.id"] for s in runs} == {str(job.id)}

    # Where an operator finds it: the job's page and the job API.
    page = client.get(reverse("admin:jobs_job_change", args=[job.pk])).content.decode()
    assert job.trace_id in page
    api = json.loads(client.get(f"/api/jobs/{job.id}").content)
    assert api["trace_id"] == job.trace_id


@db
@pytest.mark.parametrize("throughput", [False, True], ids=["one at a time", "in batches"])
def test_enqueue_many_is_one_trace_with_a_publish_span_per_chunk(
    web_spans, own_worker, throughput, request, tmp_path
):
    if throughput:  # the cache queue as a throughput queue: its jobs run in batches (jobs.throughput)
        own_worker.env = {**own_worker.env, "JOBS_THROUGHPUT_QUEUES": "cache=8"}
        own_worker.queues = ["cache"]
    receiver = request.getfixturevalue("traced")
    task = tasks.cache_record if throughput else tasks.record
    paths = [str(tmp_path / f"out{i}") for i in range(5)]
    many = jobs.enqueue_many(task, [(p, "v") for p in paths], publish_batch_size=2)

    ids = {str(job.id) for job in many}
    for job in many:
        assert finished(job.id).state == JobState.SUCCEEDED
    rows = list(Job.objects.filter(pk__in=ids))
    assert len({row.traceparent for row in rows}) == 1  # every row: the one enqueue span
    (enqueue,) = [s for s in web_spans.get_finished_spans() if s.name == f"enqueue {task.name}"]
    assert enqueue.attributes["messaging.batch.message_count"] == 5
    publishes = [s for s in web_spans.get_finished_spans() if s.name == f"publish {task.name}"]
    # Chunks of 2, 2 and 1: a span each, under the enqueue.
    assert sorted(s.attributes.get("messaging.batch.message_count", 1) for s in publishes) == [1, 2, 2]
    assert {s.parent.span_id for s in publishes} == {enqueue.context.span_id}
    runs = _exported(receiver, 5, f"run {task.name}")
    assert {s.attributes["jobs.job.id"] for s in runs} == ids
    assert {s.parent_id for s in runs} <= {_hex(s.context.span_id) for s in publishes}
    assert {s.trace_id for s in runs} == {rows[0].trace_id}
    assert {s.attributes["jobs.outcome"] for s in runs} == {"succeeded"}


@db
def test_an_untraced_process_writes_no_trace_and_sends_no_header(worker, tmp_path):
    assert not tracing.enabled()
    job = jobs.enqueue(tasks.record, str(tmp_path / "out"))
    assert finished(job.id).state == JobState.SUCCEEDED
    row = Job.objects.get(pk=job.id)
    assert row.traceparent == "" and row.trace_id == ""
    assert "traceparent" not in build_message(row).application_headers


@pytest.mark.parametrize(
    ("env", "configured"),
    [({}, False), ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, True),
     ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}, False)],
    ids=["no endpoint", "an endpoint", "SDK disabled"],
)  # fmt: skip
@pytest.mark.unit
def test_a_process_exports_only_when_an_otlp_endpoint_is_set(env, configured):
    """What a process loading the jobs app sets up, by its environment alone."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    script = (
        "import django; django.setup(); from jobs import tracing; from django.conf import settings; "
        "print(tracing.enabled(), any('opentelemetry' in m for m in settings.MIDDLEWARE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**base, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
        cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert out == [str(configured), str(configured)]
