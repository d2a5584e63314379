"""Flower only runs behind basic auth, and its /metrics is behind it too.

bin/flower is the one way the project starts Flower (bin/dev through the Procfile,
docker-compose.yml): it refuses to start without a user and password in
FLOWER_BASIC_AUTH, and makes Flower's Prometheus endpoint ask for them, which
Flower 2.2 itself does not.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from django.conf import settings

from jobs.testing import free_port, wait_for
from jobs.testing.processes import background

ROOT = Path(settings.BASE_DIR)
FLOWER = ROOT / "bin" / "flower"


def run_flower_script(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FLOWER), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("basic_auth", [None, "", "   ", "ops", "ops:", ":secret", "ops:secret,viewer:"])
def test_bin_flower_refuses_to_start_without_a_user_and_password(basic_auth, worker_env):
    env = {k: v for k, v in worker_env.items() if k != "FLOWER_BASIC_AUTH"}
    if basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    result = run_flower_script(env, f"--port={free_port()}")
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr and "user:password" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--basic-auth=ops:secret", "--basic_auth=ops:secret"])
def test_bin_flower_refuses_credentials_on_its_command_line(option, worker_env):
    result = run_flower_script({**worker_env, "FLOWER_BASIC_AUTH": "ops:secret"}, option)
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr, result.stderr


def test_bin_flower_checks_the_options_flower_ends_up_with(worker_env, tmp_path):
    config = tmp_path / "flowerconfig.py"
    config.write_text("basic_auth = []\n")
    result = run_flower_script(
        {**worker_env, "FLOWER_BASIC_AUTH": "ops:secret"}, f"--conf={config}", f"--port={free_port()}"
    )
    assert result.returncode != 0
    assert "basic_auth" in result.stderr and "user:password" in result.stderr, result.stderr


def test_every_entry_point_starts_flower_through_bin_flower():
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    )
    assert procfile["flower"].split()[:2] == ["python", "bin/flower"]
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]["command"]
    assert command[:2] == ["python", "bin/flower"]
    for path in ["Procfile", "docker-compose.yml", "bin/dev", "Dockerfile", "Makefile"]:
        text = (ROOT / path).read_text()
        assert not re.search(r"celery\b[^\n]*\bflower\b", text), f"{path} starts Flower without bin/flower"


@pytest.fixture
def flower(worker_env, tmp_path):
    """Flower as bin/flower starts it, against this run's broker; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**worker_env, "FLOWER_BASIC_AUTH": "ops:flower-metrics-pass"}

    def up() -> bool:
        try:
            return requests.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    args = [sys.executable, str(FLOWER), "--address=127.0.0.1", f"--port={port}"]
    with background(args, env, tmp_path / "flower.log") as process:
        wait_for(lambda: up() or process.poll() is not None, timeout=30, interval=0.2, message="Flower")
        assert process.poll() is None, (tmp_path / "flower.log").read_text()
        yield base


def test_flower_metrics_and_pages_need_basic_auth(flower):
    auth = ("ops", "flower-metrics-pass")
    for path in ["/metrics", "/", "/api/workers", "/tasks"]:
        assert requests.get(f"{flower}{path}", timeout=5).status_code == 401, path
        assert requests.get(f"{flower}{path}", auth=("ops", "wrong"), timeout=5).status_code == 401, path
    metrics = requests.get(f"{flower}/metrics", auth=auth, timeout=5)
    assert metrics.status_code == 200
    assert "flower_" in metrics.text, "Flower's own Prometheus metrics"
    assert requests.get(f"{flower}/", auth=auth, timeout=5).status_code == 200
