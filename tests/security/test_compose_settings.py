"""docker-compose.yml requires its secrets from .env and defaults to secure settings.

Read with PyYAML and interpolated as Compose does (no Docker engine here): a secret
has no default (`${VAR:?message}`), and the environment compose gives the web
process passes `manage.py check --deploy` without a warning.
"""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
SECRETS = ["DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "FLOWER_BASIC_AUTH"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH")
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: str, dotenv: dict[str, str]) -> str:
    """`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, as Compose reads them."""

    def one(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in dotenv
        empty = not dotenv.get(name)
        if op in (":-", "-"):
            return arg if (empty if op == ":-" else not present) else dotenv[name]
        if op in (":?", "?"):
            if empty if op == ":?" else not present:
                raise MissingVariable(f"{name}: {arg}")
        return dotenv.get(name, "")

    return VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def environment(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    env = compose()["services"][service].get("environment") or {}
    return {name: interpolate(str(value), dotenv) for name, value in env.items()}


def references() -> list[tuple[str, str, str]]:
    """(service, variable, compose's text for it) for every ${...} of every service's environment."""
    found = []
    for service, spec in compose()["services"].items():
        for name, value in (spec.get("environment") or {}).items():
            found += [(service, name, match.group(0)) for match in VARIABLE.finditer(str(value))]
    return found


def secrets_env() -> dict[str, str]:
    return {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "RABBITMQ_PASSWORD": secrets.token_urlsafe(16),
        "FLOWER_BASIC_AUTH": f"ops:{secrets.token_urlsafe(16)}",
    }


def test_every_secret_of_compose_is_required_from_env_and_has_no_default():
    used = {match.group("name") for _, _, text in references() for match in VARIABLE.finditer(text)}
    assert set(SECRETS) <= used
    for service, name, text in references():
        match = VARIABLE.fullmatch(text)
        if SECRET_NAME.search(match["name"]):
            assert match["op"] == ":?", f"{service}.{name} takes {text}: a secret must be required"
    for secret in SECRETS:
        missing = {k: v for k, v in secrets_env().items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            for service in compose()["services"]:
                environment(service, missing)


def test_compose_defaults_to_production_settings():
    env = environment("web", secrets_env())
    assert env["DJANGO_DEBUG"] == "0"
    assert env["DJANGO_SECURE_SSL_REDIRECT"] == "1"
    assert env["DJANGO_SECURE_COOKIES"] == "1"
    dotenv = secrets_env()
    assert environment("postgres", dotenv)["POSTGRES_PASSWORD"] == dotenv["POSTGRES_PASSWORD"]
    assert f":{dotenv['POSTGRES_PASSWORD']}@" in environment("web", dotenv)["DATABASE_URL"]


def test_check_deploy_is_clean_with_the_environment_compose_gives():
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "project.settings",
           **environment("web", secrets_env())}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    for warning in ("W008", "W012", "W016"):
        assert f"security.{warning}" not in output, output
    assert result.returncode == 0, output
    assert "System check identified no issues" in result.stdout
