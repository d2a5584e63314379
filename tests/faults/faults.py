"""Fault injection on this machine's real services; every fault is undone in a finally.

RabbitMQ faults hit the broker under test (jobs.testing.broker).

CI and other test runs share these services, so each context manager restores the
service whatever happens inside it, and waits until it answers again.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psycopg2
from django.conf import settings

from jobs.testing import broker

BIN_SERVICES = Path(settings.BASE_DIR) / "bin" / "services"


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout}s")
        time.sleep(0.2)


def _rabbitmqctl(*args: str, timeout: float = 120) -> None:
    broker.ctl(*args, timeout=timeout)


@contextlib.contextmanager
def rabbitmq_stopped():
    """Stops the RabbitMQ application (`rabbitmqctl stop_app`); starts it again on exit."""
    _rabbitmqctl("stop_app")
    try:
        _wait(
            lambda: not _port_open(broker.port(settings.CELERY_BROKER_URL)), 30, "RabbitMQ closing its port"
        )
        yield
    finally:
        restore_rabbitmq()


@contextlib.contextmanager
def rabbitmq_blocking_publishers():
    """Sets off RabbitMQ's memory alarm (a high watermark of 1 byte), under which it
    blocks every connection that publishes: no confirm comes. Puts the watermark
    back on exit and waits for the alarm to clear."""

    def memory_alarm() -> bool:
        return "memory" in _rabbitmqctl_output("eval", "rabbit_alarm:get_alarms().")

    before = _rabbitmqctl_output("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    absolute = re.fullmatch(r"\{absolute,\s*(\d+)\}", before)
    if not (absolute or re.fullmatch(r"[0-9.]+", before)):
        raise RuntimeError(f"unexpected memory high watermark {before!r}; not changing it")
    try:
        _rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")
        _wait(memory_alarm, 30, "RabbitMQ's memory alarm")
        yield
    finally:
        if absolute:
            _rabbitmqctl("set_vm_memory_high_watermark", "absolute", absolute.group(1))
        else:
            _rabbitmqctl("set_vm_memory_high_watermark", before)
        _wait(lambda: not memory_alarm(), 30, "RabbitMQ's memory alarm clearing")


@contextlib.contextmanager
def rabbitmq_frozen():
    """Freezes the RabbitMQ node's process (SIGSTOP): its port still takes TCP
    connections, as the kernel completes them, but nothing answers or confirms (a
    hung broker, a VM paused by its host). Resumes it (SIGCONT) on exit and waits
    until it answers again. bin/services also resumes a node left frozen."""
    pid = int(_rabbitmqctl_output("eval", "os:getpid().").strip().strip('"'))
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            command = fh.read().split(b"\0")
    except FileNotFoundError:
        command = []
    if not (command and command[0].endswith(b"beam.smp") and b"rabbit" in command):
        raise RuntimeError(f"pid {pid} is not this machine's RabbitMQ node; not freezing it")
    # Should this process die before its finally (SIGKILLed), the node resumes anyway.
    watchdog = subprocess.Popen(
        ["sh", "-c", f"sleep 120; kill -CONT {pid}"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        os.killpg(watchdog.pid, signal.SIGKILL)  # the shell and its sleep
        watchdog.wait()
        _rabbitmqctl("await_startup")
        _wait(lambda: _port_open(broker.port(settings.CELERY_BROKER_URL)), 60, "RabbitMQ answering again")


def _rabbitmqctl_output(*args: str) -> str:
    return broker.ctl(*args)


def restore_rabbitmq() -> None:
    try:
        _rabbitmqctl("start_app")
    except subprocess.CalledProcessError:
        broker.start()
    _rabbitmqctl("await_startup")
    _wait(lambda: _port_open(broker.port(settings.CELERY_BROKER_URL)), 60, "RabbitMQ listening again")


@contextlib.contextmanager
def redis_stopped():
    """Shuts Redis down (`redis-cli shutdown nosave`); starts it again on exit (bin/services)."""
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=30)
    try:
        _wait(lambda: not _port_open(6379), 30, "Redis stopping")
        yield
    finally:
        subprocess.run([str(BIN_SERVICES)], check=True, timeout=180)
        _wait(lambda: _port_open(6379), 30, "Redis listening again")


def terminate_connections(database: str, keep: tuple[int, ...] = ()) -> int:
    """pg_terminate_backend on the sessions of `database` (but `keep`); returns how many."""
    db = settings.DATABASES["default"]
    conn = psycopg2.connect(
        dbname="postgres", user=db["USER"], password=db["PASSWORD"] or None, host=db["HOST"], port=db["PORT"]
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND NOT (pid = ANY(%s))",
                [database, list(keep) or [0]],
            )
            return cursor.fetchone()[0]
    finally:
        conn.close()
