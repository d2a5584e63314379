"""Where a drain's time goes: the CPU each process spends per job, bare Celery against
the platform, read from /proc around each drain.

    .venv/bin/python bench/drain_cpu.py [--jobs 4000] [--rounds 2]

For each round it drains `--jobs` no-op jobs four ways with the bench's worker (2
prefork processes): bare Celery, bare Celery with the priority the platform's jobs
carry, the platform, and the platform without its success write (a bound, not a
mode a real job can run in: bench.tasks._StartOnly). It prints the rate, the ratio to
bare Celery's with the same priority, the CPU milliseconds per job of each
kind of process (the worker's main process, its pool processes, RabbitMQ, PostgreSQL,
this script) and how many of the 2 cores were busy on average. It uses `make bench`'s
vhost and database, made afresh, so the two must not run at once; and it counts
every RabbitMQ and PostgreSQL process of the machine, which should be quiet.
"""

from __future__ import annotations

import argparse
import os
import time

from run import Bench, fresh_services

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's (name, user + system CPU seconds so far)."""
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
        seen[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return seen


def drain(bench: Bench, enqueue_one, finished=None) -> tuple[float, dict[str, float], float]:
    """Rate, CPU ms per job by kind of process, and cores busy, for one drain."""
    bench.worker.stop()
    bench.purge()
    batch = [enqueue_one() for _ in range(bench.n)]
    bench.worker.start()
    main_pid, pool_pids = bench.worker.process.pid, set(bench.worker.pool_pids())
    before, started = cpu_seconds(), time.monotonic()
    bench.wait(lambda: bench.depth() == 0, interval=0.02)
    if finished is not None:
        bench.wait(lambda: finished(batch), interval=0.01)
    wall, after = time.monotonic() - started, cpu_seconds()
    by_kind: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        spent = seconds - before.get(pid, (name, 0.0))[1]
        if spent <= 0:
            continue
        kind = {"beam.smp": "RabbitMQ", "postgres": "PostgreSQL"}.get(name, "other")
        if pid == main_pid:
            kind = "worker main process"
        elif pid in pool_pids:
            kind = "worker pool process"
        elif pid == os.getpid():
            kind = "this script"
        by_kind[kind] = by_kind.get(kind, 0.0) + spent
    per_job = {kind: seconds / bench.n * 1000 for kind, seconds in by_kind.items()}
    return bench.n / wall, per_job, sum(by_kind.values()) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    fresh_services()
    bench = Bench(jobs=options.jobs, rounds=options.rounds)
    import jobs
    from bench.tasks import bare_noop, noop, noop_start_only

    kinds = ["worker main process", "worker pool process", "RabbitMQ", "PostgreSQL", "this script", "other"]
    print(f"{'drain':<22}{'jobs/s':>8}{'ratio':>7}{'cores':>7}  CPU ms per job: " + ", ".join(kinds))
    try:
        for _ in range(options.rounds):
            rates: dict[str, float] = {}
            for label, enqueue_one, finished in (
                ("bare Celery", lambda: bare_noop.apply_async(queue="default"), None),
                ("bare, priority 5", lambda: bare_noop.apply_async(queue="default", priority=5), None),
                (
                    "platform",
                    lambda: jobs.enqueue(noop),
                    lambda batch: bench.ledger_done([j.id for j in batch]),
                ),
                ("platform, start only", lambda: jobs.enqueue(noop_start_only), None),
            ):
                rate, per_job, cores = drain(bench, enqueue_one, finished)
                rates[label] = rate
                # Against bare Celery's messages with the same priority, drained just before.
                ratio = f"{rate / rates['bare, priority 5']:.2f}" if label.startswith("platform") else ""
                spent = "  ".join(f"{per_job.get(kind, 0.0):.2f}" for kind in kinds)
                print(f"{label:<22}{rate:>8,.0f}{ratio:>7}{cores:>7.2f}  {spent}")
    finally:
        bench.worker.kill()


if __name__ == "__main__":
    main()
