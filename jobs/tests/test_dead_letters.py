"""The dead-letter keeper, replay and discard, with a real worker, keeper and RabbitMQ."""

import json
import threading
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from kombu import Exchange, Producer

from jobs import dead_letters, enqueue
from jobs.broker.publisher import publish_jobs
from jobs.models import DeadLetter, DeadLetterState, Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def letter_of(identity, timeout=30.0) -> DeadLetter:
    return wait_for(
        lambda: DeadLetter.objects.filter(identity=str(identity)).first(),
        timeout,
        message=f"dead letter {identity}",
    )


def publish_raw(platform, body, headers, content_type="application/json", routing_key="default"):
    with platform.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=Exchange("jobs", type="direct"),
            routing_key=routing_key,
            content_type=content_type,
            content_encoding="utf-8",
            headers=headers,
            delivery_mode=2,
        )


def test_a_dead_job_becomes_a_dead_letter_with_its_error_queue_and_body(worker, keeper, tmp_path):
    job = enqueue(tasks.fail, str(tmp_path / "out"))

    letter = letter_of(job.id)

    assert letter.job_id == job.id
    assert letter.task_name == "tests.fail"
    assert letter.queue == "default" and letter.routing_key == "default"
    assert letter.reason == "rejected" and letter.death_count == 1
    assert letter.error == "ValueError: this job always fails"
    assert json.loads(letter.body)[0] == [str(tmp_path / "out")]
    assert letter.state == DeadLetterState.OPEN


def test_messages_the_ledger_never_knew_are_kept_too(worker, keeper, platform, tmp_path):
    unknown_id, foreign_id, broken_id = (str(uuid.uuid4()) for _ in range(3))
    publish_raw(platform, json.dumps([[], {}, {}]), {"task": "no.such.task", "id": unknown_id, "lang": "py"})
    publish_raw(platform, json.dumps({"order": 7}), {"message-source": "billing-legacy", "id": foreign_id})
    publish_raw(platform, b"{not json", {"task": "tests.record", "id": broken_id, "lang": "py"})

    assert "No job is registered as 'no.such.task'" in letter_of(unknown_id).error
    assert "Not a task message" in letter_of(foreign_id).error
    broken = letter_of(broken_id)
    assert "could not be decoded as JSON" in broken.error
    assert broken.body == "{not json"
    assert letter_of(unknown_id).job is None
    healthy = enqueue(tasks.record, str(tmp_path / "healthy"))
    wait_for(
        lambda: Job.objects.filter(pk=healthy.id, state=JobState.SUCCEEDED).exists(), message="a valid job"
    )


def test_a_ledger_job_whose_message_workers_cannot_run_ends_dead(worker, keeper):
    job = Job.objects.create(task_name="renamed.in.a.deploy", queue="default", priority=5)
    publish_jobs([job], force=True)

    letter = letter_of(job.id)

    job.refresh_from_db()
    assert job.state == JobState.DEAD
    assert "No job is registered as 'renamed.in.a.deploy'" in job.last_error
    assert letter.job_id == job.id


def test_replay_runs_a_new_attempt_of_the_same_job(worker, keeper, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.fail_once, path)
    letter = letter_of(job.id)

    dead_letters.replay(letter.pk, by="ops")

    done = wait_for(
        lambda: Job.objects.filter(pk=job.id, state=JobState.SUCCEEDED).first(), message="the replay"
    )
    assert done.attempts == 2
    assert tasks.lines(path) == ["fail", "ok"]
    letter.refresh_from_db()
    assert (
        letter.state == DeadLetterState.REPLAYED and letter.resolved_by == "ops" and letter.replay_count == 1
    )


def test_two_concurrent_replays_give_one_new_attempt(worker, keeper, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.fail_once, path)
    letter = letter_of(job.id)
    outcomes = []
    barrier = threading.Barrier(2)

    def replay():
        barrier.wait()
        try:
            dead_letters.replay(letter.pk, by=threading.current_thread().name)
            outcomes.append("replayed")
        except dead_letters.ReplayError as exc:
            outcomes.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=replay, name=f"op{n}") for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes)[1] == "replayed" and "already replayed" in sorted(outcomes)[0]
    wait_for(lambda: Job.objects.filter(pk=job.id, state=JobState.SUCCEEDED).exists(), message="the replay")
    assert Job.objects.get(pk=job.id).attempts == 2
    assert tasks.lines(path) == ["fail", "ok"]


def test_replay_of_a_foreign_message_republishes_it_as_it_was(worker, keeper, platform):
    foreign_id = str(uuid.uuid4())
    publish_raw(platform, json.dumps({"order": 7}), {"id": foreign_id})
    letter = letter_of(foreign_id)

    dead_letters.replay(letter.pk, by="ops")

    # Workers reject it again: a second death of the same message, a new open row.
    again = wait_for(
        lambda: DeadLetter.objects.filter(identity=foreign_id, state=DeadLetterState.OPEN).first(),
        message="the second death",
    )
    assert again.pk != letter.pk and json.loads(again.body) == {"order": 7}
    assert again.queue == "default"
    letter.refresh_from_db()
    assert letter.state == DeadLetterState.REPLAYED


def test_discard_keeps_who_and_when(keeper, worker, tmp_path):
    job = enqueue(tasks.fail, str(tmp_path / "out"))
    letter = letter_of(job.id)

    assert dead_letters.discard(letter.pk, by="ops")
    assert not dead_letters.discard(letter.pk, by="someone else")

    letter.refresh_from_db()
    assert letter.state == DeadLetterState.DISCARDED and letter.resolved_by == "ops" and letter.resolved_at
    with pytest.raises(dead_letters.ReplayError, match="already discarded by ops"):
        dead_letters.replay(letter.pk, by="ops")


def test_admin_lists_shows_and_replays_with_permission(worker, keeper, client, tmp_path):
    path = str(tmp_path / "out")
    job = enqueue(tasks.fail_once, path)
    letter = letter_of(job.id)
    client.force_login(User.objects.create_superuser("boss", password="pw"))

    listing = client.get(
        reverse("admin:jobs_deadletter_changelist"), {"state__exact": "open"}
    ).content.decode()
    detail = client.get(reverse("admin:jobs_deadletter_change", args=[letter.pk])).content.decode()
    response = client.post(
        reverse("admin:jobs_deadletter_changelist"),
        {"action": "replay", "_selected_action": [letter.pk]},
        follow=True,
    )

    assert "tests.fail_once" in listing
    assert "ValueError: first attempt fails" in detail and str(job.id) in detail
    assert "1 dead letter(s) replayed." in response.content.decode()
    wait_for(lambda: Job.objects.filter(pk=job.id, state=JobState.SUCCEEDED).exists(), message="the replay")


def test_command_lists_replays_by_queue_and_discards(worker, keeper, tmp_path, capsys):
    first = enqueue(tasks.fail_once, str(tmp_path / "a"))
    second = enqueue(tasks.fail_once, str(tmp_path / "b"))
    third = enqueue(tasks.fail, str(tmp_path / "c"))
    letters = [letter_of(job.id) for job in (first, second, third)]

    call_command("dead_letters", "list")
    listed = capsys.readouterr().out
    call_command("dead_letters", "--by", "cli:test", "discard", str(letters[2].pk))
    call_command("dead_letters", "--by", "cli:test", "replay", "--all", "--queue", "default")
    replayed = capsys.readouterr().out

    assert all(str(letter.pk) in listed for letter in letters)
    assert "2 replayed, 0 skipped" in replayed
    for job in (first, second):
        wait_for(
            lambda job=job: Job.objects.filter(pk=job.id, state=JobState.SUCCEEDED).exists(),
            message="replays",
        )
    assert DeadLetter.objects.get(pk=letters[2].pk).resolved_by == "cli:test"
