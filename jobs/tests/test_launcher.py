"""The admin job launcher: typed forms, permissions, opt-in jobs, parameters checked
against type hints."""

import re
import typing
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from jobs import launcher
from jobs.models import Job, JobLaunch, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

LAUNCH = reverse("admin:jobs_job_launch")


def operator(*codenames) -> User:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def test_launcher_starts_a_job_from_a_typed_form_audited_and_once(worker, client, tmp_path):
    client.force_login(operator("launch_job", "view_job"))
    path = str(tmp_path / "out")

    page = client.get(LAUNCH, {"task": "tests.record"})
    assert page.status_code == 200
    assert Job.objects.count() == 0, "a GET never starts a job"
    token = re.search(r'name="token" value="([0-9a-f-]+)"', page.content.decode()).group(1)
    form = {
        "task": "tests.record",
        "param_path": path,
        "param_value": "by-hand",
        "priority": "urgent",
        "token": token,
    }

    first = client.post(LAUNCH, form)
    second = client.post(LAUNCH, form)  # the double submit

    assert first.status_code == second.status_code == 302
    job = Job.objects.get()
    assert first["Location"] == second["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert job.priority == 9 and job.kwargs == {"path": path, "value": "by-hand"}
    launch = JobLaunch.objects.get()
    assert launch.username == "operator" and launch.job_id == job.id and launch.task_name == "tests.record"
    wait_for(
        lambda: Job.objects.filter(pk=job.pk, state=JobState.SUCCEEDED).exists(), message="the launched job"
    )
    assert tasks.lines(path) == ["by-hand"]


def test_launcher_validates_parameters_by_type(client):
    client.force_login(operator("launch_job", "view_job"))
    page = client.get(LAUNCH, {"task": "tests.limited"}).content.decode()
    token = re.search(r'name="token" value="([0-9a-f-]+)"', page).group(1)

    response = client.post(
        LAUNCH,
        {
            "task": "tests.limited",
            "param_path": "/tmp/x",
            "param_n": "seven",
            "priority": "normal",
            "token": token,
        },
    )

    assert response.status_code == 200 and "Enter a whole number." in response.content.decode()
    assert Job.objects.count() == 0


def test_launcher_needs_its_permission(client):
    client.force_login(operator("view_job", "change_job"))
    assert client.get(LAUNCH).status_code == 403
    assert client.post(LAUNCH, {"task": "tests.record"}).status_code == 403
    assert Job.objects.count() == 0


def _launch(client, task: str, **params):
    form = {"task": task, "priority": "normal", "token": str(uuid.uuid4())}
    form.update({f"param_{name}": value for name, value in params.items()})
    return client.post(LAUNCH, form)


def test_launcher_offers_and_accepts_only_jobs_that_opt_in(client):
    client.force_login(operator("launch_job", "view_job"))
    page = client.get(LAUNCH).content.decode()
    offered = set(re.findall(r'<option value="([^"]+)"', page))

    assert {"invoices.generate_pdf", "emails.send_overdue_reminders", "jobs.invalidate_cache"} <= offered
    assert {"tests.record", "tests.limited"} <= offered
    internal = {"emails.send", "emails.on_invoice_issued", "tests.subscriber_ok",
                "invoices.on_issued.generate_pdf", "invoices.on_issued.refresh_lists", "bench.noop"}  # fmt: skip
    assert not offered & internal
    assert offered == set(launcher.launchable_tasks())

    for task in ["emails.send", "tests.subscriber_ok", "celery.backend_cleanup", "no.such.job"]:
        response = _launch(client, task)
        assert response.status_code == 400, task
        assert f"Job &#x27;{task}&#x27; cannot be launched from the admin" in response.content.decode()
        assert client.get(LAUNCH, {"task": task}).status_code == 400
    assert Job.objects.count() == JobLaunch.objects.count() == 0


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ('["a\\u0000b"]', "holds a NUL character"),
        ('["\\ud800"]', "holds a lone surrogate"),
        ('{"a\\u0000": 1}', "The key 'a\\x00' at the top level holds a NUL character"),
        ("[" * 2000 + "]" * 2000, "nest deeper than 32 levels"),
        ("[" * 40 + "]" * 40, "nest deeper than 32 levels"),
        ('{"not": "a list"}', "Expected list[str], got an object."),
        ('["ok", 7]', "At [1]: expected str, got a whole number."),
        ("[1", "Enter a valid JSON."),
    ],
    ids=["NUL", "surrogate", "NUL in a key", "2000 deep", "40 deep", "object", "int in a list", "not JSON"],
)
def test_launcher_refuses_bad_json_with_a_form_error(client, keys, error):
    client.force_login(operator("launch_job", "view_job"))

    response = _launch(client, "jobs.invalidate_cache", keys=keys)

    assert response.status_code == 200
    page = response.content.decode()
    assert error.replace("'", "&#x27;") in page, page[page.find("errorlist") - 200 :][:600]
    assert Job.objects.count() == JobLaunch.objects.count() == 0


def test_launcher_refuses_a_nul_in_a_text_parameter_with_a_form_error(client):
    client.force_login(operator("launch_job", "view_job"))

    response = _launch(client, "tests.record", path="/tmp/a\x00b")

    assert response.status_code == 200 and "Null characters are not allowed." in response.content.decode()
    assert Job.objects.count() == 0


def test_launcher_launches_json_that_fits_the_type_hint(worker, client):
    client.force_login(operator("launch_job", "view_job"))

    response = _launch(client, "jobs.invalidate_cache", keys='["customer:1", "émoji \\ud83d\\ude00"]')

    assert response.status_code == 302
    job = Job.objects.get()
    assert job.kwargs == {"keys": ["customer:1", "émoji \U0001f600"]}
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.SUCCEEDED).exists(), message="the job")


@pytest.mark.parametrize(
    ("hint", "value", "problem"),
    [
        (list[str], ["a", "b"], None),
        (list[str], {"not": "a list"}, "Expected list[str], got an object."),
        (list[int], [1, True], "At [1]: expected int, got true/false."),
        (list[float], [1, 2.5], None),
        (dict[str, int], {"a": 1}, None),
        (dict[str, int], {"a": "1"}, "At ['a']: expected int, got text."),
        (dict[str, list[int]], {"a": [1, "x"]}, "At ['a'][1]: expected int, got text."),
        (dict[int, str], {"1": "a"}, "JSON object keys are text"),
        (tuple[int, str], [1, "a"], None),
        (tuple[int, str], [1, "a", 3], "(2 items), got 3 item(s)"),
        (tuple[int, ...], [1, 2, 3], None),
        (tuple[int, ...], [1, None], "At [1]: expected int, got null."),
        (typing.Optional[list[str]], None, None),  # noqa: UP045 - the typing spelling is what is tested
        (typing.Optional[list[str]], [3], "At [0]: expected str, got a whole number."),  # noqa: UP045
        (list[str] | None, "x", "Expected list[str], got text."),
        (int | str, 1.5, "Expected int | str, got a number."),
        (int | str | None, [1], "Expected int | str | None, got a list."),
        (list[dict[str, tuple[int, int] | None]], [{"a": None, "b": [1, 2]}], None),
        (list[dict[str, tuple[int, int] | None]], [{"a": [1]}], "At [0]['a']: expected tuple[int, int] (2"),
        (typing.Literal["a", "b"], "c", "Expected one of 'a', 'b', got text."),
        (typing.Any, {"anything": [1]}, None),
        (None, {"no": "hint"}, None),
        (set[int], [1], "cannot check values of type set[int]"),
    ],
)
def test_json_values_are_checked_against_type_hints(hint, value, problem):
    found = launcher.type_problem(value, hint)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found
