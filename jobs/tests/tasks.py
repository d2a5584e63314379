"""Jobs used only by the test suite; the test worker imports them with -I.

Each one appends a line to a file the test owns, so a test counts side effects
per job without sharing state with other tests.
"""

import asyncio
import os
import time

import jobs
from jobs.errors import TransientJobError
from project.celery import app


def _append(path: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic across processes.
    with open(path, "a") as fh:
        fh.write(f"{line} {time.time():.4f}\n")


def lines(path: str) -> list[str]:
    try:
        with open(path) as fh:
            return [line.split()[0] for line in fh.read().splitlines()]
    except FileNotFoundError:
        return []


@app.task(name="tests.record", launchable=True)
def record(path: str, value: str = "ran") -> str:
    _append(path, value)
    return value


@app.task(name="tests.flaky", retry_backoff=0.2, retry_backoff_max=2.0, launchable=True)
def flaky(path: str, failures: int) -> str:
    done = len(lines(path))
    _append(path, "fail" if done < failures else "ok")
    if done < failures:
        raise TransientJobError(f"transient failure {done + 1} of {failures}")
    return "ok"


@app.task(name="tests.flaky_slow_backoff", retry_backoff=1.0, retry_backoff_max=1.0)
def flaky_slow_backoff(path: str, failures: int) -> str:
    """tests.flaky with a backoff of 0.5 to 1 s, long enough to see who waited it out."""
    return flaky.run(path, failures)


@app.task(name="tests.retry_in_20s", retry_backoff=20.0, retry_backoff_max=20.0, retry_jitter=False)
def retry_in_20s(path: str) -> str:
    """Fails transiently once, then waits out a 20 s backoff before its second run."""
    return flaky.run(path, 1)


@app.task(name="tests.always_transient", retry_backoff=0.05, retry_backoff_max=0.1, max_retries=2)
def always_transient(path: str) -> None:
    _append(path, "fail")
    raise TransientJobError("still down")


@app.task(name="tests.fail")
def fail(path: str) -> None:
    _append(path, "fail")
    raise ValueError("this job always fails")


@app.task(name="tests.fail_once")
def fail_once(path: str) -> str:
    if not lines(path):
        _append(path, "fail")
        raise ValueError("first attempt fails")
    _append(path, "ok")
    return "ok"


@app.task(name="tests.retry_itself", bind=True)
def retry_itself(self, path: str, countdown: float) -> str:
    """Asks Celery for its own retry (self.retry), once, `countdown` seconds later."""
    if not lines(path):
        _append(path, "fail")
        raise self.retry(exc=ValueError("not yet"), countdown=countdown)
    _append(path, "ok")
    return "ok"


@app.task(name="tests.sleep")
def sleep(path: str, seconds: float) -> None:
    _append(path, "start")
    time.sleep(seconds)
    _append(path, "end")


@app.task(name="tests.exit_worker")
def exit_worker(path: str) -> None:
    """Poison: kills the worker process running it, every time."""
    _append(path, "start")
    os._exit(1)


@app.task(name="tests.hang", soft_time_limit=1)
def hang(path: str) -> None:
    _append(path, "start")
    time.sleep(60)
    _append(path, "end")


@app.task(name="tests.hard_limited", time_limit=1)
def hard_limited(path: str) -> None:
    """Past its hard time limit (1 s), in a call that no soft limit interrupts."""
    _append(path, "start")
    time.sleep(5)
    _append(path, "end")


@app.task(name="tests.lose_start_in_a_crash", bind=True)
def lose_start_in_a_crash(self, path: str, reconnect: bool = False) -> str:
    """Does to its own ledger row what a crash of PostgreSQL does to an asynchronously
    committed start (the row reads `queued`, one attempt behind), then loses its
    connection, as every session does in such a crash; with `reconnect`, the body
    then opens a new one itself, as a body that retries its own queries would."""
    from django.db import connection

    from jobs import ledger
    from jobs.models import Job, JobState

    Job.objects.filter(pk=self.request.id).update(state=JobState.QUEUED, attempts=0, started_at=None)
    ledger_pid = ledger.ledger_session().db.connection.info.backend_pid  # holds the lease
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(%s), pg_terminate_backend(pg_backend_pid())", [ledger_pid]
            )
    except Exception:  # noqa: BLE001 - the connection is gone, which is the point
        pass
    if reconnect:
        connection.close()
        connection.ensure_connection()
    time.sleep(0.2)
    _append(path, "ran")
    return "done"


@app.task(name="tests.steps", bind=True)
def steps(self, path: str, n: int, pause: float = 0.05, check: str = "checkpoint", fail_at: int = -1) -> int:
    """`n` steps of `pause` seconds, each a side effect (a line); between steps it checks
    for a cancel as `check` says: "checkpoint" (jobs.checkpoint), "asked"
    (self.cancel_requested()), or "never". At step `fail_at` it fails transiently."""
    for step in range(n):
        if step == fail_at:
            raise TransientJobError(f"transient failure at step {step}")
        if check == "checkpoint":
            jobs.checkpoint()
        elif check == "asked" and self.cancel_requested():
            _append(path, "stopping")
            return step
        _append(path, f"step{step}")
        time.sleep(pause)
    return n


@app.task(name="tests.progressing", bind=True)
def progressing(self, path: str, n: int, pause: float) -> int:
    """Reports progress at every one of `n` steps, `pause` seconds apart."""
    for step in range(1, n + 1):
        self.progress(step, n, f"step {step} of {n}")
        time.sleep(pause)
    _append(path, "done")
    return n


@app.task(name="tests.close_the_connection")
def close_the_connection(path: str) -> str:
    """Closes Django's database connection, as a body may, then waits for the test
    (a `go` file beside `path`, at most 10 s) and writes one line."""
    from django.db import connection

    connection.close()
    _append(path, "closed")
    deadline = time.monotonic() + 10
    while not os.path.exists(f"{path}.go") and time.monotonic() < deadline:
        time.sleep(0.02)
    _append(path, "ran")
    return "done"


@app.task(name="tests.cache_record", queue="cache", bind=True, retry_backoff=0.2, retry_backoff_max=1.0)
def cache_record(self, path: str, value: str, fail: str = "", sleep: float = 0.0) -> str:
    """A job of the cache queue (a throughput queue where a test makes it one): writes
    `value`, or fails as `fail` says ("transient" once, "permanent" always)."""
    if sleep:
        time.sleep(sleep)
    if fail == "permanent" or (fail == "transient" and self.request.retries == 0):
        _append(path, f"{value}-failed")
        raise (TransientJobError if fail == "transient" else jobs.PermanentJobError)(f"{value} failed")
    _append(path, value)
    return value


@jobs.subscribe("tests.happened")
@app.task(name="tests.subscriber_ok")
def subscriber_ok(event_id: int, payload: dict) -> None:
    _append(payload["path"], f"ok-{event_id}")


@jobs.subscribe("tests.happened")
@app.task(name="tests.subscriber_broken")
def subscriber_broken(event_id: int, payload: dict) -> None:
    raise ValueError("this subscriber is broken")


@app.task(name="tests.limited", global_rate_limit="4/s", launchable=True)
def limited(path: str, n: int) -> None:
    _append(path, f"run-{n}")


from jobs.tests import dj_tasks  # noqa: E402,F401 - Django @task functions, registered on the worker too

# -- async bodies (jobs.async_bodies) -----------------------------------------------------


@app.task(name="tests.async_io", bind=True, retry_backoff=0.2, retry_backoff_max=1.0)
async def async_io(self, path: str, failures: int) -> str:
    """Awaits real I/O (the SMTP server's greeting, over asyncio's streams) and Django's
    async ORM; fails its first `failures` attempts with a transient error."""
    from django.conf import settings

    from jobs.models import Job

    reader, writer = await asyncio.open_connection(settings.EMAIL_HOST, settings.EMAIL_PORT)
    greeting = (await reader.readline()).decode().split()[0]
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    row = await Job.objects.aget(pk=self.request.id)
    _append(path, f"{greeting}:attempt={row.attempts}")
    if row.attempts <= failures:
        raise TransientJobError(f"transient failure {row.attempts} of {failures}")
    return greeting


@app.task(name="tests.async_wait", bind=True, max_retries=0)
async def async_wait(self, path: str, seconds: float) -> str:
    """Awaits `seconds`, reporting progress; records whether its cleanup ran."""
    _append(path, "started")
    self.progress(1, 2, "waiting")
    try:
        await asyncio.sleep(seconds)
    except BaseException as exc:
        _append(path, f"interrupted:{type(exc).__name__}")
        raise
    _append(path, "woke")
    return "woke"
