"""Prometheus metrics of the platform, read from the ledger and RabbitMQ at scrape time.

The endpoint (`/metrics`) answers a request with `Authorization: Bearer $METRICS_TOKEN`
or from a logged-in staff user with the "view job" permission; anyone else gets 401.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from jobs import selectors


class PlatformCollector:
    def collect(self):
        jobs = GaugeMetricFamily(
            "jobs_jobs", "Jobs in the ledger by state and queue.", labels=["queue", "state"]
        )
        for queue, state, count in selectors.jobs_by_state_and_queue():
            jobs.add_metric([queue, state], count)
        yield jobs

        depths = selectors.queue_depths()
        up = GaugeMetricFamily("jobs_broker_up", "1 if RabbitMQ answered this scrape.")
        up.add_metric([], 1 if depths is not None else 0)
        yield up
        depth = GaugeMetricFamily(
            "jobs_queue_depth", "Messages ready in each RabbitMQ queue.", labels=["queue"]
        )
        missing = GaugeMetricFamily(
            "jobs_queue_missing",
            "1 for a queue of the topology that RabbitMQ does not have.",
            labels=["queue"],
        )
        for queue, count in (depths or {}).items():
            if count is None:
                missing.add_metric([queue], 1)
            else:
                depth.add_metric([queue], count)
        yield depth
        yield missing

        rescued = GaugeMetricFamily(
            "jobs_rescued_last_day", "Jobs sent again by the rescue (their messages looked lost) in 24 hours."
        )
        rescued.add_metric([], selectors.rescued_since(24))
        yield rescued

        expired = GaugeMetricFamily(
            "jobs_expired",
            "Jobs in the ledger not started by their deadline (expires), per queue.",
            labels=["queue"],
        )
        for queue, count in selectors.expired_by_queue():
            expired.add_metric([queue], count)
        yield expired

        dead = GaugeMetricFamily("jobs_dead_letters_open", "Dead letters not yet replayed or discarded.")
        dead.add_metric([], selectors.open_dead_letters())
        yield dead

        for name, doc, histograms in (
            ("jobs_enqueue_to_start_seconds", "Seconds from enqueue to start, per task.",
             selectors.enqueue_to_start_histograms()),
            ("jobs_run_seconds", "Seconds from start to finish, per task.", selectors.run_time_histograms()),
        ):  # fmt: skip
            family = HistogramMetricFamily(name, doc, labels=["task"])
            for h in histograms:
                buckets = [
                    (str(bound), count)
                    for bound, count in zip(selectors.LATENCY_BUCKETS, h.buckets, strict=True)
                ]
                buckets.append(("+Inf", h.count))
                family.add_metric([h.task], buckets, sum_value=h.total)
            yield family


def _authorized(request) -> bool:
    token = settings.JOBS_METRICS_TOKEN or getattr(settings, "METRICS_TOKEN", "")
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    user = request.user
    return user.is_authenticated and user.is_staff and user.has_perm("jobs.view_job")


@require_GET
def metrics_view(request):
    if not _authorized(request):
        response = HttpResponse("Authentication required: a Bearer token (METRICS_TOKEN) or a staff login.\n",
                                status=401, content_type="text/plain")  # fmt: skip
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
