"""Progress of a running job (JobTask.progress): written to its row at most about once a
second whatever the body's rate, the latest report when it ends; shown by the admin and
by `GET /api/jobs/<id>`."""

import time

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from jobs import enqueue
from jobs.models import Job, JobState
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def _client_with(client, *codenames):
    user = User.objects.create_user(f"u{len(codenames)}", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def test_progress_lands_on_the_row_about_once_a_second_and_the_api_and_admin_show_it(
    worker, client, tmp_path
):
    api = _client_with(client, "view_job")
    job = enqueue(tasks.progressing, str(tmp_path / "out"), 300, 0.01)  # 300 reports in about 3 s
    url = reverse("jobs:job_detail", args=[job.id])

    writes, done_while_running, started = set(), [], time.monotonic()
    while time.monotonic() - started < 30:
        body = api.get(url).json()
        if body["progress"] is not None and body["state"] == JobState.STARTED:
            writes.add(body["progress"]["updated_at"])
            done_while_running.append(body["progress"]["done"])
        if body["finished"]:
            break
        time.sleep(0.02)
    final = api.get(url).json()

    assert final["state"] == JobState.SUCCEEDED and final["result"] == 300
    assert final["progress"]["done"] == 300 and final["progress"]["total"] == 300  # the latest, at the end
    assert final["progress"]["percent"] == 100.0 and final["progress"]["message"] == "step 300 of 300"
    run_seconds = final["duration_ms"] / 1000
    # Seen part-way while it ran (a poll may also catch the last report, written just
    # before the run's end).
    assert any(0 < done < 300 for done in done_while_running), done_while_running
    # 300 reports, but only about one write a second (the first report is written at once).
    assert 2 <= len(writes) <= run_seconds + 2, (len(writes), run_seconds)
    changelist = api.get(reverse("admin:jobs_job_changelist")).content.decode()
    assert '<progress max="100" value="100.0"' in changelist and "step 300 of 300" in changelist
    page = api.get(reverse("admin:jobs_job_change", args=[job.id])).content.decode()
    assert "300 / 300 (100%)" in page


def test_the_api_says_what_it_needs_and_what_it_lacks(client):
    job = Job.objects.create(task_name="tests.record", queue="default", priority=5, state=JobState.QUEUED)
    url = reverse("jobs:job_detail", args=[job.id])

    assert client.get(url).status_code == 401
    _client_with(client)
    assert client.get(url).json() == {"error": "You need the jobs.view_job permission."}
    _client_with(client, "view_job")
    body = client.get(url).json()
    assert body["state"] == "queued" and body["progress"] is None and body["finished"] is False
    missing = reverse("jobs:job_detail", args=["00000000-0000-0000-0000-000000000000"])
    assert client.get(missing).status_code == 404
    assert client.post(url).status_code == 405


@pytest.mark.parametrize(
    ("args", "error"),
    [(("3",), "done must be a count"), ((-1,), "done must be a count"), ((1, "9"), "total must be None"),
     ((1, 2, 3), "message must be text")],
)  # fmt: skip
def test_bad_progress_is_a_clear_error(args, error):
    with pytest.raises(ValueError, match=error):
        tasks.progressing.progress(*args)
