"""Cancelling a running job (jobs.cancel): a body that checks stops at its next
checkpoint, one that never checks is stopped after JOBS_CANCEL_GRACE_SECONDS, and either
ends `cancelled` once, with no side effect after the stop, no retry, no dead letter,
and the worker goes on. Cancelling a finished job is refused with a sentence."""

import datetime
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

import jobs
from jobs import enqueue
from jobs.models import DeadLetter, Job, JobState
from jobs.testing import wait_for
from jobs.testing.broker import wait_until_acknowledged
from jobs.testing.finishing import finished
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 1.0


def _stamped(path: str) -> list[tuple[str, datetime.datetime]]:
    """Each side effect of tasks.steps with the time it happened."""
    with open(path) as fh:
        rows = [line.split() for line in fh.read().splitlines()]
    return [(name, datetime.datetime.fromtimestamp(float(at), tz=datetime.UTC)) for name, at in rows]


def _running(job_id, path: str, steps: int = 3) -> Job:
    """Waits until the job runs and has made `steps` side effects."""
    return wait_for(
        lambda: (
            len(tasks.lines(path)) >= steps and Job.objects.filter(pk=job_id, state=JobState.STARTED).first()
        ),
        message="the job to run",
    )


def _the_worker_goes_on(tmp_path) -> None:
    after = enqueue(tasks.record, str(tmp_path / "after"))
    assert finished(after.id).state == JobState.SUCCEEDED


def test_a_running_job_that_checks_stops_within_a_second_and_ends_cancelled(worker, tmp_path):
    path = str(tmp_path / "steps")
    job = enqueue(tasks.steps, path, 400, 0.05, "checkpoint")  # 20 s if never stopped
    _running(job.id, path)

    assert jobs.cancel(job.id, by="operator") == "stopping"

    job = finished(job.id)
    assert job.state == JobState.CANCELLED
    assert job.cancel_requested_by == "operator"
    assert (job.finished_at - job.cancel_requested_at).total_seconds() < 1.0
    effects = _stamped(path)
    assert effects and all(at <= job.finished_at for _, at in effects), "a side effect after the stop"
    assert job.attempts == 1 and job.retries == 0
    assert not DeadLetter.objects.filter(job_id=job.id).exists()
    wait_for(
        lambda: f"job={job.id} task=tests.steps attempt=1 state=cancelled" in worker.log(), message="the log"
    )
    _the_worker_goes_on(tmp_path)
    assert len(_stamped(path)) == len(effects), "the cancelled body ran again"


def test_a_body_that_sees_the_request_and_returns_ends_cancelled(worker, tmp_path):
    path = str(tmp_path / "steps")
    job = enqueue(tasks.steps, path, 400, 0.05, "asked")
    _running(job.id, path)

    assert jobs.cancel(job.id) == "stopping"

    job = finished(job.id)
    assert job.state == JobState.CANCELLED
    assert tasks.lines(path)[-1] == "stopping"
    assert job.result is None


def test_a_job_asked_to_stop_that_fails_before_a_checkpoint_is_cancelled_not_retried(worker, tmp_path):
    path = str(tmp_path / "steps")
    job = enqueue(tasks.steps, path, 400, 0.05, "never", 30)  # fails transiently at 1.5 s
    _running(job.id, path)

    assert jobs.cancel(job.id) == "stopping"

    job = finished(job.id)
    assert job.state == JobState.CANCELLED and job.attempts == 1 and job.retries == 0
    assert len(tasks.lines(path)) == 30, "no second attempt"
    wait_for(
        lambda: f"job={job.id} task=tests.steps attempt=1 state=cancelled" in worker.log(), message="log"
    )


def _its_copy_is_acknowledged(worker, job, rabbitmqctl) -> None:
    """Celery put the killed run's message back (a lost worker): its copy is acknowledged
    without running, before the test ends (a copy left for the next test's worker would
    find no row there, and run)."""
    wait_for(
        lambda: (
            f"job={job.id} task=tests.steps already cancelled; acknowledged without running" in worker.log()
        ),
        message="the message's copy skipped",
    )
    wait_until_acknowledged(rabbitmqctl, "default")  # its ack follows that log line


@pytest.fixture
def graceful_worker(own_worker):
    own_worker.env = {**own_worker.env, "JOBS_CANCEL_GRACE_SECONDS": str(GRACE)}
    return own_worker.start()


def test_a_body_that_never_checks_is_stopped_after_the_grace_period_and_ends_cancelled_once(
    graceful_worker, tmp_path, rabbitmqctl
):
    path = str(tmp_path / "steps")
    job = enqueue(tasks.steps, path, 600, 0.05, "never")  # 30 s if never stopped
    _running(job.id, path)
    pool_before = set(graceful_worker.pool_pids())

    assert jobs.cancel(job.id, by="operator") == "stopping"

    job = finished(job.id, timeout=GRACE + 20)
    assert job.state == JobState.CANCELLED
    assert job.attempts == 1 and job.lost_runs == 0 and job.retries == 0
    effects = _stamped(path)
    assert all(at <= job.finished_at for _, at in effects), "a side effect after the stop"
    # It ran on through its grace period, then its pool process was terminated.
    assert max(at for _, at in effects) > job.cancel_requested_at + datetime.timedelta(seconds=GRACE / 2)
    log = graceful_worker.log()
    assert f"job={job.id} task=tests.steps did not stop within its grace period; killing" in log
    assert f"job={job.id} task=tests.steps cancelled: its run was stopped" in log
    assert set(graceful_worker.pool_pids()) != pool_before
    _its_copy_is_acknowledged(graceful_worker, job, rabbitmqctl)
    assert not DeadLetter.objects.filter(job_id=job.id).exists()
    _the_worker_goes_on(tmp_path)
    assert len(_stamped(path)) == len(effects), "the cancelled body ran again"


def test_the_relay_asks_again_to_stop_a_run_whose_worker_missed_the_stop(
    graceful_worker, tmp_path, rabbitmqctl
):
    from jobs import ledger
    from jobs.rescue import stop_ignored_cancels

    path = str(tmp_path / "steps")
    job = enqueue(tasks.steps, path, 600, 0.05, "never")
    _running(job.id, path)
    # Asked to stop while its worker was away: the ledger has the request, no worker heard it.
    assert ledger.request_stop(job.id, "operator")
    assert stop_ignored_cancels() == 0, "within twice the grace period it is not asked again"
    Job.objects.filter(pk=job.id).update(cancel_requested_at=timezone.now() - datetime.timedelta(minutes=1))

    assert stop_ignored_cancels() == 1

    job = finished(job.id)
    assert job.state == JobState.CANCELLED and job.attempts == 1
    assert stop_ignored_cancels() == 0
    _its_copy_is_acknowledged(graceful_worker, job, rabbitmqctl)


def test_cancelling_a_waiting_job_cancels_it_at_once(tmp_path):
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    job = enqueue(tasks.record, str(tmp_path / "out"), run_after=later)

    assert jobs.cancel(job.id, by="operator") == "cancelled"

    job = Job.objects.get(pk=job.id)
    assert job.state == JobState.CANCELLED
    assert job.cancel_requested_by == "operator" and job.cancel_requested_at == job.finished_at


def test_cancelling_a_finished_or_unknown_job_is_refused_with_a_sentence():
    done = Job.objects.create(task_name="tests.record", queue="default", priority=5, state=JobState.SUCCEEDED)

    with pytest.raises(
        jobs.CancelRefused, match=f"Job {done.id} is succeeded already: a finished job cannot"
    ):
        jobs.cancel(done.id)
    unknown = uuid.uuid4()
    with pytest.raises(jobs.CancelRefused, match=f"There is no job {unknown}"):
        jobs.cancel(unknown)
    with pytest.raises(jobs.CancelRefused, match="is not a job id"):
        jobs.cancel("not-an-id")
    assert Job.objects.get(pk=done.id).state == JobState.SUCCEEDED


def test_the_job_page_cancels_a_running_job_with_its_button(worker, client, tmp_path):
    path = str(tmp_path / "steps")
    job = enqueue(tasks.steps, path, 400, 0.05, "checkpoint")
    _running(job.id, path)
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_job", "change_job"]))
    client.force_login(user)
    page = reverse("admin:jobs_job_change", args=[job.id])
    assert "Cancel this job" in client.get(page).content.decode()

    response = client.post(reverse("admin:jobs_job_cancel", args=[job.id]), follow=True)

    assert "The running job was asked to stop" in response.content.decode()
    job = finished(job.id)
    assert job.state == JobState.CANCELLED and job.cancel_requested_by == "operator"
    assert "Cancel this job" not in client.get(page).content.decode()
    refused = client.post(reverse("admin:jobs_job_cancel", args=[job.id]), follow=True).content.decode()
    assert "a finished job cannot be cancelled" in refused


def test_the_job_page_button_needs_the_change_permission(client, tmp_path):
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    job = enqueue(tasks.record, str(tmp_path / "out"), run_after=later)
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_job"))
    client.force_login(viewer)

    assert (
        "Cancel this job" not in client.get(reverse("admin:jobs_job_change", args=[job.id])).content.decode()
    )
    assert client.post(reverse("admin:jobs_job_cancel", args=[job.id])).status_code == 403
    assert Job.objects.get(pk=job.id).state == JobState.PENDING


def test_a_copy_of_a_job_whose_stopped_run_was_not_recorded_ends_it_cancelled_without_running(
    worker, tmp_path
):
    # As the ledger reads when the worker stopped the run but could not write its end:
    # started, asked to stop, no live lease. The next copy (the rescue sends one) ends it.
    from django.utils import timezone

    from jobs.broker.publisher import publish_jobs

    path = str(tmp_path / "out")
    job = Job.objects.create(
        task_name="tests.record", args=[path], queue="default", priority=5, state=JobState.STARTED, attempts=1,
        started_at=timezone.now(), cancel_requested_at=timezone.now(), cancel_requested_by="operator",
    )  # fmt: skip

    publish_jobs([job])

    job = finished(job.id)
    assert job.state == JobState.CANCELLED and job.attempts == 1 and job.lost_runs == 0
    assert tasks.lines(path) == []
    wait_for(
        lambda: f"job={job.id} task=tests.record cancelled: its run was stopped" in worker.log(),
        message="log",
    )


def test_retrying_a_dead_job_forgets_its_earlier_cancel_request_and_progress(tmp_path, monkeypatch):
    from django.utils import timezone

    from jobs import services

    monkeypatch.setattr(services, "publish_jobs", lambda jobs, **kw: None)  # no worker here
    job = Job.objects.create(
        task_name="tests.record", args=[str(tmp_path / "out")], queue="default", priority=5, state=JobState.DEAD,
        attempts=1, cancel_requested_at=timezone.now(), cancel_requested_by="operator", progress_done=3,
        progress_total=9, progress_message="step 3", progress_at=timezone.now(),
    )  # fmt: skip

    assert services.retry_job(job.id)

    job.refresh_from_db()
    assert job.state == JobState.PENDING
    assert (job.cancel_requested_at, job.cancel_requested_by) == (None, "")
    assert (job.progress_done, job.progress_total, job.progress_message, job.progress_at) == (
        None,
        None,
        "",
        None,
    )
