"""The ledger's prepared statements: prepared again on a new connection, planned as
index lookups, bounded in time; and the lease they take."""

import time

import pytest
from django.utils import timezone

from jobs import ledger
from jobs.models import Job, JobState


def _ledger_row(state: JobState):
    from jobs.models import Job

    return Job.objects.create(
        task_name="tests.record", args=[], kwargs={}, queue="default", priority=5, state=state
    )


@pytest.mark.django_db(transaction=True)
def test_the_hot_path_statements_are_prepared_again_on_a_new_connection():
    from django.db import connection

    from jobs.models import Job

    rows = [_ledger_row(JobState.QUEUED) for _ in range(3)]
    for row in rows:
        lease = ledger.Lease(row.id)
        job = lease.take_and_start("celery@test")
        assert lease.held and job.attempts == 1
        assert ledger.lock_key(row.id) in ledger.held_lease_keys()
        assert lease.succeed_and_release(job, {"n": 1}) == 1
        assert ledger.lock_key(row.id) not in ledger.held_lease_keys()  # given back
        ledger.close_ledger_session()  # the next job starts on a new connection, with nothing prepared
        connection.close()

    assert [Job.objects.get(pk=r.id).state for r in rows] == [JobState.SUCCEEDED] * 3
    assert Job.objects.get(pk=rows[0].id).result == {"n": 1}


@pytest.mark.django_db(transaction=True)
def test_a_busy_lease_starts_nothing():
    import psycopg2
    from django.db import connection

    from jobs.models import Job

    row = _ledger_row(JobState.QUEUED)
    other = psycopg2.connect(**connection.get_connection_params())
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ledger.lock_key(row.id)])
        lease = ledger.Lease(row.id)
        assert lease.take_and_start("celery@test") is None
        assert not lease.held
        assert Job.objects.get(pk=row.id).state == JobState.QUEUED
    finally:
        other.close()


@pytest.mark.django_db(transaction=True)
def test_marking_jobs_queued_looks_them_up_by_primary_key_whatever_the_statistics_say():
    # With stale statistics (few pending rows when last analyzed) or a cached generic
    # plan, the relay's partial index on pending rows looks cheapest, and each mark
    # would scan every pending row: thousands of them after a broker outage.
    from django.db import connection

    ledger.mark_queued(["00000000-0000-0000-0000-000000000000"], 0, timezone.now())  # prepares it
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute("SET enable_seqscan = off")  # the test table is small: choose among indexes
        try:
            cursor.execute(
                "EXPLAIN EXECUTE jobs_mark_queued(now(), ARRAY['00000000-0000-0000-0000-000000000000'], 0, now())"
            )
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET plan_cache_mode")
            cursor.execute("RESET enable_seqscan")
    assert "jobs_job_pkey" in plan
    assert "job_pending_created_idx" not in plan


@pytest.mark.django_db(transaction=True)
def test_hot_path_plans_made_while_the_ledger_is_empty_stay_index_lookups():
    # A prepared statement keeps its generic plan. Made while the ledger is nearly
    # empty, a sequential scan looks cheapest, and it would stay one as the ledger
    # grows to millions of rows.
    from django.db import connection

    rows = [_ledger_row(JobState.PENDING) for _ in range(3)]
    ledger.close_ledger_session()
    session = ledger.ledger_session().connection()  # the worker's statements run here
    sessions = [connection, session]
    for db in sessions:
        with db.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_generic_plan")  # every EXECUTE uses the kept plan
    try:
        for row in rows:  # the platform's own calls make (and keep) the plans
            assert ledger.mark_queued([row.id], 0, timezone.now()) == 1
            lease = ledger.Lease(row.id)
            job = lease.take_and_start("celery@test")
            assert lease.succeed_and_release(job, None) == 1
        plans = {}
        for db, name, args in [
            (connection, "jobs_mark_queued", "now(), ARRAY[%s], 0, now()"),
            (session, "jobs_take_and_start", "1, now(), 'w', %s, ARRAY['queued']"),
            (session, "jobs_succeed_and_release", "NULL, now(), %s, 1, 1"),
        ]:
            with db.cursor() as cursor:
                cursor.execute(f"EXPLAIN EXECUTE {name}({args})", [str(row.id)])
                plans[name] = "\n".join(line for (line,) in cursor.fetchall())
    finally:
        for db in sessions:
            with db.cursor() as cursor:
                cursor.execute("RESET plan_cache_mode")
        ledger.close_ledger_session()
    for name, plan in plans.items():
        assert "Seq Scan on jobs_job" not in plan, f"{name}:\n{plan}"
        assert "jobs_job_pkey" in plan, f"{name}:\n{plan}"


@pytest.mark.django_db(transaction=True)
def test_a_side_mark_that_gets_no_answer_gives_up_in_time(settings):
    """A database that stops answering the bulk publisher's side connection must not
    hold the publish up for ever."""
    import psycopg2
    from django.db import OperationalError, connection

    job = Job.objects.create(task_name="tests.record", queue="default", priority=5)  # pending, unpublished
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    blocker = psycopg2.connect(**params)
    try:
        with blocker.cursor() as cursor:  # holds the row's lock: the mark's UPDATE waits
            cursor.execute("SELECT 1 FROM jobs_job WHERE id = %s FOR UPDATE", [str(job.id)])
        marks = ledger.BackgroundMarks()  # connected with the default timeout
        settings.JOBS_PUBLISH_TIMEOUT_SECONDS = 0.5
        marks.mark([job.id], 0, timezone.now())
        started = time.monotonic()
        with pytest.raises((OperationalError, psycopg2.OperationalError), match="did not answer in time"):
            marks.close()
        assert time.monotonic() - started < 3
    finally:
        blocker.close()
