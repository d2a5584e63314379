"""Shared fixtures: an isolated RabbitMQ vhost, a real worker, dead-letter reading.

Every test run gets its own RabbitMQ virtual host and Redis key prefix, and
pytest-django its own database, so nothing left by an earlier run (queues with
other arguments, stray messages, rows) can change a result.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from urllib.parse import quote, urlsplit

import pytest
from django.conf import settings

from jobs.testing import broker
from jobs.testing.dead_letters import DeadLetterReader
from jobs.testing.processes import RelayProcess, background, manage_py
from jobs.testing.smtp import SMTPTestServer
from jobs.testing.worker import WorkerProcess
from tests.faults.report import REPORT

RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
VHOST = f"jobs_test_{RUN_ID}"


def _rabbitmqctl(*args: str) -> str:
    try:
        return broker.ctl(*args)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {exc.stderr or exc.output}") from None


def _drop_stale_vhosts() -> None:
    # A vhost whose test run (its pid) is gone was left by a run that crashed.
    for name in _rabbitmqctl("list_vhosts").split():
        if not name.startswith("jobs_test_"):
            continue
        pid = name.removeprefix("jobs_test_").split("_")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _rabbitmqctl("delete_vhost", name)


def _drop_stale_test_databases() -> None:
    import psycopg2

    db = settings.DATABASES["default"]
    conn = psycopg2.connect(dbname="postgres", user=db["USER"], password=db["PASSWORD"] or None,
                            host=db["HOST"], port=db["PORT"])  # fmt: skip
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE 'test_jobs_%%'")
        for (name,) in cursor.fetchall():
            pid = name.removeprefix("test_jobs_").split("_")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """A test database of this run's own, so two runs on one machine never collide."""
    _drop_stale_test_databases()
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = f"test_jobs_{RUN_ID}"


@pytest.fixture(scope="session")
def broker_url():
    _drop_stale_vhosts()
    _rabbitmqctl("add_vhost", VHOST)
    _rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    # scheme, auth and host of each node (a cluster's failover list has several)
    bases = [re.match(r"^[a-z]+://[^/]+", url).group(0) for url in broker.urls(settings.CELERY_BROKER_URL)]
    try:
        yield ";".join(f"{base}/{quote(VHOST, safe='')}" for base in bases)
    finally:
        _rabbitmqctl("delete_vhost", VHOST)


@pytest.fixture(scope="session")
def rabbitmqctl(broker_url):
    """rabbitmqctl of the broker under test, run in the run's vhost's broker; returns stdout.

    `rabbitmqctl.amqp_port` is the port that broker listens on."""

    def run(*args: str) -> str:
        return _rabbitmqctl(*args)

    run.amqp_port = urlsplit(broker_url.split(";")[0]).port or 5672
    return run


@pytest.fixture(scope="session")
def media_root(tmp_path_factory):
    """MEDIA_ROOT shared by this process and the workers it starts."""
    return str(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def smtp_server():
    """One real SMTP server for the run; the workers send to it."""
    server = SMTPTestServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp(smtp_server):
    """The SMTP server, with a fresh script and nothing received."""
    smtp_server.handler.reset()
    return smtp_server.handler


@pytest.fixture(autouse=True)
def _services_unless_a_unit_test(request):
    """Every test but a `unit` one gets the run's services (`platform`), set up once."""
    if request.node.get_closest_marker("unit") is None:
        request.getfixturevalue("platform")


@pytest.fixture(scope="session")
def platform(broker_url, media_root, smtp_server, django_db_setup, django_db_blocker):
    """Points this process's Celery app and cache at the run's vhost and key prefix."""
    from django.test.utils import override_settings

    from jobs.broker import queues
    from project.celery import app

    app.conf.broker_url = broker_url
    cache_settings = {**settings.CACHES}
    cache_settings["default"] = {**cache_settings["default"], "KEY_PREFIX": f"test_{RUN_ID}"}
    # The test client speaks plain HTTP; production settings would redirect it to HTTPS.
    override = override_settings(
        CACHES=cache_settings,
        SECURE_SSL_REDIRECT=False,
        MEDIA_ROOT=media_root,
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=smtp_server.port,
    )
    override.enable()
    with app.connection_for_write() as connection:
        queues.declare(connection)
    try:
        yield app
    finally:
        override.disable()
        app.pool.force_close_all()


@pytest.fixture(scope="session")
def worker_env(broker_url, media_root, smtp_server, django_db_setup):
    from django.db import connection

    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "1",
        "DATABASE_URL": f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": broker_url,
        "CACHE_KEY_PREFIX": f"test_{RUN_ID}",
        "MEDIA_ROOT": media_root,
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
        "EMAILS_RETRY_BACKOFF_SECONDS": "0.2",
        "EMAILS_RATE_LIMIT": "100/s",
        "JOBS_MAX_LOST_RUNS": "2",
        "JOBS_LEASE_BUSY_RETRY_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture(scope="session")
def session_worker(worker_env, tmp_path_factory):
    worker = WorkerProcess(worker_env, tmp_path_factory.mktemp("workers"), name=f"session-{RUN_ID}")
    try:
        yield worker
    finally:
        worker.kill()


@pytest.fixture(scope="session")
def session_relay(worker_env, tmp_path_factory):
    """The shared relay: it publishes due retries and deferred jobs. Its rescue pass is
    off (JOBS_RESCUE_INTERVAL_SECONDS=0): the rescue's tests run it themselves."""
    env = {**worker_env, "JOBS_RESCUE_INTERVAL_SECONDS": "0"}
    relay = RelayProcess(env, tmp_path_factory.mktemp("relay") / "relay.log")
    try:
        yield relay
    finally:
        relay.stop()


def _purge_stale_messages() -> None:
    """Empties the run's workload queues. A test starts on an empty ledger, so a message
    in them is one an earlier test left (a duplicate copy its own worker did not reach
    before it was killed, say): a worker would take it for a foreign job (jobs.base),
    write its row and run it inside this test."""
    from jobs import topology
    from jobs.app import celery_app

    with celery_app().connection_for_write() as connection:
        channel = connection.default_channel
        for queue in topology.WORKLOAD_QUEUES:
            channel.queue_purge(queue)


def _with_relay(request, relay) -> None:
    if "no_relay" not in request.fixturenames:
        relay.start()


@pytest.fixture
def worker(request, session_worker, session_relay):
    """The shared worker (2 prefork processes, every workload queue), running, with the
    shared relay that publishes its retries when they are due.

    After the test it waits (a little) for the worker to settle, and fails the test
    with the ids of the jobs still in flight, which the next test would inherit.
    """
    _with_relay(request, session_relay)
    _purge_stale_messages()
    session_worker.start()
    yield session_worker
    _settle()


@pytest.fixture
def no_relay(session_relay):
    """Stops the shared relay for a test that drives jobs.relay by hand."""
    session_relay.stop()
    return session_relay


def _settle(timeout: float = 15.0) -> None:
    """Fails the test if a job it started is still in flight after `timeout`: the next
    test runs on a flushed database, and a stray run would land in it."""
    from django.db import connection

    from jobs.models import Job, JobState

    in_flight = [JobState.QUEUED, JobState.STARTED, JobState.RETRYING]
    deadline = time.monotonic() + timeout
    while True:
        try:
            stray = list(Job.objects.filter(state__in=in_flight).values_list("id", "task_name", "state")[:10])
        except Exception:  # noqa: BLE001 - database access may be over for this test
            return
        finally:
            connection.close()
        if not stray:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"jobs still in flight {timeout:.0f}s after the test: {stray}", pytrace=False)
        time.sleep(0.1)


@pytest.fixture
def own_worker(request, session_worker, session_relay, worker_env, tmp_path):
    """Stops the shared worker for this test and hands out a worker the test controls.

    The test starts it (and may kill it); it is killed afterwards whatever happened.
    The shared relay runs, unless the test asks for `no_relay`.
    """
    session_worker.stop()
    _purge_stale_messages()
    _with_relay(request, session_relay)
    worker = WorkerProcess(worker_env, tmp_path, name=f"own-{uuid.uuid4().hex[:6]}")
    try:
        yield worker
    finally:
        worker.kill()


@pytest.fixture
def idle_publisher(monkeypatch):
    """The process's publisher as a new process has it: no channel, not marked down,
    a lock of its own (a thread a test leaves hanging keeps the one it holds)."""
    import threading

    from jobs.broker import publisher

    monkeypatch.setattr(publisher, "_lock", threading.Lock())
    monkeypatch.setattr(publisher, "_shared", None)
    monkeypatch.setattr(publisher, "_broker_down_until", 0.0)
    return publisher


@pytest.fixture
def keeper(worker_env, tmp_path):
    """The real dead-letter keeper command, running for the test."""
    with background(manage_py("dead_letter_keeper"), worker_env, tmp_path / "keeper.log") as process:
        yield process


@pytest.fixture(scope="session")
def dead_letters(platform):
    """The run's dead-letter queue: `dead_letters.find(job_id)` waits for a job's message."""
    return DeadLetterReader(platform)


# Fixtures that reach RabbitMQ beyond the declaration every run makes: a test that
# uses one is marked `broker`, and bin/test runs those again on RabbitMQ 4.
_BROKER_FIXTURES = {
    "worker", "own_worker", "session_worker", "keeper", "dead_letters", "session_relay", "rabbitmqctl",
    "worker_env",
}  # fmt: skip


# Fixtures that need a service: a test that uses none of them, and no database, is a
# `unit` test, run with no service at all (`make test-unit`).
_SERVICE_FIXTURES = _BROKER_FIXTURES | {
    "platform", "broker_url", "smtp", "smtp_server", "client", "admin_client", "admin_user", "live_server",
    "db", "transactional_db", "django_db_setup", "dead_letters", "media_root",
    "reliability", "no_relay",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("broker") is None and _BROKER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.broker)
        services = _SERVICE_FIXTURES & fixtures or item.get_closest_marker("broker")
        if not services and item.get_closest_marker("django_db") is None:
            item.add_marker(pytest.mark.unit)


# -- the reliability report (docs/reliability.md) -------------------------------------
# Tests in every folder record rows, so their outcomes are noted here, for the whole
# run; tests/faults/conftest.py writes the page when the run covered every scenario.


@pytest.fixture(scope="session")
def reliability(platform):
    """Tests record what they injected and saw; the table lands in docs/reliability.md."""
    from jobs import topology

    if REPORT.broker == "RabbitMQ":
        with platform.connection_for_write() as connection:
            version = connection.connection.server_properties["version"]
        REPORT.broker = f"RabbitMQ {version}, {topology.queue_type()} queues"
    return REPORT


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        REPORT.outcome(getattr(item, "originalname", item.name), report.passed)
    return report
