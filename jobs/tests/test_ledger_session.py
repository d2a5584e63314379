"""The worker's ledger session: leases and the hot path's statements on a connection of
their own, which a task body cannot close, made anew after fork, replaced when it dies."""

import os
import time

import pytest
from django.db import OperationalError, connection

from jobs import enqueue, ledger
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.testing.finishing import finished
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def _queued_row() -> Job:
    return Job.objects.create(task_name="tests.record", queue="default", priority=5, state=JobState.QUEUED)


def _setting(db, name: str) -> str:
    with db.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return cursor.fetchone()[0]


def test_the_session_plans_with_the_guard_and_leaves_djangos_connection_alone():
    session = ledger.ledger_session().connection()
    assert _setting(session, "enable_seqscan") == "off"
    assert _setting(connection, "enable_seqscan") == "on"
    with session.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != connection.connection.info.backend_pid


def test_a_lease_outlives_djangos_connection():
    row = _queued_row()
    lease = ledger.Lease(row.id)
    job = lease.take_and_start("celery@test")
    try:
        connection.close()  # what a task body may do
        assert ledger.lock_key(row.id) in ledger.held_lease_keys()
        assert lease.succeed_and_release(job, "ok") == 1
    finally:
        lease.release()
    assert Job.objects.get(pk=row.id).state == JobState.SUCCEEDED


def test_a_dead_session_fails_one_call_and_the_next_connects_anew():
    first, second = _queued_row(), _queued_row()
    session = ledger.ledger_session().connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [session.connection.info.backend_pid])
    time.sleep(0.1)
    with pytest.raises(OperationalError):
        ledger.Lease(first.id).take_and_start("celery@test")
    lease = ledger.Lease(second.id)
    job = lease.take_and_start("celery@test")
    assert lease.held and job.attempts == 1
    assert lease.succeed_and_release(job, None) == 1
    assert _setting(ledger.ledger_session().connection(), "enable_seqscan") == "off"  # set again


def test_a_forked_process_connects_anew_and_leaves_its_parents_session_alone():
    parent_row, child_row = _queued_row(), _queued_row()
    lease = ledger.Lease(parent_row.id)
    job = lease.take_and_start("celery@test")
    parent_pid = ledger.ledger_session().connection().connection.info.backend_pid
    connection.close()  # the child's Django connection is its own too
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if all went as it should
        code = 1
        try:
            child = ledger.Lease(child_row.id)
            started = child.take_and_start("celery@child")
            own_pid = ledger.ledger_session().connection().connection.info.backend_pid
            if (
                started is not None
                and own_pid != parent_pid
                and child.succeed_and_release(started, None) == 1
            ):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's session is the one it had, its lease still held.
    assert ledger.ledger_session().connection().connection.info.backend_pid == parent_pid
    assert ledger.lock_key(parent_row.id) in ledger.held_lease_keys()
    assert lease.succeed_and_release(job, None) == 1
    assert {r.state for r in Job.objects.filter(pk__in=[parent_row.id, child_row.id])} == {JobState.SUCCEEDED}


def test_a_body_that_closes_djangos_connection_keeps_its_lease(worker, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.close_the_connection, path)
    wait_for(lambda: tasks.lines(path) == ["closed"], message="the body closed its connection")
    assert ledger.lock_key(job.id) in ledger.held_lease_keys()  # another copy could not start it
    open(f"{path}.go", "w").close()
    job = finished(job.id)
    assert (job.state, job.attempts, job.result) == (JobState.SUCCEEDED, 1, "done")
    assert tasks.lines(path) == ["closed", "ran"]
    assert ledger.lock_key(job.id) not in ledger.held_lease_keys()
