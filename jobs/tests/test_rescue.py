"""The rescue (jobs/rescue.py): jobs whose messages RabbitMQ lost are sent again."""

import datetime
import io

import psycopg2
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from jobs import enqueue, ledger, relay, rescue, selectors
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def purge(queue: str = "default") -> int:
    from project.celery import app

    with app.connection_for_write() as conn:
        return conn.default_channel.queue_purge(queue)


def delete_queue(queue: str) -> None:
    from project.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(queue)


def metrics_text() -> str:
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    from jobs.metrics import PlatformCollector

    registry = CollectorRegistry()
    registry.register(PlatformCollector())
    return generate_latest(registry).decode()


def declare_topology() -> None:
    from jobs.broker import queues
    from project.celery import app

    with app.connection_for_write() as conn:
        queues.declare(conn)


def test_jobs_whose_messages_were_lost_are_rescued_each_once_and_no_others(
    own_worker, no_relay, admin_client, tmp_path
):
    path = str(tmp_path / "out")
    long_ago = timezone.now() - datetime.timedelta(minutes=20)
    names = ("queued1", "queued2", "orphan", "alive", "retry", "delayed")
    ids = {name: enqueue(tasks.record, path, name).id for name in names}
    assert purge() == len(names)  # no worker ran: every message waited in the queue, and is gone
    Job.objects.filter(pk__in=[ids["queued1"], ids["queued2"]]).update(queued_at=long_ago)
    # A run that died with its worker after RabbitMQ lost its message; and one that is
    # still going (its lease held) after as long.
    Job.objects.filter(pk__in=[ids["orphan"], ids["alive"]]).update(
        state=JobState.STARTED, attempts=1, started_at=long_ago
    )
    # A retry whose copy, due twenty minutes ago, was lost.
    Job.objects.filter(pk=ids["retry"]).update(
        state=JobState.RETRYING, attempts=1, retries=1, run_after=long_ago
    )
    # Queued long ago, but a rate limit delayed its copy until a minute ago: a worker
    # may hold that copy still, out of the queue.
    Job.objects.filter(pk=ids["delayed"]).update(
        queued_at=long_ago, delayed_until=timezone.now() - datetime.timedelta(minutes=1)
    )
    live_run = psycopg2.connect(**connection.get_connection_params())
    deleted_queue = False
    try:
        with live_run.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ledger.lock_key(ids["alive"])])

        # A queue holding a ready message is not looked at: that may be the job's own.
        kept = enqueue(tasks.record, path, "kept")
        Job.objects.filter(pk=kept.id).update(queued_at=long_ago)
        waiting = rescue.rescue_lost_jobs()
        assert (waiting.total, waiting.busy_queues, waiting.missing_queues) == (0, ["default"], [])

        young = enqueue(tasks.record, path, "young")  # queued a moment ago: not taken for lost
        assert purge() == 2
        delete_queue("cache")  # by hand: the other queues are still looked at
        deleted_queue = True
        out = io.StringIO()
        call_command("jobs_rescue", "--dry-run", stdout=out)
        listed = out.getvalue()
        assert "would be sent again: 3 queued, 1 started, 1 retrying; queues missing in RabbitMQ" in listed
        assert str(ids["orphan"]) in listed and str(kept.id) in listed
        assert not {str(ids["alive"]), str(ids["delayed"]), str(young.id)} & set(listed.split())
        assert not Job.objects.filter(rescued_at__isnull=False).exists(), "a dry run sends nothing"

        sent = rescue.rescue_lost_jobs()
        assert {state: sorted(map(str, found)) for state, found in sent.lost.items()} == {
            JobState.QUEUED: sorted(str(i) for i in (ids["queued1"], ids["queued2"], kept.id)),
            JobState.STARTED: [str(ids["orphan"])],
            JobState.RETRYING: [str(ids["retry"])],
        }
        assert sent.missing_queues == ["cache"]
        assert selectors.queue_depths()["cache"] is None
        scraped = metrics_text()
        assert 'jobs_queue_missing{queue="cache"} 1.0' in scraped and "jobs_rescued_last_day 5.0" in scraped
        dashboard = admin_client.get(reverse("admin:jobs_job_dashboard")).content.decode()
        assert '?rescued_at__isnull=False">5</a>' in dashboard and "missing in RabbitMQ" in dashboard
        listed = admin_client.get(reverse("admin:jobs_job_changelist") + "?rescued_at__isnull=False")
        assert listed.status_code == 200 and str(ids["orphan"]) in listed.content.decode()
        # Copies a worker took and holds (or that were lost again) leave the queue
        # empty: the next passes send none until JOBS_RESCUE_AFTER_SECONDS have passed.
        assert purge() == 5
        assert rescue.rescue_lost_jobs().total == 0
        # As if JOBS_RESCUE_AFTER_SECONDS had passed (the retry reads queued since its rescue).
        Job.objects.filter(rescued_at__isnull=False).update(rescued_at=long_ago, queued_at=long_ago)
        assert rescue.rescue_lost_jobs().total == 5

        own_worker.start()
        rescued = [ids["queued1"], ids["queued2"], kept.id, ids["orphan"], ids["retry"]]
        wait_for(
            lambda: Job.objects.filter(pk__in=rescued, state=JobState.SUCCEEDED).count() == 5,
            timeout=30,
            message="the rescued jobs",
        )
        assert sorted(tasks.lines(path)) == ["kept", "orphan", "queued1", "queued2", "retry"]
        orphan, retry = Job.objects.get(pk=ids["orphan"]), Job.objects.get(pk=ids["retry"])
        assert (orphan.attempts, orphan.lost_runs) == (2, 1), "the dead run was counted"
        assert (retry.attempts, retry.retries) == (2, 1)
        assert Job.objects.get(pk=ids["alive"]).state == JobState.STARTED, "a live run is left alone"
        assert (
            Job.objects.get(pk=young.id).state == Job.objects.get(pk=ids["delayed"]).state == JobState.QUEUED
        )
    finally:
        live_run.close()
        if deleted_queue:
            declare_topology()


def test_the_rescue_command_refuses_a_bad_age_and_an_unreachable_broker(monkeypatch):
    with pytest.raises(CommandError, match="--after 'soon'"):
        call_command("jobs_rescue", "--after", "soon")
    monkeypatch.setattr(rescue.selectors, "queue_depths", lambda: None)
    with pytest.raises(CommandError, match="RabbitMQ did not answer"):
        call_command("jobs_rescue")


def test_the_relay_runs_a_rescue_pass_at_start_and_then_every_interval(monkeypatch, settings):
    passes, clock = [], [0.0]

    def advance(seconds):
        clock[0] += seconds

    monkeypatch.setattr(relay, "relay_until_drained", lambda: None)
    monkeypatch.setattr(relay, "rescue_lost_jobs", lambda: passes.append(clock[0]))
    monkeypatch.setattr(relay, "monotonic", lambda: clock[0])
    monkeypatch.setattr(relay, "recheck_leases", lambda: 0)
    monkeypatch.setattr(relay, "seconds_until_next_due", lambda limit: limit)

    def run(interval_seconds: float, until: float) -> list[float]:
        passes.clear()
        clock[0] = 0.0
        settings.JOBS_RESCUE_INTERVAL_SECONDS = interval_seconds
        relay.run_relay_forever(interval=2.0, stop=lambda: clock[0] >= until, wake=advance)
        return list(passes)

    assert run(60, until=130) == [0.0, 60.0, 120.0]
    assert run(0, until=130) == [], "0 turns the rescue off"


def test_a_failing_rescue_pass_does_not_stop_the_relay(monkeypatch, settings):
    relayed, rescues, clock = [], [], [0.0]

    def broken():
        rescues.append(clock[0])
        raise psycopg2.OperationalError("server closed the connection")

    monkeypatch.setattr(relay, "relay_until_drained", lambda: relayed.append(clock[0]))
    monkeypatch.setattr(relay, "rescue_lost_jobs", broken)
    monkeypatch.setattr(relay, "monotonic", lambda: clock[0])
    monkeypatch.setattr(relay, "recheck_leases", lambda: 0)
    monkeypatch.setattr(relay, "seconds_until_next_due", lambda limit: limit)
    settings.JOBS_RESCUE_INTERVAL_SECONDS = 1
    relay.run_relay_forever(
        interval=1.0,
        stop=lambda: clock[0] >= 3,
        wake=lambda seconds: clock.__setitem__(0, clock[0] + seconds),
    )
    assert relayed == [0.0, 1.0, 2.0]
    assert rescues == [0.0, 1.0, 2.0], "each failed, and the next came on time"


def test_a_retry_the_body_asks_for_itself_records_when_it_is_due(worker, tmp_path):
    """self.retry(countdown=...) waits in the ledger (run_after) like any retry: the
    relay publishes it when due, and neither a duplicate copy nor the rescue starts
    it before then."""
    path = str(tmp_path / "out")
    job = enqueue(tasks.retry_itself, path, 2.0)
    wait_for(lambda: Job.objects.get(pk=job.id).state == JobState.RETRYING, message="the first attempt")
    row = Job.objects.get(pk=job.id)
    assert row.run_after is not None
    assert 1.5 <= (row.run_after - row.finished_at).total_seconds() <= 2.5
    wait_for(lambda: Job.objects.get(pk=job.id).state == JobState.SUCCEEDED, message="the retry")
    done = Job.objects.get(pk=job.id)
    assert done.attempts == 2 and done.started_at >= row.run_after
