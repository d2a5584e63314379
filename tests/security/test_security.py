"""Security: permissions and CSRF on every acting admin page, secrets kept out of
logs, error pages and Flower, and a clean `check --deploy`."""

import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

import jobs
from emails import services as email_services
from emails.models import EmailTemplate
from invoices.tests.factories import make_invoice
from jobs.models import Job, JobState
from jobs.testing import processes, wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(settings.BASE_DIR)

# Every admin action that starts or changes jobs: (changelist url name, action, model permission it needs).
ACTING_ACTIONS = [
    ("admin:jobs_job_changelist", "retry_dead_jobs", "change_job"),
    ("admin:jobs_job_changelist", "cancel_jobs", "change_job"),
    ("admin:jobs_job_changelist", "resend_queued_jobs", "change_job"),
    ("admin:jobs_deadletter_changelist", "replay", "change_deadletter"),
    ("admin:jobs_deadletter_changelist", "discard", "change_deadletter"),
    ("admin:invoices_invoice_changelist", "issue", "change_invoice"),
    ("admin:invoices_invoice_changelist", "generate_pdf", "change_invoice"),
    ("admin:invoices_invoice_changelist", "generate_pdf_and_email", "change_invoice"),
    ("admin:invoices_invoice_changelist", "mark_paid", "change_invoice"),
    ("admin:invoices_invoice_changelist", "refresh_cached_lists", "change_invoice"),
    ("admin:emails_outgoingemail_changelist", "resend", "change_outgoingemail"),
]


def staff(*codenames) -> User:
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.mark.parametrize(("changelist", "action", "permission"), ACTING_ACTIONS)
def test_acting_admin_actions_need_the_permission_a_post_and_csrf(
    changelist, action, permission, reliability
):
    invoice = make_invoice(lines=1)
    job = Job.objects.create(task_name="tests.record", queue="default", priority=5, state=JobState.DEAD)
    selected = {"admin:invoices_invoice_changelist": invoice.pk, "admin:jobs_job_changelist": job.pk}.get(
        changelist, 1
    )
    form = {"action": action, "_selected_action": [selected]}
    view_only = permission.replace("change_", "view_")
    jobs_before = Job.objects.count()

    viewer = Client()
    viewer.force_login(staff(view_only))
    assert viewer.post(reverse(changelist), form).status_code == 403

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff(view_only, permission))
    assert strict.post(reverse(changelist), form).status_code == 403, "no CSRF token, no action"
    assert strict.get(reverse(changelist), form).status_code in (200, 302), (
        "a GET lists (or redirects), never acts"
    )

    assert Job.objects.count() == jobs_before and Job.objects.get(pk=job.pk).state == JobState.DEAD
    reliability.record(
        "S3", "Admin actions that start or change jobs need the permission, a POST and CSRF",
        f"{len(ACTING_ACTIONS)} actions, each POSTed by staff without the model's change permission, "
        "and by permitted staff without a CSRF token; then sent as a GET",
        "403 without the permission; 403 without a CSRF token; a GET only lists. No job was created or "
        "changed. The launcher, the test-email form and the PDF download check their permissions too",
        "test_acting_admin_actions_need_the_permission_a_post_and_csrf",
    )  # fmt: skip


def test_other_acting_pages_refuse_without_permission():
    client = Client()
    client.force_login(staff("view_job", "view_outgoingemail"))
    assert client.get(reverse("admin:jobs_job_launch")).status_code == 403
    assert (
        client.post(reverse("admin:emails_outgoingemail_send_test"), {"to": "x@example.com"}).status_code
        == 403
    )
    anonymous = Client()
    assert (
        anonymous.get(reverse("admin:invoices_invoice_pdf", args=[1])).status_code == 302
    )  # to the login page
    assert anonymous.post(reverse("invoices:request-invoice-pdf", args=[1])).status_code == 302


@pytest.fixture
def secret_broker_user(broker_url, rabbitmqctl):
    """A RabbitMQ user with a one-off password, on the run's vhost; deleted afterwards."""
    name, password = f"jobs-secret-{uuid.uuid4().hex[:6]}", f"Brk-{secrets.token_hex(12)}"
    vhost = broker_url.rsplit("/", 1)[1]
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
        yield name, password, f"amqp://{name}:{password}@127.0.0.1:{rabbitmqctl.amqp_port}/{vhost}"
    finally:
        try:
            rabbitmqctl("delete_user", name)
        except RuntimeError:
            pass


def test_no_secret_appears_in_logs_error_pages_or_flower(
    own_worker, worker_env, secret_broker_user, smtp, tmp_path, client, reliability
):
    _, broker_password, broker = secret_broker_user
    secret_key, smtp_password = f"SK-{secrets.token_hex(24)}", f"Smtp-{secrets.token_hex(12)}"
    env = {**worker_env, "CELERY_BROKER_URL": broker, "DJANGO_SECRET_KEY": secret_key,
           "EMAIL_HOST_PASSWORD": smtp_password, "DJANGO_DEBUG": "0"}  # fmt: skip
    own_worker.env = env
    own_worker.start()
    with processes.flower(env, tmp_path / "flower.log", "ops:flower-pass") as base:
        auth = ("ops", "flower-pass")
        failing = jobs.enqueue(tasks.fail, str(tmp_path / "f"))
        ok = jobs.enqueue(tasks.record, str(tmp_path / "ok"))
        email = email_services.queue_email(
            to=["a@example.com"], subject="s", template=EmailTemplate.TEST, context={"requested_by": "t"}
        )
        for job_id in (failing.id, ok.id, email.job_id):
            wait_for(lambda j=job_id: Job.objects.get(pk=j).is_finished, message="the jobs")
        wait_for(lambda: str(ok.id) in requests.get(f"{base}/api/tasks", auth=auth, timeout=5).text,
                 timeout=30, interval=0.5, message="Flower to see the jobs")  # fmt: skip
        pages = [
            requests.get(f"{base}{path}", auth=auth, timeout=10).text
            for path in ("/", "/workers", "/tasks", "/broker", "/api/workers?refresh=1", "/api/tasks",
                         f"/api/task/info/{failing.id}")
        ]  # fmt: skip
    own_worker.stop()
    error_page = _server_error_page(client)

    exposed = {
        "worker log": own_worker.log_path.read_text(errors="replace"),
        "Flower log": (tmp_path / "flower.log").read_text(errors="replace"),
        "Flower pages and API": "\n".join(pages),
        "error page": error_page,
    }
    for secret in (broker_password, secret_key, smtp_password):
        for where, text in exposed.items():
            assert secret not in text, f"a secret appears in the {where}"
    assert "Traceback" in exposed["worker log"], "the failing job's traceback was logged (and checked)"
    assert "CELERY_BROKER_URL" in pages[4] and ":********@" in pages[4], "Flower shows the broker URL, masked"
    reliability.record(
        "S4", "No secret in logs, error pages or Flower",
        "worker and Flower run with a one-off RabbitMQ user and password, a one-off SECRET_KEY and SMTP "
        "password; a failing job, a succeeding job and an email run; Flower's pages and API are fetched; "
        "a view raises with DEBUG off",
        "none of the three secrets appears in the worker log (with its traceback), the Flower log, "
        "7 Flower pages/API answers, or the 500 page. (Found and fixed: Celery left the namespaced "
        "CELERY_BROKER_URL unmasked in the worker `conf` Flower shows; jobs/remote_control.py masks every URL.)",
        "test_no_secret_appears_in_logs_error_pages_or_flower",
    )  # fmt: skip


def _server_error_page(client) -> str:
    from django.test import override_settings

    with override_settings(ROOT_URLCONF="tests.security.failing_urls", DEBUG=False):
        client.raise_request_exception = False
        response = client.get("/boom/")
    assert response.status_code == 500
    return response.content.decode()


def test_check_deploy_is_clean_with_production_settings(reliability):
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "jobs.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    reliability.record(
        "S5", "`manage.py check --deploy` with production settings",
        "DJANGO_DEBUG=0, a 50-byte random DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS set, `--fail-level WARNING`",
        "“System check identified no issues (0 silenced).”",
        "test_check_deploy_is_clean_with_production_settings",
    )  # fmt: skip


def test_the_security_docs_say_guest_is_for_development_and_how_to_make_a_least_privilege_user(reliability):
    docs = (ROOT / "docs" / "security.md").read_text()
    assert "guest` user is for development only" in docs
    assert "rabbitmqctl add_user jobs" in docs and "rabbitmqctl set_permissions -p jobs jobs" in docs
    assert "docs/security.md" in (ROOT / "README.md").read_text()
    reliability.record(
        "S7", "RabbitMQ credentials in the docs",
        "docs/security.md",
        "says the guest user is for development only and shows how to create a user limited to its own vhost",
        "test_the_security_docs_say_guest_is_for_development_and_how_to_make_a_least_privilege_user",
    )  # fmt: skip
