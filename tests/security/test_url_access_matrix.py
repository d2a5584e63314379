"""Who may do what on every URL of the project, from one declared table.

Every URL pattern the resolver knows is requested by six kinds of visitor, with a GET,
a POST without a CSRF token and a POST with one, and the answers are compared with
ACCESS below. A pattern the table does not list fails the test: a new view cannot
ship without someone deciding who may use it.

Outcomes: "L" is a redirect to the admin login page, "R" any other redirect, a number
the status code. The POSTs carry no form data (the CSRF token travels in its header),
so they reach the permission check of the POST path and change nothing: a delete page
shows its confirmation, a form its errors, and a form without editable fields saves
its object unchanged. Every POST without a CSRF token is a 403.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone
from django.utils.crypto import get_random_string

from emails.models import EmailTemplate, OutgoingEmail
from invoices.models import Invoice
from invoices.tests.factories import make_customer, make_invoice
from jobs.models import DeadLetter, Event, Job, JobBulkAction, JobLaunch, JobState

# Not transactional: nothing commits, so nothing is published and no worker is needed.
pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "user", "staff", "viewer", "changer", "superuser"]
ROLE_HELP = {
    "anonymous": "not logged in",
    "user": "logged in, not staff",
    "staff": "staff without any permission",
    "viewer": "staff with every view_* permission",
    "changer": "staff with every view_* and change_* permission (no add, delete or launch)",
    "superuser": "superuser",
}

# Answer profiles, one outcome per role in ROLES' order.
STAFF = "L L 200 200 200 200"  # any staff member (an admin page without a model)
VIEW = "L L 403 200 200 200"  # the model's view (or change) permission
CHANGE = "L L 403 403 200 200"  # the model's change permission
SAVED = "L L 403 403 R R"  # the change permission; the form has no editable field, so it saves
SUPERUSER = "L L 403 403 403 200"  # a permission no test role but the superuser has
NOBODY = "L L 403 403 403 403"  # the admin allows it to no one
OBJECT_REDIRECT = "L L R R R R"  # admin/<model>/<id>/ redirects staff to the change page


@dataclass(frozen=True)
class Access:
    get: str
    post: str
    obj: str | None = None  # the object (of `objects` below) whose pk fills the route's parameters
    path: str | None = None  # an explicit path, for regular-expression routes
    query: str = ""
    notes: str = field(default="", compare=False)


def model_admin(label: str, obj: str, add: str, change_post: str, delete: str) -> dict:
    """The six URLs Django's ModelAdmin adds for the model `label` ("app.model")."""
    app, model = label.split(".")
    return {
        f"admin:{app}_{model}_changelist": Access(VIEW, VIEW),
        f"admin:{app}_{model}_add": Access(add, add),
        f"admin:{app}_{model}_change": Access(VIEW, change_post, obj=obj),
        f"admin:{app}_{model}_history": Access(VIEW, VIEW, obj=obj),
        f"admin:{app}_{model}_delete": Access(delete, delete, obj=obj),
        f"admin/{app}/{model}/<path:object_id>/": Access(OBJECT_REDIRECT, OBJECT_REDIRECT, obj=obj),
    }


NO_POST = "L L 405 405 405 405"

ACCESS: dict[str, Access] = {
    # --- the admin site ---
    "admin:index": Access(STAFF, STAFF),
    "admin:login": Access("200 200 R R R R", "200 200 200 200 200 200"),
    "admin:logout": Access("R R 405 405 405 405", "R R 200 200 200 200"),
    "admin:password_change": Access(STAFF, STAFF),
    "admin:password_change_done": Access(STAFF, NO_POST),
    "admin:autocomplete": Access(
        VIEW, NO_POST, query="?app_label=invoices&model_name=invoice&field_name=customer"
    ),
    "admin:jsi18n": Access(STAFF, NO_POST),
    "admin:view_on_site": Access(
        "L L 404 404 404 404",
        "L L 404 404 404 404",
        path="/admin/r/{customer_type}/{customer}/",
        notes="no model has get_absolute_url",
    ),
    "admin:app_list": Access("L L 404 200 200 200", "L L 404 200 200 200", path="/admin/invoices/"),
    "admin/(?P<url>.*)$": Access("L L 404 404 404 404", "L L 404 404 404 404", path="/admin/no-such-page/"),
    # --- registered models ---
    # model_admin(app.model, object, add, change POST, delete); changelist, history and
    # the change page's GET need the view permission.
    **model_admin("auth.user", "target_user", SUPERUSER, CHANGE, SUPERUSER),
    "admin:auth_user_password_change": Access(CHANGE, CHANGE, obj="target_user"),
    **model_admin("auth.group", "group", SUPERUSER, CHANGE, SUPERUSER),
    **model_admin("django_celery_beat.periodictask", "periodic_task", SUPERUSER, CHANGE, SUPERUSER),
    **model_admin("django_celery_beat.clockedschedule", "clocked", SUPERUSER, CHANGE, SUPERUSER),
    **model_admin("django_celery_beat.crontabschedule", "crontab", SUPERUSER, CHANGE, SUPERUSER),
    **model_admin("django_celery_beat.solarschedule", "solar", SUPERUSER, CHANGE, SUPERUSER),
    **model_admin("django_celery_beat.intervalschedule", "interval", SUPERUSER, CHANGE, SUPERUSER),
    # The platform (jobs/admin.py).
    # A job is never deleted or written from its page: the ledger owns the row.
    **model_admin("jobs.job", "job", NOBODY, SAVED, NOBODY),
    "admin:jobs_job_launch": Access(SUPERUSER, SUPERUSER, notes="jobs.launch_job"),
    "admin:jobs_job_dashboard": Access(VIEW, VIEW),
    "admin:jobs_job_cancel": Access(
        "L L 403 403 405 405", SAVED, obj="job", notes="POST cancels (jobs.cancel)"
    ),
    **model_admin("jobs.deadletter", "dead_letter", NOBODY, SAVED, SUPERUSER),
    **model_admin("jobs.event", "event", NOBODY, CHANGE, SUPERUSER),
    **model_admin("jobs.joblaunch", "job_launch", NOBODY, NOBODY, NOBODY),
    **model_admin("jobs.jobbulkaction", "bulk_action", NOBODY, NOBODY, NOBODY),
    # Invoices.
    **model_admin("invoices.customer", "customer", SUPERUSER, CHANGE, SUPERUSER),
    **model_admin("invoices.invoice", "invoice", SUPERUSER, CHANGE, SUPERUSER),
    "admin:invoices_invoice_pdf": Access(VIEW, VIEW, obj="invoice"),
    # Emails.
    **model_admin("emails.outgoingemail", "email", NOBODY, SAVED, SUPERUSER),
    "admin:emails_outgoingemail_send_test": Access(CHANGE, CHANGE),
    # Login attempts (django-axes); unlocking is deleting an attempt.
    **model_admin("axes.accessattempt", "access_attempt", NOBODY, SAVED, SUPERUSER),
    **model_admin("axes.accesslog", "access_log", NOBODY, SAVED, SUPERUSER),
    **model_admin("axes.accessfailurelog", "access_failure_log", NOBODY, SAVED, SUPERUSER),
    # --- outside the admin ---
    "invoices:customer-invoices": Access(VIEW, "L L 403 405 405 405", obj="customer"),
    "invoices:customer-invoices-json": Access(VIEW, "L L 403 405 405 405", obj="customer"),
    "invoices:request-invoice-pdf": Access("L L 403 403 405 405", "L L 403 403 202 202", obj="invoice"),
    "health": Access("200 200 200 200 200 200", "200 200 200 200 200 200"),
    "metrics": Access("401 401 401 200 200 200", "405 405 405 405 405 405", notes="or a Bearer token"),
    "jobs:job_detail": Access(
        "401 403 403 200 200 200", "405 405 405 405 405 405", obj="job", notes="jobs.view_job"
    ),
}


def _join(prefix: str, route: str) -> str:
    # As Django's ResolverMatch.route: a regular expression's "^" is dropped when joined.
    return prefix + route.removeprefix("^")


def resolver_urls(patterns=None, prefix: str = "", namespace: str = "") -> dict[str, str]:
    """Every URL pattern the project serves: {name (namespaced), or route if unnamed: route}."""
    found: dict[str, str] = {}
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = _join(prefix, str(pattern.pattern))
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            found.update(resolver_urls(pattern.url_patterns, route, inner))
        else:
            assert isinstance(pattern, URLPattern)
            key = f"{namespace}{pattern.name}" if pattern.name else route
            assert key not in found, f"two URL patterns answer to {key}"
            found[key] = route
    return found


def key_of(path: str) -> str:
    match = resolve(path)
    return match.view_name if match.url_name else match.route


def test_the_table_lists_every_url_of_the_resolver_and_nothing_else():
    served = resolver_urls()
    unlisted = sorted(set(served) - set(ACCESS))
    stale = sorted(set(ACCESS) - set(served))
    assert not unlisted, (
        f"URLs without a declared access rule (add them to ACCESS in {__name__}): "
        + ", ".join(f"{key} ({served[key]})" for key in unlisted)
    )
    assert not stale, f"ACCESS lists URLs the project no longer has: {', '.join(stale)}"


@pytest.fixture
def objects():
    """One object of every model the admin shows, for the URLs that name one."""
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    customer = make_customer()
    invoice = make_invoice(customer, lines=1)
    Invoice.objects.filter(pk=invoice.pk).update(
        pdf=default_storage.save(f"invoices/matrix-{uuid.uuid4().hex}.pdf", ContentFile(b"%PDF-1.4\n%%EOF\n"))
    )
    job = Job.objects.create(task_name="tests.record", queue="default", priority=5, state=JobState.DEAD)
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    attempt = {"user_agent": "test", "ip_address": "198.51.100.7", "username": "someone",
               "http_accept": "*/*", "path_info": "/admin/login/"}  # fmt: skip
    return {
        "customer": customer,
        "invoice": invoice,
        "job": job,
        "dead_letter": DeadLetter.objects.create(identity=str(job.pk), job=job, task_name=job.task_name),
        "event": Event.objects.create(name="invoice.issued"),
        "job_launch": JobLaunch.objects.create(
            token=uuid.uuid4(), username="someone", task_name="tests.record", priority="normal", job=job
        ),
        "bulk_action": JobBulkAction.objects.create(username="someone", action="retry dead jobs", matched=1),
        "email": OutgoingEmail.objects.create(
            to=["a@example.com"], subject="s", template=EmailTemplate.TEST, message_id=f"<{uuid.uuid4()}@x>"
        ),
        "target_user": User.objects.create_user(f"target-{uuid.uuid4().hex[:6]}"),
        "group": Group.objects.create(name=f"group-{uuid.uuid4().hex[:6]}"),
        "interval": interval,
        "crontab": CrontabSchedule.objects.create(),
        "solar": SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4),
        "clocked": ClockedSchedule.objects.create(clocked_time=timezone.now()),
        "periodic_task": PeriodicTask.objects.create(
            name=f"task-{uuid.uuid4().hex[:6]}", task="tests.record", interval=interval
        ),
        "access_attempt": AccessAttempt.objects.create(
            **attempt, get_data="", post_data="", failures_since_start=1
        ),
        "access_log": AccessLog.objects.create(**attempt),
        "access_failure_log": AccessFailureLog.objects.create(**attempt),
    }


def path_of(key: str, access: Access, objects: dict) -> str:
    if access.path is not None:
        values = {name: obj.pk for name, obj in objects.items()}
        values["customer_type"] = ContentType.objects.get_for_model(objects["customer"]).pk
        return access.path.format(**values)
    route = resolver_urls()[key]
    if "<" in route:
        assert access.obj, f"{key} takes parameters: say which object fills them"
        route = re.sub(r"<(?:\w+:)?\w+>", str(objects[access.obj].pk), route)
    return "/" + route


def client_for(role: str) -> Client:
    client = Client(enforce_csrf_checks=True)
    if role == "anonymous":
        return client
    user = User.objects.create_user(
        f"{role}-{uuid.uuid4().hex[:6]}", is_staff=role != "user", is_superuser=role == "superuser"
    )
    if role in ("viewer", "changer"):
        prefixes = ["view_"] if role == "viewer" else ["view_", "change_"]
        user.user_permissions.set(
            p for p in Permission.objects.all() if any(p.codename.startswith(x) for x in prefixes)
        )
    client.force_login(user)
    return client


def outcome(response) -> str:
    if response.status_code in (301, 302):
        return "L" if response["Location"].startswith("/admin/login/") else "R"
    return str(response.status_code)


@pytest.mark.parametrize("key", sorted(ACCESS))
def test_access(key, objects):
    access = ACCESS[key]
    path = path_of(key, access, objects)
    assert key_of(path) == key, f"{path} is not the URL {key}: the table exercises another view"
    url = path + access.query
    expected = {"GET": dict(zip(ROLES, access.get.split(), strict=True)),
                "POST": dict(zip(ROLES, access.post.split(), strict=True))}  # fmt: skip
    wrong = []
    for role in ROLES:
        client = client_for(role)
        got = outcome(client.get(url))
        if got != expected["GET"][role]:
            wrong.append(f"GET as {role}: {got}, expected {expected['GET'][role]}")
        got = outcome(client.post(url))
        if got != "403":
            wrong.append(f"POST without a CSRF token as {role}: {got}, expected 403")
        token = get_random_string(32)  # a CSRF secret: 32 letters and digits
        client.cookies["csrftoken"] = token
        got = outcome(client.post(url, HTTP_X_CSRFTOKEN=token))
        if got != expected["POST"][role]:
            wrong.append(f"POST as {role}: {got}, expected {expected['POST'][role]}")
    if wrong:
        roles = "; ".join(f"{role} = {what}" for role, what in ROLE_HELP.items())
        pytest.fail(f"{url}:\n  " + "\n  ".join(wrong) + f"\n(roles: {roles})", pytrace=False)
