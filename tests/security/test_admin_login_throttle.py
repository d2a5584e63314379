"""The admin login locks out after repeated wrong passwords (django-axes).

AXES_FAILURE_LIMIT wrong passwords for one username from one address lock that
username out from that address; the right password is then refused with a sentence
that says so, until an operator resets the lock (`manage.py axes_reset`) or the
cool-off (AXES_COOLOFF_MINUTES) has passed.
"""

import datetime
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
PASSWORD = "a-long-test-password"


@pytest.fixture
def operator(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, for the test
    return User.objects.create_superuser("operator", "operator@example.com", PASSWORD)


def log_in(client: Client, password: str, username: str = "operator", address: str = "198.51.100.7"):
    return client.post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def lock_out(client: Client) -> None:
    for _ in range(getattr(settings, "AXES_FAILURE_LIMIT", 5)):
        assert not logged_in(log_in(client, "wrong-password"))


def assert_refused_as_locked(response) -> None:
    assert not logged_in(response), "the right password logged in despite the lockout"
    assert response.status_code == 429
    text = response.content.decode()
    assert "too many failed login attempts" in text.lower(), text[:500]
    assert "15 minutes" in text, text[:500]


def test_wrong_passwords_lock_the_login_and_an_operator_reset_unlocks_it(operator):
    client = Client()
    assert not logged_in(log_in(client, "wrong-password")), "a wrong password is refused"

    lock_out(client)
    assert_refused_as_locked(log_in(client, PASSWORD))
    assert_refused_as_locked(log_in(Client(), PASSWORD)), "a new session is locked out too"

    call_command("axes_reset", verbosity=0)
    assert logged_in(log_in(Client(), PASSWORD))


def test_the_lock_ends_after_the_cool_off(operator):
    from axes.models import AccessAttempt

    client = Client()
    lock_out(client)
    assert_refused_as_locked(log_in(client, PASSWORD))

    cool_off = settings.AXES_COOLOFF_TIME
    assert cool_off == datetime.timedelta(minutes=15)
    AccessAttempt.objects.update(attempt_time=datetime.datetime.now(datetime.UTC) - cool_off)
    assert logged_in(log_in(client, PASSWORD))


def test_a_lock_is_for_that_username_from_that_address(operator):
    User.objects.create_user("clerk", password=PASSWORD, is_staff=True)
    lock_out(Client())

    assert logged_in(log_in(Client(), PASSWORD, address="203.0.113.9")), "the operator elsewhere"
    assert logged_in(log_in(Client(), PASSWORD, username="clerk")), "another user from that address"
    assert_refused_as_locked(log_in(Client(), PASSWORD))


def test_a_successful_login_forgets_earlier_failures(operator):
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        log_in(Client(), "wrong-password")
    assert logged_in(log_in(Client(), PASSWORD))
    for _ in range(limit - 1):
        log_in(Client(), "wrong-password")
    assert logged_in(log_in(Client(), PASSWORD)), "the count started again after the success"


def test_limit_and_cool_off_come_from_the_environment():
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SECRET_KEY": "x",
        "AXES_FAILURE_LIMIT": "3",
        "AXES_COOLOFF_MINUTES": "2",
    }
    code = "import django; django.setup(); from django.conf import settings as s; print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME)"  # noqa: E501
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["3", "0:02:00"], result.stdout + result.stderr


def test_client_login_needs_the_request_axes_tracks_attempts_by(operator):
    from axes.exceptions import AxesBackendRequestParameterRequired
    from django.http import HttpRequest

    with pytest.raises(AxesBackendRequestParameterRequired):
        Client().login(username="operator", password=PASSWORD)
    assert Client().login(request=HttpRequest(), username="operator", password=PASSWORD)
