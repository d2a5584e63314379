"""The drain, made fair: the same no-op jobs drained by bare Celery (at the project's
settings and at Celery's reliable ones), by Dramatiq and by the platform, in one run.

    .venv/bin/python bench/drain.py [--jobs 4000] [--rounds 7] [--concurrency 2,4]

Systems (`--systems`, in this order in even rounds, reversed in odd ones):

- `celery-tuned`: bare Celery on its own app without Django (bench/drain_celery.py):
  acks late, publisher confirms, prefetch 1, JSON, persistent, no task events,
  `-l WARNING`, a plain durable queue.
- `celery-project`: bare Celery (a plain `celery.Task`) on the project's app and
  settings, in the project's worker (`-l INFO -Q default,cache`, task events on,
  the dead-lettering consumer), into the project's `default` queue with the
  platform's priority.
- `platform`: the platform's no-op (`jobs.base.JobTask`) in that same worker.
- `dramatiq`: Dramatiq with its RabbitMQ broker, `--processes C --threads 1`,
  publisher confirms, prefetch 1 (bench/drain_dramatiq.py).
- `platform-throughput`: the platform's no-op on a throughput queue (`cache`, batches
  of 16: jobs.throughput), in a worker of that queue alone (`-Q cache`).
- `platform-events-confirmed` (not run unless asked): the platform with
  JOBS_CONFIRM_TASK_EVENTS=1, each task event published with a confirm.
- `platform-start-only` (not run unless asked): the platform without its success
  write, a bound (bench.tasks._StartOnly); its jobs stay `started`.

Each drain: the system's workers are stopped; `--jobs` no-ops are enqueued and the
queue's depth checked; the workers start. The clock runs from the moment every worker
process has said it is ready (Celery's `worker_ready`, once its pool is up and its
consumer started; Dramatiq's `after_worker_boot`, the latest of its processes, which
wait for each other before their consumers start) until the queue is empty and every
job's completion is recorded: the ledger says `succeeded` for all (the platform), or
the counter every counted no-op increments has reached `--jobs` (bare Celery,
Dramatiq; bench/counter.py, shared memory: no system call, no round trip). The queue's depth is read on one AMQP
connection every 20 ms, then the completion every 2 ms. CPU per job is read from /proc
around the clock, by kind of process.

One warm-up round (a quarter of `--jobs` each, not counted) comes first. Figures are
medians over the rounds with their range; the ratio is the median of each round's own
ratio to `celery-project` of the same round.

Uses its own RabbitMQ vhost and PostgreSQL database (`jobs_bench_drain`, made afresh
and deleted at the end); every queue of the vhost is on classic storage version 2 (the
platform's queues declare it; a policy gives it to the others). Installs
`dramatiq[rabbitmq]` into the venv if it is missing (for the benchmark only). It counts
every RabbitMQ and PostgreSQL process of the machine, which should be quiet.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VHOST = "jobs_bench_drain"
DATABASE = "jobs_bench_drain"
BROKER_URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
WORK_DIR = tempfile.mkdtemp(prefix="jobs-bench-drain-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
LOG_DIR = Path(tempfile.mkdtemp(prefix="jobs-bench-drain-logs-"))

# The project's settings, as a deployment sets them (LOG_LEVEL left at its default).
PROJECT_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings",
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "bench-only-secret-key-bench-only-secret-key-bench-only",
    "CELERY_BROKER_URL": BROKER_URL,
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
    "CACHE_KEY_PREFIX": "bench-drain",
    "MEDIA_ROOT": tempfile.mkdtemp(prefix="jobs-bench-drain-media-"),
}
COMMON_ENV = {
    "BENCH_DRAIN_DIR": WORK_DIR,
    "BENCH_DRAIN_BROKER_URL": BROKER_URL,
    "BENCH_DRAIN_DRAMATIQ_URL": BROKER_URL,
    "PYTHONPATH": str(ROOT),
}
os.environ.update(PROJECT_ENV)
os.environ.update(COMMON_ENV)
# This process only fills queues and then sits idle for a minute: no heartbeats, or
# RabbitMQ closes its idle connections (the workers keep their own settings).
os.environ["BENCH_DRAIN_DRAMATIQ_URL"] = f"{BROKER_URL}?heartbeat=0"

_TICKS = os.sysconf("SC_CLK_TCK")
KINDS = ["main", "pool", "PostgreSQL", "RabbitMQ", "script", "other"]
KIND_NOTES = {
    "main": "the worker's main process (Celery: consumer; Dramatiq: the supervisor)",
    "pool": "its pool processes (Celery prefork children; Dramatiq's worker processes)",
    "PostgreSQL": "every postgres process",
    "RabbitMQ": "the node on port 5672 and its helpers",
    "script": "this script (fill excluded: it polls depth and completion)",
    "other": "everything else on the machine",
}


def sh(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, check=check, capture_output=True, text=True, env=env)


def ensure_dramatiq() -> None:
    try:
        import dramatiq  # noqa: F401
        import pika  # noqa: F401
    except ImportError:
        print("installing dramatiq[rabbitmq] into the venv (for the benchmark only)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "dramatiq[rabbitmq]"], check=True)


# -- services -------------------------------------------------------------------------


def make_services() -> None:
    sh("rabbitmqctl", "-q", "delete_vhost", VHOST, check=False)
    sh("rabbitmqctl", "-q", "add_vhost", VHOST)
    sh("rabbitmqctl", "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    sh(
        "rabbitmqctl", "-q", "set_policy", "-p", VHOST, "--apply-to", "queues",
        "bench-queue-version", ".*", '{"queue-version": 2}',
    )  # fmt: skip
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", user="postgres", host="127.0.0.1", port=5432)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    conn.close()
    sh(sys.executable, "manage.py", "migrate", "--noinput")
    sh(sys.executable, "manage.py", "jobs_topology")


def remove_services() -> None:
    sh("rabbitmqctl", "-q", "delete_vhost", VHOST, check=False)
    try:
        from django.db import connections

        connections.close_all()
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", user="postgres", host="127.0.0.1", port=5432)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.close()
    except Exception as exc:  # noqa: BLE001 - cleanup reports, never masks the run's own error
        print(f"could not drop database {DATABASE}: {exc}", file=sys.stderr)


class Broker:
    """One AMQP connection for the whole run: queue depths and purges."""

    def __init__(self):
        import amqp

        self.amqp = amqp
        self.conn = amqp.Connection("127.0.0.1:5672", "guest", "guest", virtual_host=VHOST, heartbeat=0)
        self.conn.connect()
        self.channel = self.conn.channel()

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).message_count

    def purge(self, queue: str) -> None:
        channel = self.conn.channel()
        try:
            channel.queue_purge(queue)
            channel.close()
        except self.amqp.exceptions.NotFound:
            pass  # not declared yet; the channel is closed by the broker

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


# -- workers --------------------------------------------------------------------------


class Worker:
    """A system's worker, started and stopped by its process group."""

    def __init__(self, name: str, command: list[str], env: dict, ready_marks: int):
        self.name = name
        self.command = command
        self.env = env
        self.ready_marks = ready_marks
        self.log_path = LOG_DIR / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Starts the worker; returns the monotonic time every process was ready."""
        from bench import counter

        counter.reset(WORK_DIR)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            times = counter.ready_times(WORK_DIR)
            if len(times) >= self.ready_marks:
                return max(times)
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.kill()
                raise RuntimeError(f"worker {self.name} did not start; its log ends:\n{tail}")
            time.sleep(0.002)

    def pids(self) -> tuple[int, set[int]]:
        """The main process and its children (Celery's pool, Dramatiq's workers)."""
        return self.process.pid, children(self.process.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """A warm shutdown: SIGTERM to the main process, which stops its children."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(10)
        self._signal(signal.SIGKILL)  # any child left behind in its group
        self.process = None

    def kill(self) -> None:
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.process = None

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


def project_env() -> dict:
    return {**os.environ, **PROJECT_ENV, **COMMON_ENV}


def plain_env() -> dict:
    """Without Django: Celery's Django fixup would otherwise set it up."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "CELERY_"))}
    return {**env, **COMMON_ENV}


def project_worker(
    concurrency: int, env: dict | None = None, tag: str = "", queues: str = "default,cache"
) -> Worker:
    # The deployment's worker command (docker-compose.yml), without the start-up
    # chatter with other workers (mingle, gossip): both are before the clock or not per job.
    return Worker(
        f"project{tag}-c{concurrency}",
        [
            sys.executable, "-m", "celery", "-A", "project", "worker", "-l", "INFO",
            "-Q", queues, "-c", str(concurrency), "-P", "prefork", "-n", "bench-drain@%h",
            "--without-gossip", "--without-mingle", "-I", "bench.tasks,bench.drain_project",
        ],
        {**project_env(), **(env or {})},
        ready_marks=1,
    )  # fmt: skip


def tuned_worker(concurrency: int) -> Worker:
    return Worker(
        f"celery-tuned-c{concurrency}",
        [
            sys.executable, "-m", "celery", "-A", "bench.drain_celery", "worker", "-l", "WARNING",
            "-c", str(concurrency), "-P", "prefork", "-n", "bench-drain-tuned@%h",
            "--without-gossip", "--without-mingle",
        ],
        plain_env(),
        ready_marks=1,
    )  # fmt: skip


def dramatiq_worker(concurrency: int) -> Worker:
    from bench import drain_dramatiq

    # Prefetch 1 per process, as the Celery workers (Dramatiq's default is 2 per thread).
    env = {**plain_env(), "dramatiq_queue_prefetch": "1", "BENCH_DRAIN_PROCESSES": str(concurrency)}
    return Worker(
        f"dramatiq-c{concurrency}",
        [
            sys.executable, "-m", "dramatiq", "bench.drain_dramatiq", "--processes", str(concurrency),
            "--threads", "1", "--queues", drain_dramatiq.QUEUE,
        ],
        env,
        ready_marks=concurrency,
    )  # fmt: skip


# -- the systems ----------------------------------------------------------------------


@dataclasses.dataclass
class System:
    key: str
    label: str
    queue: str
    worker: Callable[[int], Worker]
    fill: Callable[[int], None]  # enqueues n jobs, workers stopped
    done: Callable[[int], bool]  # every one of n jobs' completion recorded
    reset: Callable[[], None] = lambda: None


def _counted(n: int) -> bool:
    from bench import counter

    return counter.total(WORK_DIR) >= n


def _ledger_count(states: tuple[str, ...]) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM jobs_job WHERE state = ANY(%s)", [list(states)])
        return cursor.fetchone()[0]


def _truncate_ledger() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE jobs_job CASCADE")


def _fill_celery_project(n: int) -> None:
    from bench.drain_project import bare_counted

    for _ in range(n):
        bare_counted.apply_async()


def _fill_celery_tuned(n: int) -> None:
    from bench.drain_celery import noop

    for _ in range(n):
        noop.apply_async()


def _fill_dramatiq(n: int) -> None:
    from bench.drain_dramatiq import noop

    for _ in range(n):
        noop.send()


def _fill_platform(task_name: str) -> Callable[[int], None]:
    def fill(n: int) -> None:
        from django.db import transaction

        import jobs
        from bench import tasks

        with transaction.atomic():
            jobs.enqueue_many(getattr(tasks, task_name), [() for _ in range(n)])

    return fill


def systems() -> dict[str, System]:
    from bench import drain_celery, drain_dramatiq

    return {
        system.key: system
        for system in (
            System(
                "celery-tuned",
                "Celery, reliable settings, no events, WARNING",
                drain_celery.QUEUE,
                tuned_worker,
                _fill_celery_tuned,
                _counted,
            ),
            System(
                "celery-project",
                "Celery, the project's settings",
                "default",
                project_worker,
                _fill_celery_project,
                _counted,
            ),
            System(
                "platform",
                "the platform",
                "default",
                project_worker,
                _fill_platform("noop"),
                lambda n: _ledger_count(("succeeded",)) >= n,
                _truncate_ledger,
            ),
            System(
                "dramatiq",
                "Dramatiq, 1 thread a process",
                drain_dramatiq.QUEUE,
                dramatiq_worker,
                _fill_dramatiq,
                _counted,
            ),
            System(
                "platform-events-confirmed",
                "the platform, task events confirmed",
                "default",
                lambda c: project_worker(c, {"JOBS_CONFIRM_TASK_EVENTS": "1"}, "-confirmed"),
                _fill_platform("noop"),
                lambda n: _ledger_count(("succeeded",)) >= n,
                _truncate_ledger,
            ),
            System(
                "platform-throughput",
                f"the platform, a throughput queue (batches of {THROUGHPUT_BATCH})",
                "cache",
                lambda c: project_worker(
                    c, {"JOBS_THROUGHPUT_QUEUES": f"cache={THROUGHPUT_BATCH}"}, "-throughput", "cache"
                ),
                _fill_platform("noop_cache"),
                lambda n: _ledger_count(("succeeded",)) >= n,
                _truncate_ledger,
            ),
            System(
                "platform-start-only",
                "the platform, start only (a bound)",
                "default",
                project_worker,
                _fill_platform("noop_start_only"),
                lambda n: _ledger_count(("started", "succeeded")) >= n,
                _truncate_ledger,
            ),
        )
    }


DEFAULT_SYSTEMS = ["celery-tuned", "celery-project", "platform", "platform-throughput", "dramatiq"]
THROUGHPUT_BATCH = 16


# -- one drain --------------------------------------------------------------------------


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's (name, user + system CPU seconds so far), its reaped children's
    included: a PostgreSQL backend that exits within the drain (the worker reconnects
    every CELERY_DB_REUSE_MAX jobs) is counted in the postmaster's."""
    seen = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        fields = rest.split()
        seen[int(entry)] = (name, sum(int(field) for field in fields[11:15]) / _TICKS)
    return seen


def children(pid: int) -> set[int]:
    """A process's children, read from /proc (no process started)."""
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found.update(int(child) for child in fh.read().split())
    return found


def rabbitmq_pids() -> set[int]:
    """The RabbitMQ node on port 5672 and its helpers; other nodes on the machine
    (a test suite's, say) count as `other`. Every beam.smp if it cannot be told."""
    out = sh("ss", "-H", "-ltnp", "sport = :5672", check=False).stdout
    for part in out.split("pid=")[1:]:
        pid = int(part.split(",")[0])
        return {pid} | children(pid)
    return set()


def kind_of(pid: int, name: str, main: int, pool: set[int], rabbit: set[int]) -> str:
    if pid == main:
        return "main"
    if pid in pool:
        return "pool"
    if pid == os.getpid():
        return "script"
    if name == "postgres":
        return "PostgreSQL"
    if pid in rabbit or (not rabbit and name in ("beam.smp", "erl_child_setup", "inet_gethost")):
        return "RabbitMQ"
    return "other"


@dataclasses.dataclass
class Drain:
    rate: float
    seconds: float
    cpu_ms: dict[str, float]  # per job, by kind
    cores: float
    ready_spread_ms: float  # between the first and the last process ready (Dramatiq)
    extra: int  # completions counted beyond n (duplicates), 0 if none


def drain(system: System, concurrency: int, n: int, broker: Broker, timeout: float = 900.0) -> Drain:
    from bench import counter

    rabbit = rabbitmq_pids()

    worker = system.worker(concurrency)
    broker.purge(system.queue)
    system.reset()
    counter.reset(WORK_DIR)
    system.fill(n)
    depth = broker.depth(system.queue)
    if depth != n:
        raise RuntimeError(f"{system.key}: {depth} messages in {system.queue} after enqueueing {n}")
    try:
        ready = worker.start()
        main, pool = worker.pids()
        before = cpu_seconds()
        deadline = time.monotonic() + timeout
        while broker.depth(system.queue) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.key}: the queue did not empty")
            time.sleep(0.02)
        while not system.done(n):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.key}: not every completion was recorded")
            time.sleep(0.002)
        end = time.monotonic()
        after = cpu_seconds()
        spread = (lambda t: (max(t) - min(t)) * 1000)(counter.ready_times(WORK_DIR))
    finally:
        worker.stop()
    counted = counter.total(WORK_DIR)
    by_kind = dict.fromkeys(KINDS, 0.0)
    for pid, (name, seconds) in after.items():
        spent = seconds - before.get(pid, (name, 0.0))[1]
        if spent > 0:
            by_kind[kind_of(pid, name, main, pool, rabbit)] += spent
    wall = end - ready
    return Drain(
        rate=n / wall,
        seconds=wall,
        cpu_ms={kind: seconds / n * 1000 for kind, seconds in by_kind.items()},
        cores=sum(by_kind.values()) / wall,
        ready_spread_ms=spread,
        extra=max(0, counted - n) if system.done is _counted else 0,
    )


# -- statistics and the table ------------------------------------------------------------


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def span(values: list[float], fmt: str) -> str:
    return f"{format(median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(
    concurrency: int, n: int, keys: list[str], runs: dict[str, list[Drain]], labels: dict[str, str]
) -> str:
    rounds = len(runs[keys[0]])
    header = (
        f"-c {concurrency}: {n:,} no-op jobs a drain, {rounds} rounds; median (min-max) over the rounds\n"
        f"Celery: {concurrency} prefork processes; Dramatiq: {concurrency} processes of 1 thread\n\n"
        f"{'system':<46}{'jobs/s':>20}{'ratio to project Celery':>26}   CPU ms per job: "
        + "  ".join(f"{k:>10}" for k in [*KINDS, "total"])
        + f"{'cores':>7}"
    )
    lines = [header]
    base = runs.get("celery-project")
    for key in keys:
        drains = runs[key]
        rates = [d.rate for d in drains]
        if base is not None:
            ratios = [d.rate / b.rate for d, b in zip(drains, base, strict=True)]
            ratio = span(ratios, ".2f")
        else:
            ratio = ""
        cpu = [median([d.cpu_ms[k] for d in drains]) for k in KINDS]
        cpu.append(median([sum(d.cpu_ms.values()) for d in drains]))
        cores = median([d.cores for d in drains])
        lines.append(
            f"{labels[key]:<46}{span(rates, ',.0f'):>20}{ratio:>26}   {'':16}"
            + "  ".join(f"{value:>10.2f}" for value in cpu)
            + f"{cores:>7.2f}"
        )
    lines.append("")
    lines.append("rounds, jobs/s (in the order run):")
    for key in keys:
        lines.append(f"  {labels[key]:<46}" + ", ".join(f"{d.rate:,.0f}" for d in runs[key]))
    spreads = [d.ready_spread_ms for key in keys for d in runs[key] if key == "dramatiq"]
    if spreads:
        lines.append(f"  Dramatiq: its processes were ready {span(spreads, '.0f')} ms apart")
    extra = {key: sum(d.extra for d in runs[key]) for key in keys}
    if any(extra.values()):
        lines.append(f"  completions counted more than once: {extra}")
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import version

    names = ["celery", "kombu", "amqp", "dramatiq", "pika", "Django", "psycopg2-binary"]
    return ", ".join(f"{name} {version(name)}" for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000, help="no-op jobs per drain (default 4,000)")
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds per concurrency (default 7)")
    parser.add_argument("--concurrency", default="2,4", help="worker processes, one table each (default 2,4)")
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, in the order of even rounds (default {','.join(DEFAULT_SYSTEMS)}; "
        "also platform-start-only)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up round")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs (path printed)")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    keys = [k.strip() for k in args.systems.split(",") if k.strip()]

    ensure_dramatiq()
    import logging

    import django

    django.setup()
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("axes").setLevel(logging.WARNING)
    from project.celery import app

    app.conf.broker_heartbeat = 0  # this process's producers only (see BENCH_DRAIN_DRAMATIQ_URL)
    known = systems()
    unknown = sorted(set(keys) - set(known))
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(known)}")
    from bench import drain_celery

    drain_celery.app.conf.broker_heartbeat = 0
    labels = {key: known[key].label for key in keys}

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    print(
        f"bench/drain.py {' '.join(sys.argv[1:])}\n"
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cpu, "
        f"Python {platform.python_version()}\n{versions()}",
        flush=True,
    )
    make_services()
    broker = Broker()
    try:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            print(f"PostgreSQL {cursor.fetchone()[0]}", flush=True)
        if not args.no_warmup:
            warm = max(100, args.jobs // 4)
            for key in keys:
                d = drain(known[key], concurrencies[0], warm, broker)
                print(f"warm-up -c {concurrencies[0]}: {labels[key]}: {d.rate:,.0f} jobs/s", flush=True)
        for concurrency in concurrencies:
            runs: dict[str, list[Drain]] = {key: [] for key in keys}
            for round_ in range(args.rounds):
                order = keys if round_ % 2 == 0 else keys[::-1]
                for key in order:
                    runs[key].append(drain(known[key], concurrency, args.jobs, broker))
                print(
                    f"-c {concurrency} round {round_ + 1}/{args.rounds}: "
                    + ", ".join(f"{key} {runs[key][-1].rate:,.0f}" for key in order)
                    + f" ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
            print("\n" + table(concurrency, args.jobs, keys, runs, labels) + "\n", flush=True)
        print("CPU kinds: " + "; ".join(f"{k}: {v}" for k, v in KIND_NOTES.items()))
        print(
            f"total time {time.monotonic() - started:.0f} s"
            + (f"; worker logs in {LOG_DIR}" if args.keep_logs else "")
        )
    finally:
        broker.close()
        remove_services()
        shutil.rmtree(WORK_DIR, ignore_errors=True)
        shutil.rmtree(PROJECT_ENV["MEDIA_ROOT"], ignore_errors=True)
        if not args.keep_logs:
            shutil.rmtree(LOG_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
