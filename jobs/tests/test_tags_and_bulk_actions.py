"""Tags given at enqueue, the admin's filters and search by tag, and actions on every
job a filter matches: counted and confirmed first, run in batches, recorded."""

import datetime

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from jobs import enqueue, enqueue_many, services
from jobs.models import Job, JobBulkAction, JobState
from jobs.services import EnqueueError
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:jobs_job_changelist")
LATER = timezone.now() + datetime.timedelta(days=1)  # pending, not published: no worker needed


def _operator(client):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_job", "change_job"]))
    client.force_login(user)
    return client


def test_tags_are_stored_at_enqueue_and_bad_ones_refused(tmp_path):
    job = enqueue(
        tasks.record, str(tmp_path / "a"), tags=["customer:7", "month-end", "customer:7"], run_after=LATER
    )
    (many,) = enqueue_many(
        tasks.record, [(str(tmp_path / "b"),)], tags=["batch/2026-12", "null"], run_after=LATER
    )

    assert Job.objects.get(pk=job.id).tags == ["customer:7", "month-end"]
    assert Job.objects.get(pk=many.id).tags == ["batch/2026-12", "null"]  # the text, not NULL
    for tags, error in [
        ("customer:7", "tags must be a list of strings"),
        (["has space"], "must be 1 to 64 letters, digits"),
        (["x" * 65], "must be 1 to 64"),
        ([7], "a tag must be a string"),
        ([f"t{i}" for i in range(11)], "at most 10 tags"),
        (["a,b"], "must be 1 to 64"),
    ]:
        with pytest.raises(EnqueueError, match=error):
            enqueue(tasks.record, "x", tags=tags)
        with pytest.raises(EnqueueError, match=error):
            enqueue_many(tasks.record, [("x",)], tags=tags)
    assert Job.objects.count() == 2


def test_the_admin_filters_and_searches_by_tag_error_class_and_age(client, tmp_path):
    cache.delete_many(["jobs:common-tags:30", "jobs:error-classes"])  # read at most once a minute
    tagged = enqueue(tasks.record, str(tmp_path / "a"), tags=["customer:7"], run_after=LATER)
    other = enqueue(tasks.record, str(tmp_path / "b"), tags=["customer:8"], run_after=LATER)
    Job.objects.filter(pk=other.id).update(
        state=JobState.CANCELLED, last_error_class="jobs.errors.JobExpired"
    )
    _operator(client)

    by_filter = client.get(CHANGELIST, {"tag": "customer:7"}).content.decode()
    by_search = client.get(CHANGELIST, {"q": "tag:customer:8"}).content.decode()
    by_age = client.get(CHANGELIST, {"age": "older"}).content.decode()
    by_class = client.get(CHANGELIST, {"last_error_class": "jobs.errors.JobExpired"}).content.decode()

    assert str(tagged.id) in by_filter and str(other.id) not in by_filter
    assert str(other.id) in by_search and str(tagged.id) not in by_search
    assert str(tagged.id) not in by_age, "a job of now is not older than a week"
    assert str(other.id) in by_class and str(tagged.id) not in by_class, "the tagged job has no error"
    assert "customer:7" in client.get(CHANGELIST).content.decode()  # offered in the tag filter


def _post_across(client, action: str, filters: dict, confirm: bool):
    page_ids = list(Job.objects.values_list("pk", flat=True)[:5])
    data = {
        "action": action,
        "select_across": "1",
        "index": "0",
        "_selected_action": [str(i) for i in page_ids],
    }
    if confirm:
        data["confirm"] = "yes"
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    return client.post(f"{CHANGELIST}?{query}", data, follow=True)


def test_retry_every_dead_job_a_filter_matches_is_confirmed_then_batched_and_recorded(
    client, tmp_path, monkeypatch, settings
):
    settings.JOBS_BULK_ACTION_BATCH = 1000
    published = []
    monkeypatch.setattr(services, "publish_jobs", lambda jobs, **kw: published.append([j.id for j in jobs]))
    enqueue_many(tasks.record, [(str(tmp_path / "m"),)] * 3000, tags=["month-end"], run_after=LATER)
    enqueue_many(tasks.record, [(str(tmp_path / "o"),)] * 5, run_after=LATER)
    Job.objects.update(state=JobState.DEAD, finished_at=timezone.now())
    _operator(client)

    page = _post_across(client, "retry_dead_jobs", {"tag": "month-end"}, confirm=False).content.decode()

    assert "on <strong>3000</strong> job(s)" in page
    assert not Job.objects.exclude(state=JobState.DEAD).exists(), "nothing happens before the confirmation"

    done = _post_across(client, "retry_dead_jobs", {"tag": "month-end"}, confirm=True).content.decode()

    assert "3000 dead job(s) retried. (of 3000 matched)" in done
    assert Job.objects.filter(tags__contains=["month-end"], state=JobState.PENDING).count() == 3000
    assert Job.objects.filter(tags=[], state=JobState.DEAD).count() == 5
    assert [len(batch) for batch in published] == [1000, 1000, 1000]
    assert len({i for batch in published for i in batch}) == 3000
    (record,) = JobBulkAction.objects.all()
    assert (record.username, record.action, record.matched, record.done) == (
        "operator",
        "retry dead jobs",
        3000,
        3000,
    )
    assert record.filters == "tag=month-end" and record.finished_at is not None


def test_cancel_every_waiting_job_a_filter_matches(client, tmp_path, settings):
    settings.JOBS_BULK_ACTION_BATCH = 700
    enqueue_many(tasks.record, [(str(tmp_path / "w"),)] * 2500, tags=["customer:7"], run_after=LATER)
    finished = enqueue(tasks.record, str(tmp_path / "s"), tags=["customer:7"], run_after=LATER)
    Job.objects.filter(pk=finished.id).update(state=JobState.SUCCEEDED)
    untagged = enqueue(tasks.record, str(tmp_path / "u"), run_after=LATER)
    _operator(client)

    page = _post_across(client, "cancel_jobs", {"tag": "customer:7"}, confirm=False).content.decode()
    assert "on <strong>2500</strong> job(s)" in page
    done = _post_across(client, "cancel_jobs", {"tag": "customer:7"}, confirm=True).content.decode()

    assert "2500 waiting job(s) cancelled. (of 2500 matched)" in done
    cancelled = Job.objects.filter(state=JobState.CANCELLED)
    assert cancelled.count() == 2500 and set(cancelled.values_list("cancel_requested_by", flat=True)) == {
        "operator"
    }
    assert Job.objects.get(pk=finished.id).state == JobState.SUCCEEDED
    assert Job.objects.get(pk=untagged.id).state == JobState.PENDING
    assert JobBulkAction.objects.get().done == 2500
