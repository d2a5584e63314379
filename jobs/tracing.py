"""OpenTelemetry: one trace per job, from the request that enqueued it to every run of it.

    web request (Django's instrumentation)
      enqueue <task>          this module, in the caller's process
        publish <task>        every publish of the job: the first, each retry's, a rescue's
          run <task>          each attempt, in the worker's pool process

The trace context of the enqueue span is written on the job's ledger row
(`Job.traceparent`, W3C trace context), because the job may be published long after
the request has ended (by the relay, for a retry or a deferred job). Each publish
starts a span under it and carries its own context in the message's `traceparent`
header; the worker's run span continues from that header. A process that does not
trace passes the row's context through unchanged, so the run still joins the trace.

Nothing is exported unless the process is configured: `configure()` (run when the
`jobs` app loads) sets up the SDK with an OTLP/HTTP exporter only if
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and
leaves alone a tracer provider set up otherwise (`opentelemetry-instrument`, the
project's own code). Without a provider every helper here costs a type check.

Celery's own instrumentation is not used: it hooks `before_task_publish`, which the
platform's publisher never sends (it writes its frames itself, jobs.broker), and
`task_prerun`, which fires also for copies the ledger skips and not for a throughput
batch's jobs, and knows nothing of attempts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_UNSET = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_cached: tuple[object, trace.Tracer] | None = None

# Span attributes: OpenTelemetry's messaging conventions, and the job's own.
JOB_ID, TASK, ATTEMPT, OUTCOME = "jobs.job.id", "jobs.task", "jobs.attempt", "jobs.outcome"


def enabled() -> bool:
    """Whether this process has a tracer provider (configured here or by the project)."""
    return not isinstance(trace.get_tracer_provider(), _UNSET)


def _tracer() -> trace.Tracer:
    global _cached
    provider = trace.get_tracer_provider()
    if _cached is None or _cached[0] is not provider:
        _cached = (provider, provider.get_tracer("jobs"))
    return _cached[1]


def configure() -> bool:
    """Sets up tracing for this process if OTEL_EXPORTER_OTLP_ENDPOINT (or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) says where to send spans and no tracer
    provider is set yet: the SDK's provider, batching spans to an OTLP/HTTP exporter
    (both read the standard OTEL_* variables), and Django's request spans. Returns
    whether it did."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or enabled():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "jobs"}))
    provider = TracerProvider(resource=resource)
    # The batch processor's thread starts again in a forked pool process (the SDK
    # registers that at fork); its queue is flushed when a pool process exits.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if not DjangoInstrumentor().is_instrumented_by_opentelemetry:
        DjangoInstrumentor().instrument()
    _flush_when_pool_processes_exit(provider)
    logger.info("tracing: spans go to the OTLP endpoint in the OTEL_EXPORTER_OTLP_* settings")
    return True


def _flush_when_pool_processes_exit(provider) -> None:
    # A prefork pool process leaves by os._exit: the SDK's atexit flush never runs there.
    from celery.signals import worker_process_shutdown

    def flush(**_):
        provider.force_flush(timeout_millis=5000)

    worker_process_shutdown.connect(flush, weak=False)


def traceparent_of(span: trace.Span) -> str:
    """`span`'s context as a W3C traceparent header value; "" if it has none."""
    context = span.get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _context_of(traceparent: str | None):
    return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None


# What the helpers below return where nothing traces: reusable, and cheap on the hot paths.
_NO_TRACEPARENT, _NOTHING_CARRIED, _NO_SPAN = (
    contextlib.nullcontext(""), contextlib.nullcontext({}), contextlib.nullcontext()
)  # fmt: skip


def enqueuing(task_name: str, queue: str, job_id=None) -> contextlib.AbstractContextManager[str]:
    """The span of an enqueue (of one job, or of one call of enqueue_many: see
    `enqueued`), under the caller's current span; gives the traceparent to write on the
    job rows ("" when this process does not trace)."""
    return _enqueue_span(task_name, queue, job_id) if enabled() else _NO_TRACEPARENT


def enqueued(count: int) -> None:
    """Records on the current enqueue span how many jobs one enqueue_many wrote."""
    span = trace.get_current_span()
    if count != 1 and span.is_recording():
        span.set_attribute("messaging.batch.message_count", count)


@contextlib.contextmanager
def _enqueue_span(task_name: str, queue: str, job_id) -> Iterator[str]:
    attributes = {"messaging.system": "rabbitmq", "messaging.destination.name": queue, TASK: task_name}
    if job_id is not None:
        attributes[JOB_ID] = str(job_id)
    with _tracer().start_as_current_span(
        f"enqueue {task_name}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield traceparent_of(span)


def publishing(jobs: Sequence) -> contextlib.AbstractContextManager[dict[str, str]]:
    """The spans of one chunk's publish: one under each trace the chunk's jobs belong
    to (a lone job's, or an enqueue_many's many). Gives {row's traceparent: the one
    its message carries}; a job absent from it carries its row's (this process does
    not trace)."""
    return _publish_spans(jobs) if enabled() else _NOTHING_CARRIED


@contextlib.contextmanager
def _publish_spans(jobs: Sequence) -> Iterator[dict[str, str]]:
    groups: dict[str, list] = {}
    for job in jobs:
        if job.traceparent:
            groups.setdefault(job.traceparent, []).append(job)
    carried: dict[str, str] = {}
    spans = []
    tracer = _tracer()
    try:
        for parent, members in groups.items():
            first = members[0]
            attributes = {
                "messaging.system": "rabbitmq", "messaging.destination.name": first.queue, TASK: first.task_name,
            }  # fmt: skip
            if len(members) == 1:
                attributes.update({JOB_ID: str(first.id), ATTEMPT: first.attempts + 1})
            else:
                attributes["messaging.batch.message_count"] = len(members)
            span = tracer.start_span(
                f"publish {first.task_name}", context=_context_of(parent), kind=SpanKind.PRODUCER,
                attributes=attributes,
            )  # fmt: skip
            spans.append(span)
            carried[parent] = traceparent_of(span) or parent
        yield carried
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
        raise
    finally:
        for span in spans:
            span.end()


def running(task_name: str, job, traceparent: str | None) -> contextlib.AbstractContextManager[None]:
    """The span of one attempt of `job`, under the publish whose message carried
    `traceparent` (a new trace if none); `ended` says how it ended."""
    return _run_span(task_name, job, traceparent) if enabled() else _NO_SPAN


@contextlib.contextmanager
def _run_span(task_name: str, job, traceparent: str | None) -> Iterator[None]:
    attributes = {
        "messaging.system": "rabbitmq", "messaging.destination.name": job.queue, JOB_ID: str(job.id),
        TASK: task_name, ATTEMPT: job.attempts,
    }  # fmt: skip
    with _tracer().start_as_current_span(
        f"run {task_name}", context=_context_of(traceparent), kind=SpanKind.CONSUMER, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ):  # fmt: skip
        yield


def ended(outcome: str, error: BaseException | None = None) -> None:
    """Records on the current attempt's span how it ended: `outcome` is the state the
    run left the job in; an `error` marks the span failed."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute(OUTCOME, str(outcome))
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
