"""What the image installs and what the suite installs are apart, and every pin comes
from a declared range (docs/dependencies.md). Pure reads of files: no service."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

# Packages of tests, lint, benchmarks and development processes: never in the image.
DEVELOPMENT_ONLY = {
    "pytest", "pytest-django", "pytest-timeout", "pypdf", "selenium", "ruff", "matplotlib", "numpy",
    "opentelemetry-test-utils", "aiosmtpd", "honcho", "pip-tools", "build",
}  # fmt: skip

pytestmark = pytest.mark.unit


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            found[canonicalize_name(name)] = version
    return found


def declared(path: Path) -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def test_the_image_installs_the_runtime_pins_only_and_they_hold_no_development_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert installs == ["pip install --no-cache-dir -r requirements.txt"], installs
    runtime = pins(ROOT / "requirements.txt")
    assert not DEVELOPMENT_ONLY & set(runtime), sorted(DEVELOPMENT_ONLY & set(runtime))
    assert {"django", "celery", "kombu", "psycopg2-binary", "gunicorn", "weasyprint"} <= set(runtime)


def test_development_pins_agree_with_the_runtime_pins_and_hold_the_suite():
    runtime, development = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    assert {"pytest", "pytest-django", "ruff", "selenium", "matplotlib"} <= set(development)
    disagree = {name: (runtime[name], development[name]) for name in set(runtime) & set(development)
                if runtime[name] != development[name]}  # fmt: skip
    assert not disagree, disagree


def test_every_pin_is_within_its_declared_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        ranges += [Requirement(r) for r in extra]
    ranges += declared(ROOT / "requirements.in")
    runtime = pins(ROOT / "requirements.txt")
    for requirement in ranges:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in runtime, f"{requirement} is declared but requirements.txt pins no {name}: run bin/lock"
        assert requirement.specifier.contains(runtime[name], prereleases=True), (
            f"requirements.txt pins {name}=={runtime[name]}, outside {requirement}: run bin/lock"
        )
    development = pins(ROOT / "requirements-dev.txt")
    for requirement in declared(ROOT / "requirements-dev.in"):
        name = canonicalize_name(requirement.name)
        assert requirement.specifier.contains(development[name], prereleases=True), (
            f"requirements-dev.txt pins {name}=={development[name]}, outside {requirement}: run bin/lock"
        )


def test_the_django_6_lane_pins_django_6_and_every_declared_runtime_package():
    lane = pins(ROOT / "requirements-django6.txt")
    assert lane["django"].startswith("6.0."), lane["django"]
    assert "django-tasks" not in lane  # Django 6's own django.tasks, not the backport
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in [Requirement(r) for r in project["dependencies"]] + declared(ROOT / "requirements.in"):
        name = canonicalize_name(requirement.name)
        assert name in lane and requirement.specifier.contains(lane[name], prereleases=True), (
            f"requirements-django6.txt: {name} {lane.get(name)} is not within {requirement}: run bin/django6 --lock"
        )
