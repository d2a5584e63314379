"""`make bench`: bare Celery against the platform, in one run, on the same services.

Uses its own RabbitMQ vhost and PostgreSQL database (both made afresh), the project's
Celery settings (acks late, publisher confirms, prefetch 1, JSON) and a worker of 2
prefork processes. Prints a table, writes bench/results/latest.json and a PNG chart
of figures (a) to (d) to docs/performance.png.

    .venv/bin/python bench/run.py [--jobs 5000] [--skip-ledger]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VHOST = "jobs_bench"
DATABASE = "jobs_bench"
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "0",  # production settings: no query log in the worker
        "DJANGO_SECRET_KEY": "bench-only-secret-key-bench-only-secret-key-bench-only",
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
        "CACHE_KEY_PREFIX": "bench",
        "MEDIA_ROOT": tempfile.mkdtemp(prefix="jobs-bench-media-"),
        "LOG_LEVEL": "WARNING",
    }
)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, check=check, capture_output=True, text=True)


def fresh_services() -> None:
    sh("rabbitmqctl", "-q", "delete_vhost", VHOST, check=False)
    sh("rabbitmqctl", "-q", "add_vhost", VHOST)
    sh("rabbitmqctl", "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", user="postgres", host="127.0.0.1", port=5432)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    conn.close()
    sh(sys.executable, "manage.py", "migrate", "--noinput")
    sh(sys.executable, "manage.py", "jobs_topology")


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Bench:
    def __init__(self, jobs: int, rounds: int):
        import django

        django.setup()
        from jobs.testing.worker import WorkerProcess
        from project.celery import app

        self.app = app
        self.n = jobs
        self.rounds = rounds
        self.rounds_seen: dict[str, list[float]] = {}
        self.log_dir = Path(tempfile.mkdtemp(prefix="jobs-bench-logs-"))
        self.worker = WorkerProcess(
            dict(os.environ), self.log_dir, name="bench", concurrency=2, extra=["-I", "bench.tasks"]
        )
        self.results: dict[str, float] = {}

    # -- helpers ------------------------------------------------------------------
    def depth(self, queue: str = "default") -> int:
        # One connection for the whole run, not a new one every poll: a handshake
        # every 20 ms would take CPU from the worker being measured.
        if getattr(self, "_depth_channel", None) is None:
            self._depth_conn = self.app.connection_for_read(heartbeat=0)
            self._depth_channel = self._depth_conn.channel()
        return self._depth_channel.queue_declare(queue, passive=True).message_count

    def purge(self) -> None:
        with self.app.connection_for_write() as conn:
            channel = conn.channel()
            for queue in ("default", "invoices"):
                channel.queue_purge(queue)
            channel.close()

    def wait(self, predicate, timeout: float = 600.0, interval: float = 0.05) -> float:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark step timed out")
            time.sleep(interval)
        return time.monotonic()

    def ledger_done(self, ids) -> bool:
        from jobs.models import Job, JobState

        return Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == len(ids)

    # -- (a) bare Celery and (b) the same no-op on the platform -----------------------
    def drain(self) -> None:
        """(a) and (b), in alternating rounds: this machine's speed drifts by tens of
        percent over a minute, so each figure is the median of its rounds and the
        ratio is the median of the rounds' own ratios, each bare run next to its
        platform run."""
        rounds = {key: [] for key in ("bare_enqueue", "bare_drain", "platform_enqueue", "platform_drain")}
        for _ in range(self.rounds):
            enqueue, drain = self.bare_round()
            rounds["bare_enqueue"].append(enqueue)
            rounds["bare_drain"].append(drain)
            enqueue, drain = self.platform_round()
            rounds["platform_enqueue"].append(enqueue)
            rounds["platform_drain"].append(drain)
        self.rounds_seen.update(rounds)
        self.results["a_bare_enqueue_per_s"] = median(rounds["bare_enqueue"])
        self.results["a_bare_drain_per_s"] = median(rounds["bare_drain"])
        self.results["b_platform_enqueue_per_s"] = median(rounds["platform_enqueue"])
        self.results["b_platform_drain_per_s"] = median(rounds["platform_drain"])
        self.results["b_drain_ratio"] = median(
            [p / b for p, b in zip(rounds["platform_drain"], rounds["bare_drain"], strict=True)]
        )
        self.results["b_enqueue_ratio"] = median(
            [p / b for p, b in zip(rounds["platform_enqueue"], rounds["bare_enqueue"], strict=True)]
        )

    def bare_round(self) -> tuple[float, float]:
        from bench.tasks import bare_noop

        return self.round(lambda: bare_noop.apply_async(queue="default"))

    def platform_round(self) -> tuple[float, float]:
        import jobs
        from bench.tasks import noop

        # Read the ledger only once the queue is empty: counting thousands of rows
        # every tick would take the cores the worker is being measured on.
        return self.round(
            lambda: jobs.enqueue(noop), finished=lambda batch: self.ledger_done([job.id for job in batch])
        )

    def round(self, enqueue_one, finished=None) -> tuple[float, float]:
        """Enqueue and drain rates of `self.n` jobs sent by `enqueue_one`, the worker
        stopped while they are sent; the drain ends when the queue is empty (a cheap
        passive declare) and, if given, `finished(what enqueue_one returned)`."""
        self.worker.stop()
        self.purge()
        for _ in range(200):  # warm the producer pool and the database connection
            enqueue_one()
        self.purge()
        started = time.monotonic()
        batch = [enqueue_one() for _ in range(self.n)]
        enqueue = self.n / (time.monotonic() - started)
        self.worker.start()
        ready = time.monotonic()
        end = self.wait(lambda: self.depth() == 0, interval=0.02)
        if finished is not None:
            end = self.wait(lambda: finished(batch), interval=0.01)
        return enqueue, self.n / (end - ready)

    # -- (c) enqueue latency inside a transaction ----------------------------------
    def yardstick(self) -> None:
        """This machine's speed at the moment, with none of our code: a fixed
        pure-Python loop in one process (median of 5). This VM's speed changes from
        day to day (docs/performance.md), and every other figure with it."""
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            sum(i * i for i in range(1_000_000))
            timings.append(time.perf_counter() - started)
        self.results["z_yardstick_ms"] = median(timings) * 1000

    def latency(self) -> None:
        self.worker.stop()  # the queue only grows: nothing else competes for the cores
        self.purge()
        self.enqueue_latency()
        self.purge()

    def enqueue_latency(self, samples: int = 2000, prefix: str = "c") -> None:
        from django.db import transaction

        import jobs
        from bench.tasks import noop

        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            with transaction.atomic():
                jobs.enqueue(noop)
            timings.append(time.perf_counter() - started)
        self.results[f"{prefix}_enqueue_p50_ms"] = percentile(timings, 0.50) * 1000
        self.results[f"{prefix}_enqueue_p99_ms"] = percentile(timings, 0.99) * 1000

    # -- (d) idle enqueue-to-start --------------------------------------------------
    def idle_latency(self, samples: int = 300) -> None:
        import jobs
        from bench.tasks import noop
        from jobs.models import Job

        self.worker.start()
        self.wait(lambda: self.depth() == 0)
        latencies = []
        for _ in range(samples):
            job = jobs.enqueue(noop)
            self.wait(lambda j=job: Job.objects.filter(pk=j.id, state="succeeded").exists(), interval=0.002)
            row = Job.objects.get(pk=job.id)
            latencies.append((row.started_at - row.created_at).total_seconds())
            time.sleep(0.01)
        self.results["d_idle_start_p50_ms"] = percentile(latencies, 0.50) * 1000
        self.results["d_idle_start_p99_ms"] = percentile(latencies, 0.99) * 1000

    # -- bulk enqueue ------------------------------------------------------------------
    def bulk(self, count: int = 10_000) -> None:
        """enqueue_many of `count` no-ops, the median of `rounds` runs."""
        from django.db import transaction

        import jobs
        from bench.tasks import noop
        from jobs.models import Job

        self.worker.stop()
        rates = []
        for _ in range(self.rounds):
            self.purge()
            started = time.monotonic()
            with transaction.atomic():
                batch = jobs.enqueue_many(noop, [() for _ in range(count)])
            elapsed = time.monotonic() - started  # commit and every publisher confirm included
            queued = Job.objects.filter(pk__in=[j.id for j in batch], state="queued").count()
            if queued != count:
                raise RuntimeError(f"bulk enqueue: only {queued} of {count} confirmed")
            rates.append(count / elapsed)
        self.rounds_seen["bulk_enqueue_many"] = rates
        self.results["g_bulk_enqueue_per_s"] = median(rates)
        self.purge()

    def relay(self, count: int = 10_000) -> None:
        """The relay clearing a backlog, as a broker outage leaves one: `count`
        pending no-ops, published and marked `queued` by the relay's own loop
        (`relay_until_drained`, as `manage.py relay` runs it), the median of `rounds`."""
        import datetime

        from django.utils import timezone

        import jobs
        from bench.tasks import noop
        from jobs.models import Job
        from jobs.relay import relay_until_drained

        self.worker.stop()
        rates = []
        for _ in range(self.rounds):
            self.purge()
            # Deferred a moment: left pending by enqueue_many, due for the relay after.
            due = timezone.now() + datetime.timedelta(seconds=2)
            batch = jobs.enqueue_many(noop, [() for _ in range(count)], run_after=due)
            time.sleep(max(0.0, (due - timezone.now()).total_seconds()) + 0.05)
            started = time.monotonic()
            sent = relay_until_drained(grace_seconds=0)
            elapsed = time.monotonic() - started
            queued = Job.objects.filter(pk__in=[j.id for j in batch], state="queued").count()
            if sent != count or queued != count:
                raise RuntimeError(f"relay: {sent} published and {queued} queued of {count}")
            rates.append(count / elapsed)
        self.rounds_seen["relay"] = rates
        self.results["g_relay_backlog_per_s"] = median(rates)
        self.purge()

    # -- RabbitMQ alone: confirm latency by classic queue version -----------------------
    def confirms(self, samples: int = 2000) -> None:
        """One persistent message at a time into a priority queue, waiting for each
        confirm: the part of every enqueue that RabbitMQ's storage decides."""
        from amqp import Message

        body = b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
        message = Message(body, delivery_mode=2, priority=5, application_headers={"task": "bench.noop"})
        with self.app.connection_for_write() as conn:
            channel = conn.channel()
            channel.confirm_select()
            for version in (1, 2):
                name = f"bench.confirms.v{version}"
                channel.queue_declare(
                    name, durable=True, auto_delete=False,
                    arguments={"x-max-priority": 10, "x-queue-version": version},
                )  # fmt: skip
                timings = []
                for _ in range(samples):
                    started = time.perf_counter()
                    channel.basic_publish_confirm(
                        Message(
                            body, delivery_mode=2, priority=5, application_headers={"task": "bench.noop"}
                        ),
                        exchange="",
                        routing_key=name,
                    )
                    timings.append(time.perf_counter() - started)
                # 10,000 such messages into this queue with every confirm outstanding
                # and one wait at the end: RabbitMQ's ceiling for small messages.
                channel.queue_purge(name)
                self.results[f"h_pipelined_v{version}_per_s"] = self.pipelined(
                    conn, lambda frames, queue=name: [frames.publish(message, "", queue, False)] * 10_000
                )
                channel.queue_delete(name)
                self.results[f"h_confirm_v{version}_p50_ms"] = percentile(timings, 0.50) * 1000
                self.results[f"h_confirm_v{version}_p99_ms"] = percentile(timings, 0.99) * 1000
            channel.close()
        self.platform_messages_alone()

    def platform_messages_alone(self, count: int = 10_000) -> None:
        """RabbitMQ alone, fed the platform's own messages (a no-op job's: Celery's
        headers, through the jobs exchange, mandatory, into the `default` queue),
        built before the clock starts: the ceiling of a bulk enqueue of such jobs,
        which the small message above is not (headers cost RabbitMQ per message)."""
        import uuid

        from bench.tasks import noop
        from jobs import ledger, topology
        from jobs.broker.message import build_message

        new_job = ledger.job_factory(task_name=noop.name, queue="default", priority=5, args=[], kwargs={})
        jobs = [new_job(id=uuid.uuid4()) for _ in range(count)]
        self.worker.stop()  # nothing consumes while RabbitMQ alone is measured
        self.purge()

        def messages_of(frames):
            return [
                frames.publish(build_message(job), topology.JOBS_EXCHANGE, job.queue, True) for job in jobs
            ]

        with self.app.connection_for_write() as conn:
            self.results["h_pipelined_jobs_per_s"] = self.pipelined(conn, messages_of)
        self.purge()

    @staticmethod
    def pipelined(conn, messages_of) -> float:
        """Messages per second for persistent publishes with every confirm outstanding
        and one wait at the end, on a channel of its own. `messages_of(frames)` gives
        each message's frames (`frames.publish(message, exchange, routing_key,
        mandatory)`: the bytes py-amqp's own frame writer makes), built before the
        clock starts; they go out a thousand at a time: the figure is RabbitMQ's, not
        a serializer's."""
        from amqp import spec
        from amqp.method_framing import frame_writer
        from amqp.serialization import dumps

        channel = conn.channel()
        channel.confirm_select()
        acked = [0]
        channel.events["basic_ack"].add(lambda tag, multiple: acked.__setitem__(0, max(acked[0], tag)))

        class Frames:
            """py-amqp's frames of a Basic.Publish on this channel, kept instead of sent."""

            def __init__(self):
                self.written: list[bytes] = []
                self.write_frame = frame_writer(channel.connection, self)

            def write(self, data) -> None:
                self.written.append(bytes(data))

            def publish(self, message, exchange: str, routing_key: str, mandatory: bool) -> bytes:
                self.written.clear()
                arguments = dumps("Bssbb", (0, exchange, routing_key, mandatory, False))
                self.write_frame(1, channel.channel_id, spec.Basic.Publish, arguments, message)
                return b"".join(self.written)

        messages = messages_of(Frames())
        count = len(messages)
        chunks = [b"".join(messages[start : start + 1000]) for start in range(0, count, 1000)]
        started = time.perf_counter()
        for data in chunks:
            channel.connection.transport.write(data)
        while acked[0] < count:
            conn.drain_events(timeout=10)
        rate = count / (time.perf_counter() - started)
        channel.close()
        return rate

    # -- (e) PDF jobs -------------------------------------------------------------------
    def pdfs(self, count: int = 300) -> None:
        from decimal import Decimal

        import jobs
        from invoices import services
        from invoices.models import Customer, InvoiceStatus
        from invoices.tasks import generate_pdf

        self.worker.stop()
        customer = Customer.objects.create(name="Bench Łódź GmbH", email="bench@example.com")
        lines = [
            {"description": f"Item {n}", "quantity": Decimal(2), "unit_price": Decimal("9.99")}
            for n in range(10)
        ]
        invoices = [
            services.create_invoice(customer, lines, status=InvoiceStatus.DRAFT) for _ in range(count)
        ]
        batch = jobs.enqueue_many(generate_pdf, [(invoice.id,) for invoice in invoices])
        ids = [j.id for j in batch]
        self.worker.start()
        ready = time.monotonic()
        end = self.wait(lambda: self.ledger_done(ids), interval=0.1)
        self.results["e_pdf_jobs_per_s"] = count / (end - ready)

    # -- (f) ledger growth, retention, latency at 1M rows -----------------------------------
    def ledger(self) -> None:
        from django.core.management import call_command
        from django.db import connection

        from jobs.models import Job

        self.worker.stop()
        self.purge()

        def size() -> int:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_total_relation_size('jobs_job')")
                return cursor.fetchone()[0]

        def fill(rows: int, days_ago: int) -> None:
            # Rows as the platform leaves them: succeeded, with timings and a small payload.
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO jobs_job (id, task_name, args, kwargs, queue, priority, state, attempts, lost_runs,"
                    " last_error, last_traceback, worker, unique_key, last_error_class, retries, created_at, queued_at,"
                    " started_at, finished_at)"
                    " SELECT gen_random_uuid(), 'invoices.generate_pdf', jsonb_build_array(g), '{}'::jsonb,"
                    " 'invoices', 5, 'succeeded', 1, 0, '', '', 'celery@bench', '', '', 0, t, t, t, t + interval '40 ms'"
                    " FROM generate_series(1, %s) g, LATERAL (SELECT now() - make_interval(days => %s)"
                    " - g * interval '1 second' AS t) ts",
                    [rows, days_ago],
                )
            # A ledger in its steady state, not one that was bulk-loaded a moment
            # ago: vacuumed and analyzed (as autovacuum keeps it), and the load's
            # dirty pages and WAL checkpointed, not flushed under the measurement.
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE jobs_job")
                cursor.execute("CHECKPOINT")

        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE jobs_job CASCADE")
        before = size()
        fill(100_000, 40)
        self.results["f_rows_per_100k_jobs"] = 100_000
        self.results["f_mb_per_100k_jobs"] = (size() - before) / 1e6
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE jobs_job CASCADE")
        fill(10_000, 1)
        self.enqueue_latency(samples=2000, prefix="f_10k")
        fill(990_000, 40)
        self.results["f_ledger_rows_at_1m"] = Job.objects.count()
        self.enqueue_latency(samples=2000, prefix="f_1m")
        self.results["f_p99_ratio_1m_vs_10k"] = (
            self.results["f_1m_enqueue_p99_ms"] / self.results["f_10k_enqueue_p99_ms"]
        )
        self.results["f_p50_ratio_1m_vs_10k"] = (
            self.results["f_1m_enqueue_p50_ms"] / self.results["f_10k_enqueue_p50_ms"]
        )
        started = time.monotonic()
        call_command("prune_jobs", "--older-than", "30d", stdout=open(os.devnull, "w"))
        self.results["f_prune_seconds"] = time.monotonic() - started
        self.results["f_rows_after_prune_30d"] = Job.objects.count()
        self.purge()

    def close(self) -> None:
        self.worker.kill()


# Step name -> Bench method, in the order a full run takes them. Latency and bulk
# enqueue come first, on a quiet machine: the minute of both cores busy that the
# drain takes leaves this VM's cores slower for a while afterwards (docs/performance.md,
# the method).
STEPS = {
    "yardstick": "yardstick",
    "latency": "latency",
    "idle": "idle_latency",
    "confirms": "confirms",
    "bulk": "bulk",
    "relay": "relay",
    "drain": "drain",
    "pdf": "pdfs",
    "ledger": "ledger",
}

GOALS = [
    ("b_drain_ratio", ">=", 0.85, "platform drain / bare drain"),
    ("c_enqueue_p99_ms", "<=", 5.0, "enqueue p99, single job, in a transaction (ms)"),
    ("d_idle_start_p99_ms", "<=", 10.0, "idle enqueue-to-start p99 (ms)"),
    ("g_bulk_enqueue_per_s", ">=", 10_000, "bulk enqueue, 10,000 in one call (jobs/s)"),
    # The median: how the ledger's size changes an enqueue. The p99 of 2,000 is the
    # 20th slowest, and on this VM which of them a neighbour slows down decides it
    # (how far apart runs of the same code are: docs/performance.md).
    ("f_p50_ratio_1m_vs_10k", "<=", 1.2, "enqueue p50 at 1M rows / at 10k rows"),
]

LABELS = [
    ("a_bare_enqueue_per_s", "(a) bare Celery enqueue, jobs/s"),
    ("a_bare_drain_per_s", "(a) bare Celery drain, 2 processes, jobs/s"),
    ("b_platform_enqueue_per_s", "(b) platform enqueue (ledger + outbox), jobs/s"),
    ("b_platform_drain_per_s", "(b) platform drain, 2 processes, jobs/s"),
    ("b_enqueue_ratio", "(b) platform / bare, enqueue"),
    ("b_drain_ratio", "(b) platform / bare, drain"),
    ("c_enqueue_p50_ms", "(c) enqueue in a transaction, p50 ms"),
    ("c_enqueue_p99_ms", "(c) enqueue in a transaction, p99 ms"),
    ("d_idle_start_p50_ms", "(d) idle enqueue-to-start, p50 ms"),
    ("d_idle_start_p99_ms", "(d) idle enqueue-to-start, p99 ms"),
    ("e_pdf_jobs_per_s", "(e) PDF jobs (10 lines), 2 processes, jobs/s"),
    ("g_bulk_enqueue_per_s", "bulk enqueue_many of 10,000, committed + confirmed, jobs/s"),
    ("g_relay_backlog_per_s", "relay clearing a backlog of 10,000 pending jobs, jobs/s"),
    ("h_confirm_v1_p50_ms", "RabbitMQ confirm, classic queue v1, p50 ms"),
    ("h_confirm_v1_p99_ms", "RabbitMQ confirm, classic queue v1, p99 ms"),
    ("h_confirm_v2_p50_ms", "RabbitMQ confirm, classic queue v2 (ours), p50 ms"),
    ("h_confirm_v2_p99_ms", "RabbitMQ confirm, classic queue v2 (ours), p99 ms"),
    ("h_pipelined_v1_per_s", "RabbitMQ alone, 10,000 pipelined confirms, v1, msg/s"),
    ("h_pipelined_v2_per_s", "RabbitMQ alone, 10,000 pipelined confirms, v2 (ours), msg/s"),
    ("h_pipelined_jobs_per_s", "RabbitMQ alone, the same with no-op jobs' own messages, msg/s"),
    ("f_mb_per_100k_jobs", "(f) ledger size per 100k jobs, MB (table + indexes)"),
    ("f_10k_enqueue_p50_ms", "(f) enqueue p50 at 10k ledger rows, ms"),
    ("f_10k_enqueue_p99_ms", "(f) enqueue p99 at 10k ledger rows, ms"),
    ("f_1m_enqueue_p50_ms", "(f) enqueue p50 at 1M ledger rows, ms"),
    ("f_1m_enqueue_p99_ms", "(f) enqueue p99 at 1M ledger rows, ms"),
    ("f_p50_ratio_1m_vs_10k", "(f) p50 at 1M / at 10k"),
    ("f_p99_ratio_1m_vs_10k", "(f) p99 at 1M / at 10k"),
    ("f_prune_seconds", "(f) prune_jobs --older-than 30d, seconds"),
    ("f_rows_after_prune_30d", "(f) ledger rows left after pruning"),
    ("z_yardstick_ms", "machine yardstick: a fixed Python loop, ms (lower: faster)"),
]


def report(results: dict, machine: str) -> str:
    lines = [f"machine: {machine}", "", f"{'figure':58} {'value':>12}"]
    for key, label in LABELS:
        if key in results:
            value = results[key]
            text = f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
            lines.append(f"{label:58} {text:>12}")
    lines += ["", "goals:"]
    for key, op, goal, label in GOALS:
        if key in results:
            met = results[key] >= goal if op == ">=" else results[key] <= goal
            lines.append(f"  {'met ' if met else 'MISS'}  {label}: {results[key]:,.2f} (goal {op} {goal:,})")
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    rates = [
        ("enqueue", "a_bare_enqueue_per_s", "b_platform_enqueue_per_s"),
        ("drain", "a_bare_drain_per_s", "b_platform_drain_per_s"),
    ]
    x = range(len(rates))
    axes[0].bar([i - 0.2 for i in x], [results[b] for _, b, _ in rates], width=0.4, label="bare Celery")
    axes[0].bar([i + 0.2 for i in x], [results[p] for _, _, p in rates], width=0.4, label="platform")
    axes[0].set_xticks(list(x), [name for name, _, _ in rates])
    axes[0].set_title("(a)/(b) jobs per second")
    axes[0].legend()
    axes[1].bar(["p50", "p99"], [results["c_enqueue_p50_ms"], results["c_enqueue_p99_ms"]], color="#417690")
    axes[1].axhline(5, color="#ba2121", linestyle="--", label="goal p99 5 ms")
    axes[1].set_title("(c) enqueue in a transaction, ms")
    axes[1].legend()
    axes[2].bar(
        ["p50", "p99"], [results["d_idle_start_p50_ms"], results["d_idle_start_p99_ms"]], color="#417690"
    )
    axes[2].axhline(10, color="#ba2121", linestyle="--", label="goal p99 10 ms")
    axes[2].set_title("(d) idle enqueue-to-start, ms")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per round of (a) and (b)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (b)")
    parser.add_argument(
        "--skip-ledger", action="store_true", help="skip (f), the 1M-row step (about a minute)"
    )
    parser.add_argument(
        "--only",
        default=",".join(STEPS),
        help=f"comma-separated steps to run, of {','.join(STEPS)} (default: all); "
        "a partial run prints its table but writes no results or chart",
    )
    args = parser.parse_args()
    steps = [step.strip() for step in args.only.split(",") if step.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    if args.skip_ledger and "ledger" in steps:
        steps.remove("ledger")
    fresh_services()
    bench = Bench(args.jobs, args.rounds)
    try:
        for step in STEPS:
            if step in steps:
                getattr(bench, STEPS[step])()
    finally:
        bench.close()
    complete = set(steps) == set(STEPS) - ({"ledger"} if args.skip_ledger else set())
    machine = f"{platform.node()}, {os.cpu_count()} cpu, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    results = dict(sorted(bench.results.items()))
    print(report(results, machine))
    for name, values in bench.rounds_seen.items():
        print(f"  rounds, {name.replace('_', ' ')} jobs/s: {', '.join(f'{v:,.0f}' for v in values)}")
    if not complete:
        print("\npartial run: nothing written")
        return
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    (out / "latest.json").write_text(
        json.dumps(
            {"when": stamp, "machine": machine, "jobs": args.jobs, "rounds": bench.rounds_seen, **results},
            indent=2,
        )
    )
    chart(results, ROOT / "docs" / "performance.png")
    print("\nwrote bench/results/latest.json and docs/performance.png")


if __name__ == "__main__":
    main()
