"""The RabbitMQ the tests run against, and how to drive it.

The machine's own broker by default. bin/test's second pass points the suite at the
RabbitMQ 4 node of bin/rabbitmq4 with three variables:

- JOBS_TEST_BROKER_URL: its URL, or a cluster's failover list "url;url;url" (not
  CELERY_BROKER_URL, which Celery reads itself, over whatever a test sets);
- JOBS_TEST_RABBITMQCTL: the command that runs its rabbitmqctl;
- JOBS_TEST_BROKER_START: the command that starts it again if it stopped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

_ROOT = Path(__file__).resolve().parents[2]

CTL = shlex.split(os.environ.get("JOBS_TEST_RABBITMQCTL", "rabbitmqctl"))
START = shlex.split(os.environ.get("JOBS_TEST_BROKER_START", str(_ROOT / "bin" / "services")))


def url(default: str) -> str:
    """The broker's URL: JOBS_TEST_BROKER_URL, else `default` (the settings' URL)."""
    return os.environ.get("JOBS_TEST_BROKER_URL") or default


def urls(default: str) -> list[str]:
    """Each node's URL: one, or a cluster's three."""
    return url(default).split(";")


def is_cluster(default: str) -> bool:
    return len(urls(default)) > 1


def port(default: str = "amqp://127.0.0.1:5672//") -> int:
    """The AMQP port of the (first) node."""
    return urlsplit(urls(default)[0]).port or 5672


def ctl(*args: str, timeout: float = 120) -> str:
    """rabbitmqctl of the broker under test (quiet); returns its output, raises on failure."""
    result = subprocess.run([*CTL, "-q", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, [*CTL, *args], output=result.stdout, stderr=result.stderr
        )
    return result.stdout


def start() -> None:
    """Starts the broker under test if it is not running (idempotent)."""
    subprocess.run(START, check=True, timeout=300, stdout=subprocess.DEVNULL)


def connections_of(pid: int, amqp_port: int) -> list[str]:
    """The RabbitMQ connections (their Erlang pids, for rabbitmqctl) that the process
    `pid` holds to the broker listening on `amqp_port`, matched by their client port."""
    sockets = subprocess.run(
        ["ss", "-tnpH", "state", "established", "dport", "=", f":{amqp_port}"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    ports = {line.split()[2].rsplit(":", 1)[1] for line in sockets if f"pid={pid}," in line}
    listed = [line.split() for line in ctl("list_connections", "pid", "peer_port").splitlines()]
    return [fields[0] for fields in listed if len(fields) == 2 and fields[1] in ports]


def wait_until_acknowledged(rabbitmqctl, queue: str) -> None:
    """Waits until `queue` of the app's vhost holds no message, ready or unacknowledged
    (`rabbitmqctl` runs the broker's rabbitmqctl: the suite's fixture of that name)."""
    from urllib.parse import unquote

    from jobs.app import celery_app
    from jobs.testing import wait_for

    app = celery_app()
    vhost = unquote(app.conf.broker_url.rsplit("/", 1)[1])

    def ready() -> int:
        with app.connection_for_write() as connection:
            return connection.default_channel.queue_declare(queue, passive=True).message_count

    def empty() -> bool:
        for line in rabbitmqctl("list_queues", "-p", vhost, "name", "messages").splitlines():
            name, _, count = line.partition("\t")
            if name == queue:
                return count.strip() == "0" and ready() == 0
        return False

    wait_for(empty, message=f"every message of the {queue} queue acknowledged")
