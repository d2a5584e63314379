"""The ledger's own CPU per job: what a worker's start and success statements cost the
pool process (Python, psycopg2, the socket) and its PostgreSQL backend, without a
worker, a broker or a body around them.

    .venv/bin/python bench/ledger_cpu.py [--jobs 4000] [--rounds 7] [--batch 16]

Each round runs `--jobs` waiting jobs through the one-job path (`Lease.take_and_start`
then `Lease.succeed_and_release`, two round trips a job: what `JobTask` does) and as
many through a throughput queue's batch path (`Leases.take_and_start` and
`Leases.succeed_and_release` for `--batch` jobs at a time), alternating which goes
first. The clock and the CPU counters (this process's, from `time.process_time`; the
ledger session's backend, from /proc) run around the statements only: rows are made
before. Prints medians and ranges over the rounds, per job.

Uses bench/drain.py's vhost and database (`jobs_bench_drain`, made afresh and deleted
at the end); nothing is published.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import drain  # noqa: E402 - sets the project's environment for the database

_TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def waiting_jobs(n: int) -> list[str]:
    """`n` queued no-op rows, written straight into the ledger (no message)."""
    from django.db import connection

    from jobs.models import JobState

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE jobs_job CASCADE")
        cursor.execute(
            "INSERT INTO jobs_job (id, task_name, args, kwargs, queue, priority, state, attempts, lost_runs, "
            "retries, created_at, queued_at, key, unique_key, last_error, last_traceback, last_error_class, "
            "worker) SELECT gen_random_uuid(), 'bench.noop', '[]', '{}', 'default', 5, %s, 0, 0, 0, now(), now(), "
            "NULL, '', '', '', '', '' FROM generate_series(1, %s) RETURNING id",
            [JobState.QUEUED.value, n],
        )
        ids = [str(row[0]) for row in cursor.fetchall()]
        cursor.execute("VACUUM ANALYZE jobs_job")
    return ids


def one_by_one(ids: list[str]) -> None:
    from jobs import ledger

    for job_id in ids:
        lease = ledger.Lease(job_id)
        job = lease.take_and_start("bench")
        lease.succeed_and_release(job, None)


def in_batches(size: int):
    def run(ids: list[str]) -> None:
        from jobs import ledger

        for start in range(0, len(ids), size):
            leases = ledger.Leases(ids[start : start + size])
            started = leases.take_and_start("bench")
            leases.succeed_and_release([(job, None) for job in started.values()])

    return run


def measure(path, ids: list[str], backend: int) -> tuple[float, float, float]:
    """(wall, process CPU, backend CPU) in ms per job."""
    wall, cpu, pg = time.perf_counter(), time.process_time(), backend_cpu(backend)
    path(ids)
    wall, cpu, pg = time.perf_counter() - wall, time.process_time() - cpu, backend_cpu(backend) - pg
    return tuple(value / len(ids) * 1000 for value in (wall, cpu, pg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    import django

    django.setup()
    drain.make_services()
    try:
        from django.db import connection

        from jobs import ledger
        from jobs.models import Job, JobState

        session = ledger.ledger_session()
        with session.connection().cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        paths = {
            "one job (2 statements a job)": one_by_one,
            f"batches of {args.batch}": in_batches(args.batch),
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
        measure(one_by_one, waiting_jobs(500), backend)  # warm-up: prepares the statements
        for round_ in range(args.rounds):
            order = list(paths) if round_ % 2 == 0 else list(paths)[::-1]
            for name in order:
                ids = waiting_jobs(args.jobs)
                results[name].append(measure(paths[name], ids, backend))
                left = Job.objects.exclude(state=JobState.SUCCEEDED).count()
                if left:
                    raise RuntimeError(f"{name}: {left} jobs not succeeded")
        connection.close()
        print(
            f"bench/ledger_cpu.py: {args.jobs:,} jobs a round, {args.rounds} rounds; ms per job, median (min-max)"
        )
        print(f"{'path':<32}{'wall':>20}{'pool process CPU':>22}{'PostgreSQL CPU':>22}{'ledger CPU':>22}")
        for name, rows in results.items():
            cols = [[row[i] for row in rows] for i in range(3)] + [[row[1] + row[2] for row in rows]]
            print(f"{name:<32}" + "".join(f"{drain.span(col, '.3f'):>22}" for col in cols))
    finally:
        ledger.close_ledger_session()
        drain.remove_services()


if __name__ == "__main__":
    main()
