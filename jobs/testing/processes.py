"""The platform's other processes (relay, keeper, Flower), run in the background by tests."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import requests
from django.conf import settings

from jobs.testing import free_port, wait_for


@contextlib.contextmanager
def background(
    args: list[str], env: dict, log_path: Path, graceful: bool = False
) -> Iterator[subprocess.Popen]:
    """Runs `args` from the project's folder, its output in `log_path`; stops it on exit.

    `graceful` sends SIGTERM first (and SIGKILL only if it lingers), as a deploy would.
    """
    log = open(log_path, "wb")
    process = subprocess.Popen(args, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if graceful:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        else:
            process.kill()
        process.wait(10)
        log.close()


def manage_py(*args: str) -> list[str]:
    return [sys.executable, "manage.py", *args]


@contextlib.contextmanager
def flower(env: dict, log_path: Path, basic_auth: str) -> Iterator[str]:
    """Flower behind `basic_auth` ("user:password"), listening; yields its base URL."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "project",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
    ]
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    with background(args, {**env, "FLOWER_BASIC_AUTH": basic_auth}, log_path):
        wait_for(up, timeout=30, interval=0.2, message="Flower to listen")
        yield base


class RelayProcess:
    """`manage.py relay`, started and stopped on demand: what publishes due retries and
    deferred jobs (jobs.relay), as a deployment runs it."""

    def __init__(self, env: dict, log_path: Path):
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RelayProcess:
        if not self.running:
            log = open(self.log_path, "ab")
            self.process = subprocess.Popen(
                manage_py("relay"), cwd=settings.BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
