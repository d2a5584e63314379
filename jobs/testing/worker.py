"""A real Celery worker process for tests, started and stopped on demand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings


class WorkerProcess:
    def __init__(self, env: dict, log_dir: Path, name: str, concurrency: int = 2, queues=None, extra=()):
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.name = name
        self.concurrency = concurrency
        self.queues = queues
        self.extra = list(extra)
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60) -> WorkerProcess:
        if self.running:
            return self
        cmd = [
            sys.executable, "-m", "celery", "-A", "project", "worker",
            "-n", f"{self.name}@%h", "-c", str(self.concurrency), "-P", "prefork",
            "-l", "INFO", "--without-gossip", "--without-mingle",
            "-I", "jobs.tests.tasks", *self.extra,
        ]  # fmt: skip
        if self.queues:
            cmd += ["-Q", ",".join(self.queues)]
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            cmd,
            cwd=settings.BASE_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker {self.name} did not start; its log:\n{self.log()[-4000:]}")

    def log(self) -> str:
        """What this worker printed since its latest start."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(getattr(self, "_offset", 0))
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def pool_pids(self) -> list[int]:
        if not self.running:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the whole process group if it lingers."""
        if not self.running:
            self.process = None
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.process = None

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
