"""Reads of the platform: what the metrics endpoint and the dashboard show."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.db import connection
from django.db.models import Count
from django.utils import timezone

from jobs import topology
from jobs.app import celery_app
from jobs.models import DeadLetter, DeadLetterState, Job, JobState

# Histogram buckets, in seconds, for enqueue-to-start latency and run time.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def jobs_by_state_and_queue() -> list[tuple[str, str, int]]:
    rows = Job.objects.values_list("queue", "state").annotate(n=Count("id")).order_by("queue", "state")
    return [(queue, state, n) for queue, state, n in rows]


def tagged(jobs, tag: str):
    """The jobs of the queryset `jobs` that carry `tag`, found through the tag index (its
    condition, "has a tag", is spelled out so that PostgreSQL's planner may use it)."""
    return jobs.filter(tags__contains=[tag]).exclude(tags=[])


def common_tags(limit: int = 30) -> list[str]:
    """The tags most jobs carry (for the admin's tag filter), most common first; read at
    most once a minute (a scan of every tagged job)."""

    def read() -> list[str]:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT tag FROM (SELECT unnest(tags) AS tag FROM {Job._meta.db_table} WHERE tags <> '{{}}') t "
                "GROUP BY tag ORDER BY count(*) DESC, tag LIMIT %s",
                [limit],
            )
            return [row[0] for row in cursor.fetchall()]

    return _cached(f"jobs:common-tags:{limit}", read)


def error_classes() -> list[str]:
    """The error classes the ledger's jobs ended with (for the admin's filter); read at
    most once a minute."""

    def read() -> list[str]:
        rows = Job.objects.exclude(last_error_class="").values_list("last_error_class", flat=True).distinct()
        return sorted(rows.order_by()[:50])

    return _cached("jobs:error-classes", read)


def _cached(key: str, read, seconds: int = 60):
    from django.core.cache import cache

    try:
        value = cache.get(key)
    except Exception:  # noqa: BLE001 - Redis away: read the ledger instead
        return read()
    if value is None:
        value = read()
        try:
            cache.set(key, value, seconds)
        except Exception:  # noqa: BLE001
            pass
    return value


EXPIRED_ERROR_CLASS = "jobs.errors.JobExpired"


def expired_by_queue() -> list[tuple[str, int]]:
    """Jobs in the ledger that reached their deadline to start (`expires`) unstarted."""
    rows = (
        Job.objects.filter(state=JobState.CANCELLED, last_error_class=EXPIRED_ERROR_CLASS)
        .values_list("queue")
        .annotate(n=Count("id"))
        .order_by("queue")
    )
    return list(rows)


def queue_depths(timeout: float = 2.0) -> dict[str, int | None] | None:
    """Messages ready in each queue of the topology, from RabbitMQ; None if unreachable.

    A queue RabbitMQ does not have (deleted by hand, not yet declared) reads None.
    """
    import amqp

    app = celery_app()
    try:
        with app.connection_for_read(connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            depths = {}
            for name in [*topology.WORKLOAD_QUEUES, topology.DEAD_LETTER_QUEUE]:
                try:
                    depths[name] = channel.queue_declare(name, passive=True).message_count
                except amqp.exceptions.NotFound:
                    depths[name] = None  # py-amqp has reopened the channel the broker closed
            channel.close()
            return depths
    except Exception:  # noqa: BLE001 - metrics report the broker as down instead
        return None


def rescued_since(hours: int = 24) -> int:
    """Jobs the rescue sent again (their messages looked lost) in the last `hours`."""
    return Job.objects.filter(rescued_at__gte=timezone.now() - datetime.timedelta(hours=hours)).count()


def open_dead_letters() -> int:
    return DeadLetter.objects.filter(state=DeadLetterState.OPEN).count()


@dataclass(frozen=True)
class Histogram:
    task: str
    buckets: tuple[int, ...]  # cumulative counts, one per LATENCY_BUCKETS bound
    count: int
    total: float


def _histograms(value_sql: str, where_sql: str) -> list[Histogram]:
    # One pass over the ledger, bucketed in SQL: a scrape stays one query however
    # many jobs there are (retention keeps the table bounded).
    bucket_sql = ", ".join(f"count(*) FILTER (WHERE v <= {bound})" for bound in LATENCY_BUCKETS)
    sql = (
        f"SELECT task_name, {bucket_sql}, count(*), coalesce(sum(v), 0) FROM ("
        f"  SELECT task_name, {value_sql} AS v FROM {Job._meta.db_table} WHERE {where_sql}"
        f") t GROUP BY task_name ORDER BY task_name"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
    n = len(LATENCY_BUCKETS)
    return [Histogram(row[0], tuple(row[1 : n + 1]), row[n + 1], float(row[n + 2])) for row in rows]


def enqueue_to_start_histograms() -> list[Histogram]:
    """Seconds from enqueue (the row's creation) to the latest start, per task."""
    return _histograms(
        "extract(epoch FROM started_at - created_at)",
        "started_at IS NOT NULL AND run_after IS NULL",
    )


def run_time_histograms() -> list[Histogram]:
    """Seconds from start to finish of finished runs, per task."""
    return _histograms(
        "extract(epoch FROM finished_at - started_at)",
        "started_at IS NOT NULL AND finished_at IS NOT NULL AND state IN ('succeeded', 'dead')",
    )


def percentile(histogram: Histogram, q: float) -> float | None:
    """The smallest bucket bound holding the q-quantile (an upper estimate)."""
    if not histogram.count:
        return None
    target = q * histogram.count
    for bound, cumulative in zip(LATENCY_BUCKETS, histogram.buckets, strict=True):
        if cumulative >= target:
            return bound
    return float("inf")


def throughput_last_hour(now: datetime.datetime | None = None) -> list[tuple[datetime.datetime, int, int]]:
    """(minute, succeeded, dead) for each of the last 60 minutes, oldest first."""
    now = now or timezone.now()
    start = (now - datetime.timedelta(minutes=59)).replace(second=0, microsecond=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT date_trunc('minute', finished_at) AS m,"
            " count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'dead')"
            f" FROM {Job._meta.db_table} WHERE finished_at >= %s GROUP BY m",
            [start],
        )
        by_minute = {minute: (ok, dead) for minute, ok, dead in cursor.fetchall()}
    minutes = [start + datetime.timedelta(minutes=i) for i in range(60)]
    return [(m, *by_minute.get(m, (0, 0))) for m in minutes]


def latency_by_task() -> list[dict]:
    """Per task: finished runs, and the p50 and p95 of enqueue-to-start and of run time."""
    starts = {h.task: h for h in enqueue_to_start_histograms()}
    runs = {h.task: h for h in run_time_histograms()}

    def quantile(histograms: dict, task: str, q: float) -> float | None:
        return percentile(histograms[task], q) if task in histograms else None

    return [
        {
            "task": task,
            "count": runs[task].count if task in runs else 0,
            "start_p50": quantile(starts, task, 0.5),
            "start_p95": quantile(starts, task, 0.95),
            "run_p50": quantile(runs, task, 0.5),
            "run_p95": quantile(runs, task, 0.95),
        }
        for task in sorted(set(starts) | set(runs))
    ]


def throughput_bars(throughput: list[tuple[datetime.datetime, int, int]]) -> list[dict]:
    """The last hour's minutes as the dashboard's bars, scaled to the busiest minute."""
    peak = max((ok + dead for _, ok, dead in throughput), default=0) or 1
    return [
        {"x": i * 10, "ok": ok, "dead": dead, "h_ok": 100 * ok / peak, "h_dead": 100 * dead / peak,
         "label": minute.strftime("%H:%M")}
        for i, (minute, ok, dead) in enumerate(throughput)
    ]  # fmt: skip


def dashboard() -> dict:
    """What the admin's jobs dashboard shows."""
    throughput = throughput_last_hour()
    return {
        "by_state": jobs_by_state_and_queue(),
        "depths": queue_depths(),
        "dead_letters": open_dead_letters(),
        "rescued": rescued_since(24),
        "latency": latency_by_task(),
        "bars": throughput_bars(throughput),
        "finished_last_hour": sum(ok + dead for _, ok, dead in throughput),
    }
